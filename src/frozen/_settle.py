"""``settle``: make every ``requires_grad`` flag agree with the contract (S8)."""

from __future__ import annotations

from torch import nn

from ._checks import check_model
from ._query import trainable_ids
from ._state import INPLACE_MARK, set_switched_off, switched_off_names
from ._tree import iter_module_uses, iter_param_uses
from ._use import live_plan
from ._wrapper import Frozen

__all__ = ["settle"]


def settle(model: nn.Module) -> nn.Module:
    """Set every parameter's ``requires_grad`` to "is trainable in ``model``"; return ``model``.

    After ``settle``, tools that read ``requires_grad`` — DistributedDataParallel
    (no ``find_unused_parameters`` needed), FSDP, ``torch.compile``, Hugging Face's
    Trainer — see exactly the trainable set, and a ``Frozen`` wrapper's call does no
    per-parameter work: it detaches only parameters that are also trained through
    another use (tied weights), and none otherwise.

    Rules:
        * a parameter reached only through frozen uses gets ``requires_grad=False``;
        * a parameter the library switched off earlier and that is trainable again
          (after ``thaw``, or a new plain use) gets ``requires_grad=True`` back;
        * a parameter the *user* set to ``requires_grad=False`` is never turned on;
        * a ``Frozen`` part in ``mode="eval"`` whose module is used only frozen is put
          in eval mode once, so its calls need no per-call mode switching.

    Settle again after changing flags or structure by hand. :func:`frozen.freeze` and
    :func:`frozen.thaw` settle the model themselves. The flags live on the parameters,
    so if the same modules are also used plainly in *another* model, settle that
    combined model instead, or the other model's uses will stop receiving gradients.

    Example:
        >>> import torch, frozen
        >>> net = frozen.settle(torch.nn.Sequential(frozen.Frozen(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 1)))
        >>> [p.requires_grad for p in net.parameters()]
        [False, False, True, True]
    """
    check_model(model, "frozen.settle")
    wanted = trainable_ids(model)
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    params: dict[int, nn.Parameter] = {}
    for use in iter_param_uses(model):
        owners.setdefault(id(use.param), []).append((use.owner, use.name))
        params[id(use.param)] = use.param
    for key, param in params.items():
        slots = owners[key]
        if key not in wanted and param.requires_grad:
            param.requires_grad = False  # not requires_grad_(): lazy (uninitialised) parameters refuse methods
            for owner, name in slots:
                set_switched_off(owner, name, True)
        elif key in wanted:
            if not param.requires_grad:
                param.requires_grad = True  # only reached when the library had switched it off
            for owner, name in slots:
                if name in switched_off_names(owner):
                    set_switched_off(owner, name, False)

    plainly_used = {id(use.module) for use in iter_module_uses(model) if not use.frozen}
    for module in model.modules():
        if isinstance(module, Frozen):
            module.set_plan(live_plan(module.module))
            inner = module.module
            if module.mode == "eval" and not any(id(m) in plainly_used for m in inner.modules()):
                inner.train(False)
    for use in iter_module_uses(model):
        record = use.module.__dict__.get(INPLACE_MARK)
        if record is not None:
            record.plan = live_plan(use.module, recurse=False)
    return model
