"""frozen: freeze parts of PyTorch models with exact, white-box semantics.

A frozen part is differentiable with respect to its inputs and constant with
respect to its own parameters. See the README for a quickstart and ``docs/`` for
concepts and recipes.

``import frozen`` loads each public name on first use (PEP 562), so ``import frozen.jax``
never imports torch and ``import frozen`` alone costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the names are, for type checkers and readers; loaded on first use below
    from . import distributed as distributed
    from . import optim as optim
    from . import schedule as schedule
    from ._cache import CacheError as CacheError
    from ._cache import CacheHandle as CacheHandle
    from ._cache import cache as cache
    from ._cache import cache_stats as cache_stats
    from ._cache import features as features
    from ._cache import uncache as uncache
    from ._core import Frozen as Frozen
    from ._core import RecompileWarning as RecompileWarning
    from ._core import reserve_recompiles as reserve_recompiles
    from ._core import settle as settle
    from ._errors import ForeignFlagWarning as ForeignFlagWarning
    from ._errors import FrozenError as FrozenError
    from ._errors import FrozenWarning as FrozenWarning
    from ._errors import InvalidModeError as InvalidModeError
    from ._errors import NonScalarLossError as NonScalarLossError
    from ._errors import SelectorError as SelectorError
    from ._errors import TiedParameterError as TiedParameterError
    from ._errors import TiedParameterWarning as TiedParameterWarning
    from ._errors import UnknownPathError as UnknownPathError
    from ._freeze import freeze as freeze
    from ._freeze import freeze_to as freeze_to
    from ._freeze import freezing as freezing
    from ._freeze import grad as grad
    from ._freeze import is_frozen as is_frozen
    from ._freeze import load_state as load_state
    from ._freeze import named_trainable as named_trainable
    from ._freeze import state as state
    from ._freeze import thaw as thaw
    from ._freeze import trainable as trainable
    from ._freeze import trainable_state_dict as trainable_state_dict
    from ._lean import lean as lean
    from ._lean import unlean as unlean
    from ._report import Explanation as Explanation
    from ._report import Report as Report
    from ._report import explain as explain
    from ._report import report as report
    from ._rows import Rows as Rows
    from ._select import blocks as blocks
    from ._select import head as head
    from ._select import params as params
    from ._select import select as select

# Where each public name lives: a package's face, or the subpackage itself.
_WHERE = {
    "distributed": ".distributed",
    "optim": ".optim",
    "schedule": ".schedule",
    "CacheError": "._cache",
    "CacheHandle": "._cache",
    "cache": "._cache",
    "cache_stats": "._cache",
    "features": "._cache",
    "uncache": "._cache",
    "Frozen": "._core",
    "RecompileWarning": "._core",
    "reserve_recompiles": "._core",
    "settle": "._core",
    "ForeignFlagWarning": "._errors",
    "FrozenError": "._errors",
    "FrozenWarning": "._errors",
    "InvalidModeError": "._errors",
    "NonScalarLossError": "._errors",
    "SelectorError": "._errors",
    "TiedParameterError": "._errors",
    "TiedParameterWarning": "._errors",
    "UnknownPathError": "._errors",
    "freeze": "._freeze",
    "freeze_to": "._freeze",
    "freezing": "._freeze",
    "grad": "._freeze",
    "is_frozen": "._freeze",
    "load_state": "._freeze",
    "named_trainable": "._freeze",
    "state": "._freeze",
    "thaw": "._freeze",
    "trainable": "._freeze",
    "trainable_state_dict": "._freeze",
    "lean": "._lean",
    "unlean": "._lean",
    "Explanation": "._report",
    "Report": "._report",
    "explain": "._report",
    "report": "._report",
    "Rows": "._rows",
    "blocks": "._select",
    "head": "._select",
    "params": "._select",
    "select": "._select",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None and name.startswith("_") and not name.startswith("__"):
        where = "." + name  # a private subpackage (frozen._core): loaded like any submodule
    if where is None:
        raise AttributeError(f"module 'frozen' has no attribute {name!r}")
    try:
        module = importlib.import_module(where, __name__)
    except ModuleNotFoundError as missing:
        if missing.name != f"{__name__}{where}":
            raise
        raise AttributeError(f"module 'frozen' has no attribute {name!r}") from None
    value = module if where == "." + name and module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value  # the next lookup is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "Rows",
    "CacheError",
    "CacheHandle",
    "cache",
    "cache_stats",
    "features",
    "lean",
    "uncache",
    "unlean",
    "Explanation",
    "ForeignFlagWarning",
    "Frozen",
    "FrozenError",
    "FrozenWarning",
    "InvalidModeError",
    "NonScalarLossError",
    "RecompileWarning",
    "Report",
    "SelectorError",
    "TiedParameterError",
    "TiedParameterWarning",
    "UnknownPathError",
    "blocks",
    "explain",
    "freeze",
    "freeze_to",
    "freezing",
    "grad",
    "head",
    "is_frozen",
    "load_state",
    "distributed",
    "named_trainable",
    "optim",
    "params",
    "report",
    "reserve_recompiles",
    "schedule",
    "select",
    "settle",
    "state",
    "thaw",
    "trainable",
    "trainable_state_dict",
]
