"""frozen: freeze parts of PyTorch models with exact, white-box semantics.

A frozen part is differentiable with respect to its inputs and constant with
respect to its own parameters. See the README for a quickstart and ``docs/`` for
concepts and recipes.
"""

from ._errors import FrozenError as FrozenError
from ._errors import InvalidModeError as InvalidModeError
from ._errors import NonScalarLossError as NonScalarLossError
from ._errors import UnknownPathError as UnknownPathError
from ._grad import grad as grad
from ._query import is_frozen as is_frozen
from ._query import named_trainable as named_trainable
from ._query import trainable as trainable
from ._report import Report as Report
from ._report import report as report
from ._settle import settle as settle
from ._wrapper import Frozen as Frozen

__version__ = "0.1.0"

__all__ = [
    "Frozen",
    "FrozenError",
    "InvalidModeError",
    "NonScalarLossError",
    "Report",
    "UnknownPathError",
    "grad",
    "is_frozen",
    "named_trainable",
    "report",
    "settle",
    "trainable",
]
