"""Optimizer checkpoints keyed by parameter path, for exact resume after freeze/thaw.

``torch.optim.Optimizer.state_dict`` identifies parameters by their position in the
groups. After freezing and thawing mid-training, the positions depend on the history
(a thawed parameter is appended to its group), so a fresh process that rebuilt its
optimizer cannot line them up. Saving each position's *path* fixes that: loading
rearranges the groups to the saved layout first, then lets torch load the state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .._checks import check_model, check_optimizer
from .._core import guard_loads, named_parameters, trainable_ids
from .._errors import FrozenError
from ._sync import paths_by_id

__all__ = ["state_dict", "load_state_dict", "PATHS_KEY", "STASH", "STASH_PREFIX"]

PATHS_KEY = "frozen_param_paths"
# A Hugging Face FreezeCallback makes optimizer.state_dict() return the Trainer's initial
# layout with the real one inside (see frozen/integrations/_trainer_checkpoint.py): the first
# group's option STASH carries layout and paths, state keys STASH_PREFIX + id the state.
STASH = "frozen_resume"
STASH_PREFIX = "frozen:"


def _refuse_stashed_state(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Refuse a step of an optimizer that loaded a FreezeCallback checkpoint without the callback.

    The stash (the real layout and state) rides in the first group and under keys no
    parameter uses, so a plain ``load_state_dict`` accepts it and every moment would
    silently restart from zero. The callback takes the stash out before the first step.
    """
    if optimizer.param_groups and STASH in optimizer.param_groups[0]:
        raise FrozenError(
            f"{type(optimizer).__name__}.step(): optimizer.param_groups[0] holds {STASH!r}: this optimizer "
            f"loaded a checkpoint written with frozen.integrations.hf.FreezeCallback, whose optimizer.pt keeps "
            f"the run's real state (groups added by thaws, moments by parameter path) inside the Trainer's "
            f"initial layout. Expected the same FreezeCallback(...) among the resuming Trainer's callbacks; "
            f"without it every optimizer moment would restart from zero, silently. Fix: pass the callback to "
            f"the Trainer that resumes (it restores the thawed stages and the optimizer state exactly), or "
            f"load the file with frozen.optim.load_state_dict(optimizer, model, torch.load(path)) after "
            f"frozen.load_state(model, ...)."
        )


# Every optimizer in a process that imported frozen: one dict lookup per step.
register_optimizer_step_pre_hook(_refuse_stashed_state)


def _unstash(saved: dict[str, Any]) -> dict[str, Any] | None:
    """The real path-keyed state dict inside a stashed one, or None if ``saved`` is not stashed."""
    groups = saved.get("param_groups") or [{}]
    real = groups[0].get(STASH)
    if real is None:
        return None
    state = {int(k[len(STASH_PREFIX) :]): v for k, v in saved["state"].items() if isinstance(k, str)}
    return {"state": state, "param_groups": real["param_groups"], PATHS_KEY: real[PATHS_KEY]}


def state_dict(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """Return ``optimizer.state_dict()`` plus the path of every parameter position.

    Save it with ``torch.save``; restore with :func:`load_state_dict`.

    Raises:
        frozen.FrozenError: the optimizer holds a parameter that is not in the model.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> frozen.optim.state_dict(opt, net)["frozen_param_paths"]
        [['weight', 'bias']]
    """
    check_optimizer(optimizer, "frozen.optim.state_dict")
    check_model(model, "frozen.optim.state_dict")
    path_of = paths_by_id(optimizer, model, "frozen.optim.state_dict")
    saved = optimizer.state_dict()
    real = _unstash(saved)
    if real is not None:
        return real
    saved[PATHS_KEY] = [[path_of[id(p)] for p in group["params"]] for group in optimizer.param_groups]
    return saved


def _check_saved_paths(layout: list[list[str]], by_path: dict[str, Any], wanted: set[int], where: str) -> None:
    """Every saved path names a parameter of the model, trainable now, once."""
    seen: set[str] = set()
    for index, paths in enumerate(layout):
        for path in paths:
            if path not in by_path or id(by_path[path]) not in wanted or path in seen:
                problem = (
                    "appears twice"
                    if path in seen
                    else "is not in the model"
                    if path not in by_path
                    else "is frozen in the model"
                )
                raise FrozenError(
                    f"{where}: saved param_groups[{index}] holds {path!r}, which {problem}. Expected every "
                    f"saved parameter to be trainable now: restore the freeze state first "
                    f"(frozen.load_state(model, saved_freeze_state)). Nothing was modified."
                )
            seen.add(path)


def load_state_dict(optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]) -> torch.optim.Optimizer:
    """Load a :func:`state_dict` into ``optimizer``, whatever its current group layout.

    Restore the model's freeze state first (``frozen.load_state(model, ...)``): every
    saved parameter must be trainable in ``model`` now. The optimizer's groups are then
    rearranged to the saved layout — same groups, same parameters in the same order,
    groups the saved run added are added — and ``optimizer.load_state_dict`` restores
    options (including ``"frozen_params"``) and state.

    Returns:
        ``optimizer``.

    Raises:
        frozen.FrozenError: ``saved`` lacks the paths (it came from
            ``optimizer.state_dict()``), names a parameter the model lacks or that is
            frozen, or the optimizer has more groups than ``saved``. Nothing is modified.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.Adam(net.parameters())
        >>> saved = frozen.optim.state_dict(opt, net)
        >>> opt = frozen.optim.load_state_dict(torch.optim.Adam(net.parameters()), net, saved)
    """
    where = "frozen.optim.load_state_dict"
    check_optimizer(optimizer, where)
    check_model(model, where)
    if not isinstance(saved, dict) or PATHS_KEY not in saved or "param_groups" not in saved:
        raise FrozenError(
            f"{where}(optimizer, model, saved): expected saved to come from frozen.optim.state_dict"
            f"(optimizer, model) (with the key {PATHS_KEY!r}), received "
            f"{'a dict with keys ' + repr(sorted(saved)) if isinstance(saved, dict) else type(saved).__name__}. "
            f"For a plain optimizer.state_dict(), use optimizer.load_state_dict. Nothing was modified."
        )
    paths_by_id(optimizer, model, where)  # validates the optimizer against the model
    by_path = dict(named_parameters(model))
    layout = saved[PATHS_KEY]
    if len(layout) != len(saved["param_groups"]) or len(optimizer.param_groups) > len(layout):
        raise FrozenError(
            f"{where}: the optimizer has {len(optimizer.param_groups)} groups and saved has "
            f"{len(saved['param_groups'])} (paths for {len(layout)}); expected at most as many groups "
            f"as saved. Build the optimizer the way the saved run did. Nothing was modified."
        )
    _check_saved_paths(layout, by_path, trainable_ids(model), where)
    for group in optimizer.param_groups:  # empty first, so add_param_group sees no duplicates
        group["params"][:] = []
    for index, paths in enumerate(layout):
        params = [by_path[path] for path in paths]
        if index < len(optimizer.param_groups):
            optimizer.param_groups[index]["params"][:] = params
        else:
            options = {k: v for k, v in saved["param_groups"][index].items() if k != "params"}
            if "param_names" in options:
                options["param_names"] = list(paths)
            optimizer.add_param_group({**options, "params": params})
        if "param_names" in optimizer.param_groups[index]:
            optimizer.param_groups[index]["param_names"][:] = list(paths)
    guard_loads()  # the layout is the saved one now: a later plain load of another one is refused clearly
    optimizer.load_state_dict({k: v for k, v in saved.items() if k != PATHS_KEY})
    return optimizer
