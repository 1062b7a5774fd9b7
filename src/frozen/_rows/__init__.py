"""Rows: freezing rows of one parameter (docs/rows.md).

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .plan import RowsChange as RowsChange
from .plan import apply_rows as apply_rows
from .plan import plan_freeze_rows as plan_freeze_rows
from .plan import plan_thaw_rows as plan_thaw_rows
from .record import FrozenRows as FrozenRows
from .record import frozen_rows_in as frozen_rows_in
from .rows import freeze_rows as freeze_rows
from .rows import frozen_rows as frozen_rows
from .rows import thaw_rows as thaw_rows
from .state import load_rows_state as load_rows_state
from .state import plan_rows_state as plan_rows_state
from .state import rows_state as rows_state
from .target import Rows as Rows
from .target import RowsTypeError as RowsTypeError
from .target import split_rows as split_rows

__all__ = [
    "FrozenRows",
    "Rows",
    "RowsChange",
    "RowsTypeError",
    "apply_rows",
    "freeze_rows",
    "frozen_rows",
    "frozen_rows_in",
    "load_rows_state",
    "plan_freeze_rows",
    "plan_rows_state",
    "plan_thaw_rows",
    "rows_state",
    "split_rows",
    "thaw_rows",
]
