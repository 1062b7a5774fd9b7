"""Hugging Face ``accelerate``: ``save_state`` / ``load_state`` that resume exactly after freeze/thaw.

``accelerator.save_state`` writes the optimizer with ``optimizer.state_dict()``: positions in
groups, no parameter names. After a thaw mid-run (``frozen.thaw`` + ``frozen.optim.sync``)
the optimizer holds more parameters, or more groups, than the fresh one a resumed run
builds, so ``accelerator.load_state`` fails inside torch ("loaded state dict has a
different number of parameter groups"), or — when the counts happen to agree — pairs
state with the wrong parameters. :func:`register` adds what is missing, with accelerate's
own hooks:

* before ``save_state`` writes anything, the model's freeze state (:func:`frozen.state`)
  and each optimizer's layout by parameter path go to ``frozen_state.pt`` in the same folder;
* before ``load_state`` reads anything, the freeze state is restored
  (:func:`frozen.load_state`) and each optimizer's groups are rearranged to the saved
  layout (same groups, same parameters in the same order, options as saved), so
  accelerate's own load puts every moment back on its parameter.

Call it in every run, before ``load_state``; a checkpoint without ``frozen_state.pt`` loads
as before. Every optimizer ``frozen.optim.sync`` reshaped (and those prepared when this is
called) refuses a plain load of a checkpoint with other groups with a ``FrozenError`` naming
this helper, instead of torch's group-count error. Importing this module imports
``accelerate``; ``import frozen`` does not.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from .. import load_state, state
from .._core import guard_loads
from ..optim import PATHS_KEY, load_state_dict, paths_by_id
from ._common import unwrap_model, unwrap_optimizer

__all__ = ["register", "FILE"]

FILE = "frozen_state.pt"


def register(accelerator: Any, model: nn.Module) -> tuple[Any, Any]:
    """Make ``accelerator.save_state`` / ``load_state`` keep ``model``'s freeze state and optimizer layout.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        model: the model (prepared or not: DDP and compile wrappers are looked through).

    Returns:
        The two hook handles (save, load); ``.remove()`` undoes each.

    Example:
        >>> import torch, frozen
        >>> from accelerate import Accelerator
        >>> from frozen.integrations.accelerate import register
        >>> accelerator = Accelerator(cpu=True)
        >>> model = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)), "0")
        >>> save, load = register(accelerator, model)
    """

    def save(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if not accelerator.is_main_process:
            return
        inner = unwrap_model(model)
        layouts = []
        for optimizer in accelerator._optimizers:
            raw = unwrap_optimizer(optimizer)
            path_of = paths_by_id(raw, inner, "frozen.integrations.accelerate (save_state)")
            options = [{k: v for k, v in group.items() if k != "params"} for group in raw.param_groups]
            layouts.append(
                {"paths": [[path_of[id(p)] for p in g["params"]] for g in raw.param_groups], "options": options}
            )
        torch.save({"freeze": state(inner), "optimizers": layouts}, os.path.join(output_dir, FILE))

    def load(models: list[Any], input_dir: str) -> None:
        path = os.path.join(input_dir, FILE)
        if not os.path.exists(path):
            return
        saved = torch.load(path, weights_only=False)  # written by save() above: the freeze state holds selectors
        inner = unwrap_model(model)
        load_state(inner, saved["freeze"])
        for optimizer, layout in zip(accelerator._optimizers, saved["optimizers"]):
            groups, start = [], 0
            for options, paths in zip(layout["options"], layout["paths"]):
                groups.append({**options, "params": list(range(start, start + len(paths)))})
                start += len(paths)
            saved_layout = {"state": {}, "param_groups": groups, PATHS_KEY: layout["paths"]}
            load_state_dict(unwrap_optimizer(optimizer), inner, saved_layout)

    guard_loads()  # a plain load of another layout fails clearly, naming this helper
    return accelerator.register_save_state_pre_hook(save), accelerator.register_load_state_pre_hook(load)
