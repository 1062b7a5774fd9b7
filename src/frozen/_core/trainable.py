"""Which parameters train in a model: the trainable set every query and settle read."""

from __future__ import annotations

import sys

from torch import nn

from .record import switched_off
from .tree import iter_param_uses

__all__ = ["frozen_by_other_libraries", "trainable_ids"]


def trainable_ids(model: nn.Module) -> set[int]:
    """``id()`` of every parameter that is trainable in ``model``.

    A parameter is trainable when some non-frozen use reaches it and the user has not
    frozen it by hand. A flag the library itself turned off (by ``settle``/``freeze``)
    still counts as "the user wants it trained".
    """
    ids: set[int] = set()
    claimed = frozen_by_other_libraries(model)
    for use in iter_param_uses(model):
        param = use.param
        if use.frozen:
            continue
        if param.requires_grad or (switched_off(param, use.owner, use.name) and id(param) not in claimed):
            ids.add(id(param))
    return ids


def frozen_by_other_libraries(model: nn.Module) -> set[int]:
    """``id()`` of parameters another library keeps frozen on purpose, which thaw must leave off.

    The library cannot see a ``requires_grad=False`` written over its own ``False``, so it
    recognises the libraries that do so. PEFT (LoRA and the other tuners) freezes every
    parameter of the model it tunes except its adapters (named with the tuner's prefix, e.g.
    ``lora_``) and ``modules_to_save``: after ``freeze`` -> ``get_peft_model`` -> ``thaw``,
    those stay frozen. PEFT is never imported here.
    """
    peft_tuners = sys.modules.get("peft.tuners.tuners_utils")
    if peft_tuners is None:
        return set()
    claimed: set[int] = set()
    for module in model.modules():
        if isinstance(module, peft_tuners.BaseTuner):
            prefix = getattr(module, "prefix", "lora_")
            for name, param in module.named_parameters():
                if prefix not in name and "modules_to_save" not in name and not param.requires_grad:
                    claimed.add(id(param))
    return claimed
