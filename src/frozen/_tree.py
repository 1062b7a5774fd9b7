"""Walking a model the way ``frozen`` sees it.

Paths are the ones ``state_dict`` uses: a :class:`~frozen.Frozen` wrapper adds no
path segment. Every *use* of a module is visited — a module object that appears at
two paths is visited twice — because a parameter is trainable when at least one
non-frozen use reaches it (contract S4).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from torch import nn

from ._state import frozen_slot_names, is_marked_frozen

__all__ = ["ModuleUse", "ParamUse", "iter_module_uses", "iter_param_uses", "named_parameters", "join"]


class ModuleUse(NamedTuple):
    """One place where a module is used inside a model."""

    path: str  # state_dict-style path, wrapper levels skipped
    module: nn.Module  # the module used there (a wrapper's inner module, not the wrapper)
    frozen: bool  # whether this use is frozen (inside a Frozen wrapper or frozen in place)
    wrapper: nn.Module | None  # the Frozen wrapper standing at this path, if any


class ParamUse(NamedTuple):
    """One place where a parameter is reached inside a model."""

    path: str
    owner: nn.Module  # the module whose ``_parameters`` holds it
    name: str  # its key in ``owner._parameters``
    param: nn.Parameter
    frozen: bool


def join(prefix: str, name: str) -> str:
    """Join two path pieces with a dot, treating the empty string as the root."""
    return f"{prefix}.{name}" if prefix else name


def iter_module_uses(model: nn.Module) -> Iterator[ModuleUse]:
    """Yield every use of every module, in ``named_modules()`` (pre-)order."""
    from ._wrapper import Frozen  # the wrapper imports this module

    def visit(module: nn.Module, path: str, frozen: bool) -> Iterator[ModuleUse]:
        wrapper = None
        # Nested wrappers (Frozen(Frozen(m))) collapse onto one path.
        while isinstance(module, Frozen):
            wrapper, module, frozen = module, module.module, True
        # A wrapper freezes its whole subtree; an in-place mark (frozen.freeze) only the
        # marked module itself -- freeze marks every module of a part individually, so a
        # sub-part can be thawed alone and a module added to a frozen part later trains.
        yield ModuleUse(path, module, frozen or is_marked_frozen(module), wrapper)
        for name, child in module._modules.items():
            if child is not None:
                yield from visit(child, join(path, name), frozen)

    yield from visit(model, "", False)


def iter_param_uses(model: nn.Module) -> Iterator[ParamUse]:
    """Yield every use of every parameter (not deduplicated), in model order."""
    for use in iter_module_uses(model):
        for name, param in use.module._parameters.items():
            if param is not None:
                # A slot frozen on its own (tied="freeze") does not train through this use.
                frozen = use.frozen or name in frozen_slot_names(use.module)
                yield ParamUse(join(use.path, name), use.module, name, param, frozen)


def named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``model.named_parameters()`` with ``state_dict`` paths (deduplicated, same order)."""
    seen: set[int] = set()
    named = []
    for use in iter_param_uses(model):
        if id(use.param) not in seen:
            seen.add(id(use.param))
            named.append((use.path, use.param))
    return named
