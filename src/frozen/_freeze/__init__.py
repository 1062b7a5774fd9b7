"""Freezing in place: freeze, thaw, the freezing() context, saved freeze state, queries (docs/freeze.md).

This face is the package's contract: siblings import these names from here, never a module inside.
"""

from .cut import freeze_to as freeze_to
from .freeze import freeze as freeze
from .freezing import freezing as freezing
from .grad import grad as grad
from .query import is_frozen as is_frozen
from .query import named_trainable as named_trainable
from .query import trainable as trainable
from .state import load_state as load_state
from .state import state as state
from .thaw import thaw as thaw
from .trainable_state import trainable_state_dict as trainable_state_dict

__all__ = [
    "freeze",
    "freeze_to",
    "freezing",
    "grad",
    "is_frozen",
    "load_state",
    "named_trainable",
    "state",
    "thaw",
    "trainable",
    "trainable_state_dict",
]
