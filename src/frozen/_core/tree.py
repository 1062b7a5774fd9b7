"""Walking a model the way ``frozen`` sees it.

Paths are the ones ``state_dict`` uses: a :class:`~frozen.Frozen` wrapper adds no
path segment. Every *use* of a module is visited — a module object that appears at
two paths is visited twice — because a parameter is trainable when at least one
non-frozen use reaches it (contract S4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from torch import nn

from .._errors import FrozenError
from .record import record_of

__all__ = ["ModuleUse", "ParamUse", "iter_module_uses", "iter_param_uses", "join", "named_parameters", "param_uses_of"]


class ModuleUse(NamedTuple):
    """One place where a module is used inside a model."""

    path: str  # state_dict-style path, wrapper levels skipped
    module: nn.Module  # the module used there (a wrapper's inner module, not the wrapper)
    frozen: bool  # whether this use is frozen (inside a Frozen wrapper or frozen in place)
    wrapper: nn.Module | None  # the Frozen wrapper standing at this path, if any
    mode: str | None = None  # the freezing mode in force at a frozen use ("eval"/"inherit")
    wrapped: str | None = None  # the mode of the Frozen wrappers at or above this use (None: no wrapper)


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
    """Yield every use of every module, in ``named_modules()`` (pre-)order.

    Raises:
        frozen.FrozenError: the module graph has a cycle (a module is its own descendant).
    """
    from .wrapper import Frozen

    # An explicit stack, not recursion: linear in the number of modules at any depth (nested
    # generators cost modules x depth), and no RecursionError on deep models.
    on_path: set[int] = set()  # the modules between the root and the current one
    stack: list[tuple[nn.Module, str, str | None, bool]] = [(model, "", None, False)]
    while stack:
        module, path, mode, leaving = stack.pop()
        if leaving:
            on_path.discard(id(module))
            continue
        wrapper = None
        # Nested wrappers (Frozen(Frozen(m))) collapse onto one path; the outermost mode wins.
        while isinstance(module, Frozen):
            wrapper, module, mode = module, module.module, mode or str(module.mode)
        if id(module) in on_path:
            raise FrozenError(
                f"the module at {path!r} ({type(module).__name__}) is also one of its own ancestors: the "
                f"model's module graph has a cycle, which torch's own named_modules() cannot walk either. "
                f"Expected a tree (shared modules are fine, cycles are not); remove the back-reference."
            )
        # A wrapper freezes its whole subtree; an in-place mark (frozen.freeze) only the
        # marked module itself -- freeze marks every module of a part individually, so a
        # sub-part can be thawed alone and a module added to a frozen part later trains.
        record = record_of(module)
        own = mode or (record.mode if record is not None else None)
        yield ModuleUse(path, module, own is not None, wrapper, own, mode)
        on_path.add(id(module))
        stack.append((module, path, mode, True))
        children = [(child, join(path, name)) for name, child in module._modules.items() if child is not None]
        stack.extend((child, child_path, mode, False) for child, child_path in reversed(children))


def iter_param_uses(model: nn.Module) -> Iterator[ParamUse]:
    """Yield every use of every parameter (not deduplicated), in model order."""
    return param_uses_of(iter_module_uses(model))


def param_uses_of(uses: Iterable[ModuleUse]) -> Iterator[ParamUse]:
    """Yield the parameter uses of already walked module ``uses`` (the walk is not repeated)."""
    for use in uses:
        record = record_of(use.module)
        slots = record.frozen_slots if record is not None else {}
        for name, param in use.module._parameters.items():
            if param is not None:
                # A slot frozen on its own (a selected parameter, tied="freeze") does not train here.
                frozen = use.frozen or name in slots
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
