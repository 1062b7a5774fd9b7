"""``sync``: bring an existing optimizer in line with the model's trainable set (S10)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._checks import check_model, check_optimizer
from .._errors import FrozenError
from .._query import trainable_ids
from .._tree import named_parameters
from ._groups import PARKED

__all__ = ["sync", "state_nbytes", "paths_by_id", "NEW_GROUP_NAME"]

# Name of the group that receives parameters the optimizer never held (see ``sync``).
NEW_GROUP_NAME = "thawed"


def paths_by_id(optimizer: torch.optim.Optimizer, model: nn.Module, function: str) -> dict[int, str]:
    """``{id(param): path}`` for the model; raise if the optimizer holds anything else.

    Also checks every path recorded in a group's ``"frozen_params"``. Changes nothing.
    """
    named = named_parameters(model)
    path_of = {id(p): path for path, p in named}
    for index, group in enumerate(optimizer.param_groups):
        label = f"param_groups[{index}] (name {group.get('name')!r})"
        for position, param in enumerate(group["params"]):
            if id(param) not in path_of:
                raise FrozenError(
                    f"{function}(optimizer, model): optimizer {label} holds a parameter "
                    f"(params[{position}], shape {tuple(param.shape)}) that is not in the model. "
                    f"Expected only parameters of this model; the model changed since the optimizer was "
                    f"built (a module replaced or moved?) or the optimizer belongs to another model. "
                    f"Build a new optimizer from frozen.optim.param_groups(model). Nothing was modified."
                )
        known = {path for path, _ in named}
        for path in group.get(PARKED, ()):
            if path not in known:
                raise FrozenError(
                    f"{function}(optimizer, model): optimizer {label} records the frozen parameter "
                    f"{path!r} in 'frozen_params', but the model has no parameter with that path. "
                    f"Expected the model the groups were built for; it changed since. Rebuild the "
                    f"groups with frozen.optim.param_groups(model). Nothing was modified."
                )
    return path_of


def _set_params(group: dict[str, Any], params: list[nn.Parameter], path_of: dict[int, str]) -> None:
    # In place: LBFGS and some wrappers keep a reference to the list.
    group["params"][:] = params
    if "param_names" in group:  # torch's named-parameter groups: keep names aligned
        group["param_names"][:] = [path_of[id(p)] for p in params]


def sync(
    optimizer: torch.optim.Optimizer, model: nn.Module, *, new_group: Mapping[str, Any] | None = None
) -> torch.optim.Optimizer:
    """Make ``optimizer`` hold exactly the parameters trainable in ``model``; return it.

    Call it after :func:`frozen.freeze` / :func:`frozen.thaw` (or ``Frozen`` + ``settle``)
    mid-training. Works on any ``torch.optim.Optimizer``; group order and group
    options are kept.

    * A parameter that is no longer trainable leaves its group; its optimizer state
      (momentum, Adam moments, step) is dropped, so the memory comes back; its
      ``.grad`` is set to ``None`` so no stale gradient lingers; its path is recorded
      in the group's ``"frozen_params"``.
    * A parameter that is trainable again returns to the group that records it in
      ``"frozen_params"`` (the group it left, or the one :func:`param_groups` placed it
      in), with fresh state and that group's current options.
    * A trainable parameter the optimizer never held goes to a new group named
      ``"thawed"`` with the optimizer's constructor defaults (``optimizer.defaults``).
    * ``new_group={"lr": 1e-4, "name": "backbone"}`` sends *every* newly trainable
      parameter (returning or never held) to a group with those options instead —
      Lightning's ``unfreeze_and_add_param_group``. If a group with that name exists,
      they join it and its options are kept.

    A new group gets ``initial_lr`` when the other groups have one (set by an LR
    scheduler); a scheduler created earlier does not know it (see docs/optimizers.md).

    Args:
        optimizer: the optimizer to update in place.
        model: the model it trains.
        new_group: options for the group that receives newly trainable parameters.

    Returns:
        ``optimizer``.

    Raises:
        TypeError: ``optimizer`` or ``model`` has the wrong type.
        frozen.FrozenError: the optimizer holds (or records) a parameter that is not in
            the model. Nothing is modified then.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
        >>> for p in net[0].parameters():
        ...     _ = p.requires_grad_(False)
        >>> opt = frozen.optim.sync(opt, net)
        >>> len(opt.param_groups[0]["params"]), opt.param_groups[0]["frozen_params"]
        (2, ['0.weight', '0.bias'])
    """
    check_optimizer(optimizer, "frozen.optim.sync")
    check_model(model, "frozen.optim.sync")
    if new_group is not None and (not isinstance(new_group, Mapping) or "params" in new_group):
        raise TypeError(
            f"frozen.optim.sync(new_group=...): expected a dict of group options such as {{'lr': 1e-4, 'name': 'backbone'}}, received {new_group!r}. Leave out 'params'."
        )
    path_of = paths_by_id(optimizer, model, "frozen.optim.sync")
    wanted = trainable_ids(model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    arriving = [p for path, p in named_parameters(model) if id(p) in wanted and id(p) not in held]

    # A returning parameter goes to the first group that records it as parked.
    home: dict[int, int] = {}
    for index, group in enumerate(optimizer.param_groups if new_group is None else ()):
        for param in arriving:
            if path_of[id(param)] in group.get(PARKED, ()):
                home.setdefault(id(param), index)
    active = {path for path, p in named_parameters(model) if id(p) in wanted}
    leaving_any = any(id(p) not in wanted for group in optimizer.param_groups for p in group["params"])
    for index, group in enumerate(optimizer.param_groups):
        leaving = [p for p in group["params"] if id(p) not in wanted]
        for param in leaving:
            optimizer.state.pop(param, None)
            param.grad = None
        parked = [*group.get(PARKED, []), *(path_of[id(p)] for p in leaving)]
        group[PARKED] = [path for path in dict.fromkeys(parked) if path not in active]
        kept = [p for p in group["params"] if id(p) in wanted]
        _set_params(group, kept + [p for p in arriving if home.get(id(p)) == index], path_of)
    homeless = [p for p in arriving if id(p) not in home]
    for param in arriving:
        optimizer.state.pop(param, None)  # fresh state, whatever an earlier run left
    if homeless:
        _add_to_new_group(optimizer, homeless, dict(new_group or {"name": NEW_GROUP_NAME}), path_of)
    if hasattr(optimizer, "_numel_cache"):  # LBFGS: one flat vector over all its parameters
        optimizer._numel_cache = None
        if leaving_any or arriving:
            # Its curvature history (kept under its first parameter) has the old length.
            for param in optimizer.param_groups[0]["params"][:1]:
                optimizer.state.pop(param, None)
    return optimizer


def _add_to_new_group(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], options: dict[str, Any], path_of: dict[int, str]
) -> None:
    name = options.setdefault("name", NEW_GROUP_NAME)
    for group in optimizer.param_groups:
        if group.get("name") == name:
            _set_params(group, list(group["params"]) + params, path_of)
            return
    group: dict[str, Any] = {**options, "params": params, PARKED: []}
    if any("param_names" in g for g in optimizer.param_groups):
        group["param_names"] = [path_of[id(p)] for p in params]
    optimizer.add_param_group(group)
    added = optimizer.param_groups[-1]
    if any("initial_lr" in g for g in optimizer.param_groups[:-1]):
        added.setdefault("initial_lr", added["lr"])


def state_nbytes(optimizer: torch.optim.Optimizer) -> int:
    """Return the bytes of every tensor in ``optimizer.state`` (moments, buffers, steps).

    Example:
        >>> import torch, frozen
        >>> w = torch.nn.Parameter(torch.zeros(10))
        >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
        >>> w.grad = torch.ones(10); opt.step()
        >>> frozen.optim.state_nbytes(opt)
        40
    """
    check_optimizer(optimizer, "frozen.optim.state_nbytes")

    def nbytes(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return value.nbytes
        if isinstance(value, Mapping):
            return sum(nbytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(nbytes(v) for v in value)
        return 0

    return sum(nbytes(state) for state in optimizer.state.values())
