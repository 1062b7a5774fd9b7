"""Frozen rows through a module replaced in its parent's slot: they are a statement about the path.

Hugging Face's ``resize_token_embeddings`` resizes an *untied* output layer by building a new
``nn.Linear`` and assigning it (``model.lm_head = new``), and people swap a head by hand the
same way. The new module's parameters are new objects, so the row records (kept in the old
module's record, :mod:`.record`) would be left behind with the old module and the new layer
would train whole. One global module-registration hook of torch, installed the first time rows
are frozen anywhere, sees every ``parent.<name> = module`` while the old child is still in
``parent._modules`` (``Module.__setattr__`` and ``add_module`` run the hooks before they store
the new child): rows frozen on ``<old child>.<path>`` carry over to ``<new child>.<path>``,
fitted to its row count by the rule of a resize in place (:meth:`FrozenRows.fitted`).

It costs one dict lookup per module assignment (construction assigns into empty slots and
returns at once) and writes nothing unless the replaced module holds frozen rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook
from torch.utils.hooks import RemovableHandle

from .._core import LOCK, rows_of
from .._errors import FrozenError
from .step import indexed_rows

__all__ = ["Writer", "watch_replacements"]

# record.py's ``write_rows``, the only writer of row records, handed in by it: importing it here
# would be an import cycle (record.py installs this hook when it first writes rows).
Writer = Callable[[nn.Parameter, str, list[tuple[nn.Module, str]], torch.Tensor], None]

_HANDLE: list[RemovableHandle] = []


def watch_replacements(write: Writer) -> None:
    """Install the module-replacement hook, once per process (rows were just frozen somewhere)."""
    if not _HANDLE:

        def hook(parent: nn.Module, name: str, new: nn.Module | None) -> None:
            old = parent._modules.get(name)  # torch checked that parent is initialised before the hooks run
            if old is not None and isinstance(new, nn.Module) and old is not new:
                carry_rows(old, new, write, f"{type(parent).__name__}.{name} = {type(new).__name__}(...)")

        _HANDLE.append(register_module_module_registration_hook(hook))


def _frozen_rows(old: nn.Module) -> list[tuple[str, Any, torch.Tensor]]:
    """``(path under old, row record, the parameter in that slot)`` for every row-frozen slot of ``old``."""
    found = []
    for prefix, module in old.named_modules(remove_duplicate=False):
        for name, rows in rows_of(module).items():
            param = module._parameters.get(name)
            if param is not None:
                found.append((f"{prefix}.{name}" if prefix else name, rows, param))
    return found


def carry_rows(old: nn.Module, new: nn.Module, write: Writer, where: str) -> None:
    """Give ``new``'s parameters the rows frozen on ``old``'s parameters at the same paths.

    A parameter at the same path with rows of the same shape takes them: the frozen rows that
    still exist stay frozen, rows past the old count train. A row count that cuts frozen rows
    is carried as it was, so the next forward, optimizer step or ``frozen`` call refuses it,
    as it refuses the same cut made by a resize in place. A path ``new`` lacks has nothing left
    to train; a parameter that already has frozen rows of its own keeps them.

    Raises:
        frozen.FrozenError: a parameter at the same path cannot take rows (a scalar, or rows of
            another shape); nothing changes, and the assignment does not happen.
    """
    found = _frozen_rows(old)
    if not found:
        return
    held: dict[str, nn.Parameter] = dict(new.named_parameters(remove_duplicate=False))
    plan: dict[int, tuple[nn.Parameter, Any]] = {}  # one write per parameter (tied in ``new``)
    for path, rows, before in found:
        param = held.get(path)
        if param is None or param is before or id(param) in plan:
            continue  # gone, or the same parameter (its record and slots are its own)
        current = indexed_rows(param)
        if current is not None and current.param is param:
            continue
        if param.dim() == 0 or param.shape[1:] != before.shape[1:]:
            raise FrozenError(
                f"{where}: the module replaced there ({type(old).__name__}) has frozen rows of {rows.path!r}, "
                f"rows of shape {tuple(before.shape[1:])}; the new module's {path!r} has shape "
                f"{tuple(param.shape)}, which cannot take them. Expected a parameter with rows of the same "
                f"shape. Thaw the rows first (frozen.thaw(model, {rows.path!r})), then replace the module and "
                f"freeze rows of the new layer with frozen.freeze(model, frozen.Rows({rows.path!r}, ...)). "
                f"Nothing was changed."
            )
        plan[id(param)] = (param, rows)
    with LOCK:
        for param, rows in plan.values():
            n = param.shape[0]
            cut = n < len(rows.mask) and bool(rows.mask[n:].any())
            mask = rows.mask.clone() if cut else rows.fitted(n, where)
            write(param, rows.path, _slots(new, param), mask)


def _slots(module: nn.Module, param: nn.Parameter) -> list[tuple[nn.Module, str]]:
    """Every slot of ``module``'s tree holding ``param``."""
    return [
        (owner, name)
        for _, owner in module.named_modules(remove_duplicate=False)
        for name, p in owner._parameters.items()
        if p is param
    ]
