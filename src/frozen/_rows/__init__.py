"""Rows: freezing rows of one parameter (docs/rows.md).

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .rows import Rows as Rows
from .rows import check_rows as check_rows
from .rows import freeze_rows as freeze_rows
from .rows import frozen_rows as frozen_rows
from .rows import restore_carried as restore_carried
from .rows import split_rows as split_rows
from .rows import thaw_rows as thaw_rows
from .state import check_rows_state as check_rows_state
from .state import load_rows_state as load_rows_state
from .state import rows_state as rows_state

__all__ = [
    "Rows",
    "check_rows",
    "check_rows_state",
    "freeze_rows",
    "frozen_rows",
    "load_rows_state",
    "restore_carried",
    "rows_state",
    "split_rows",
    "thaw_rows",
]
