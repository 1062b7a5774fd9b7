"""Row freezing that follows the model: into copies of it, and not into FSDP2 shards.

A row-frozen parameter's record is kept by parameter identity (``_rows.py``), which a
copy does not share: ``deepcopy`` and pickle build new parameter objects. A forward
pre-hook on each module holding such a parameter (:class:`RowsCarrier`) travels with the
module and freezes the same rows on the copy's parameter. FSDP2's ``fully_shard`` also
swaps in new parameters -- ``DTensor`` shards, each holding some rows of the whole, and
inside ``forward`` an unsharded parameter it refills -- which row freezing cannot narrow
(the optimizer steps the shards); those are refused with the fix (:func:`refuse_sharded`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .._core import iter_module_uses, iter_param_uses
from .._errors import FrozenError
from ..distributed import manages_parameter

if TYPE_CHECKING:
    from .rows import RowsRecord

__all__ = ["RowsCarrier", "refuse_sharded", "restore_carried", "sync_carriers"]


def refuse_sharded(param: torch.Tensor, path: str, function: str, *, managed: bool = False) -> None:
    """Refuse a DTensor (an FSDP2 shard holds other rows than the whole) or a parameter FSDP2 ``managed``.

    Row freezing narrows the whole tensor at each optimizer step; FSDP2's optimizer holds shards.
    """
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    if managed or isinstance(param, DTensor):
        raise FrozenError(
            f"{function}: the parameter at {path!r} is managed by FSDP2's fully_shard (sharded); row freezing "
            f"needs the whole tensor on every rank. Expected a plain parameter: freeze the whole parameter under "
            f"FSDP2, or train with DDP (frozen.distributed.wrap), where row freezing works. Nothing was changed."
        )


class RowsCarrier:
    """A forward pre-hook on each module holding a row-frozen parameter: carries the rows into copies.

    ``deepcopy`` and pickle rebuild parameters as new objects, without the identity record
    and the gradient hook, so a copy would silently train every row. Module hooks travel
    with the module: on a copy's first eager forward, or its first ``frozen.trainable`` /
    :func:`frozen_rows` query, the carrier finds its slot's parameter unrecorded and
    freezes the same rows on it. On the original it finds its own record and does nothing.
    Under ``torch.compile`` the hook is a no-op (traced away, no graph break): a compiled
    copy gets its rows when its optimizer is built from ``frozen.trainable``.
    """

    def __init__(self, name: str, path: str, mask: torch.Tensor) -> None:
        self.name, self.path, self.mask = name, path, mask

    def __call__(self, module: nn.Module, _args: object) -> None:
        if torch.compiler.is_compiling():  # traced: no side effects, no graph break (frozen.trainable restores)
            return
        param = module._parameters.get(self.name)
        if not isinstance(param, nn.Parameter):  # absent, or a tensor torch.func's functional_call put there
            return
        from .rows import _RECORDS, apply_mask

        record = _RECORDS.get(param)
        if record is not None and record.mask is self.mask:
            return
        if param.dim() == 0 or param.shape[0] != len(self.mask):
            raise FrozenError(
                f"frozen rows of {self.path!r}: the parameter there now has shape {tuple(param.shape)}, but "
                f"{len(self.mask)} rows were frozen; expected the same number of rows. Freeze its rows again "
                f"(frozen.freeze(model, frozen.Rows({self.path!r}, ...))) or thaw them: frozen.thaw(model, {self.path!r})."
            )
        # fully_shard after the freeze swapped in a shard, or (inside forward) FSDP2's unsharded parameter
        refuse_sharded(param, self.path, "frozen rows", managed=manages_parameter(module, self.name))
        apply_mask(param, self.path, self.mask)


def sync_carriers(model: nn.Module, param: nn.Parameter, record: RowsRecord | None) -> None:
    """Put one :class:`RowsCarrier` (or none, if no row is frozen) on every module that holds ``param``."""
    for use in iter_param_uses(model):
        if use.param is not param:
            continue
        hooks = use.owner._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(h, RowsCarrier) and h.name == use.name]:
            del hooks[key]
        if record is not None:
            use.owner.register_forward_pre_hook(RowsCarrier(use.name, record.path, record.mask))


def restore_carried(model: nn.Module) -> None:
    """Freeze the rows that carriers hold on a copied model's parameters (see :class:`RowsCarrier`)."""
    for use in iter_module_uses(model):
        for hook in list(use.module._forward_pre_hooks.values()):
            if isinstance(hook, RowsCarrier):
                hook(use.module, ())
