"""frozen.jax: freeze parts of Equinox models with white-box semantics; optax state for what trains.

A frozen part is differentiable with respect to its inputs and constant with respect to
its own arrays. See ``docs/jax.md``. This package imports ``jax``, ``equinox`` and
``optax``, never ``torch``.
"""

from . import optim as optim
from ._errors import FrozenError as FrozenError
from ._errors import SelectorError as SelectorError
from ._freeze import freeze as freeze
from ._freeze import thaw as thaw
from ._grad import grad as grad
from ._grad import value_and_grad as value_and_grad
from ._query import is_frozen as is_frozen
from ._query import trainable as trainable
from ._report import Report as Report
from ._report import report as report
from ._select import select as select
from ._wrapper import Frozen as Frozen

__all__ = [
    "Frozen",
    "FrozenError",
    "Report",
    "SelectorError",
    "freeze",
    "grad",
    "is_frozen",
    "optim",
    "report",
    "select",
    "thaw",
    "trainable",
    "value_and_grad",
]
