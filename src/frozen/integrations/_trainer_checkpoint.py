"""Hugging Face ``Trainer`` checkpoints that a fresh ``Trainer`` can load after thaws.

On ``resume_from_checkpoint`` the ``Trainer`` builds a fresh optimizer (its two
decay / no-decay groups over what is trainable after ``on_init_end``) and loads
``optimizer.pt`` into it *before* any callback event, so a checkpoint taken after a
thaw — more groups, more parameters — cannot load (``ValueError: loaded state dict
has a different number of parameter groups``). So the callback saves the optimizer in
two layers: what torch sees is the *initial* layout (same groups, same counts as the
fresh optimizer, which therefore loads it); the real layout, keyed by parameter path
(as :func:`frozen.optim.state_dict`), and the plan's progress travel inside it —
layout and progress as an option of the first group, state tensors under keys no
parameter uses (torch keeps both as they are). At ``on_train_begin`` the callback
takes them out, re-thaws the stages already applied and loads the real state with
:func:`frozen.optim.load_state_dict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..optim import PATHS_KEY, STASH, paths_by_id
from ..optim import STASH_PREFIX as _PREFIX

__all__ = ["install", "take"]


def install(optimizer: torch.optim.Optimizer, model: nn.Module, counts: list[int], progress: Any) -> None:
    """Make ``optimizer.state_dict()`` loadable by an optimizer with ``counts`` parameters per group.

    ``progress()`` returns the plan's ``state_dict`` at save time. Installed once per
    optimizer (a second call is a no-op).
    """
    if getattr(optimizer, "_frozen_resume_hook", False):
        return

    def hook(opt: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
        path_of = paths_by_id(opt, model, "FreezeCallback (saving a checkpoint)")
        real = {
            "param_groups": saved["param_groups"],
            PATHS_KEY: [[path_of[id(p)] for p in group["params"]] for group in opt.param_groups],
            "progress": progress(),
        }
        groups, start = [], 0
        for index, count in enumerate(counts):
            options = {k: v for k, v in saved["param_groups"][index].items() if k != "params"}
            groups.append({**options, "params": list(range(start, start + count))})
            start += count
        groups[0] = {**groups[0], STASH: real}
        return {"state": {f"{_PREFIX}{k}": v for k, v in saved["state"].items()}, "param_groups": groups}

    optimizer.register_state_dict_post_hook(hook)
    optimizer._frozen_resume_hook = True  # type: ignore[attr-defined]


def take(optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Remove a stash loaded into ``optimizer``; return ``{"saved": ..., "progress": ...}`` or None.

    ``saved`` is in :func:`frozen.optim.state_dict`'s format.
    """
    real = optimizer.param_groups[0].pop(STASH, None) if optimizer.param_groups else None
    stray = {k: v for k, v in optimizer.state.items() if isinstance(k, str) and k.startswith(_PREFIX)}
    for key in stray:
        del optimizer.state[key]
    if real is None:
        return None
    state = {int(k[len(_PREFIX) :]): v for k, v in stray.items()}
    saved = {"state": state, "param_groups": real["param_groups"], PATHS_KEY: real[PATHS_KEY]}
    return {"saved": saved, "progress": real["progress"]}
