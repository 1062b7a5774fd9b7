"""``sync``: bring an existing optimizer in line with the model's trainable set (S10)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._checks import check_model, check_optimizer
from .._core import guard_loads, named_parameters, trainable_ids
from .._errors import FrozenError
from ..distributed import local_nbytes
from ._groups import PARKED

__all__ = ["sync", "state_nbytes", "paths_by_id", "NEW_GROUP_NAME", "KEPT", "STATE_POLICIES"]

# Name of the group that receives parameters the optimizer never held (see ``sync``);
# later unnamed groups are "thawed-2", "thawed-3", ...
NEW_GROUP_NAME = "thawed"
# Group key: optimizer state kept for this group's frozen parameters, by path (state="keep").
KEPT = "frozen_state"
STATE_POLICIES = ("drop", "keep")


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


def _check_sync_arguments(
    optimizer: torch.optim.Optimizer, model: nn.Module, new_group: Mapping[str, Any] | None, state: str
) -> None:
    check_optimizer(optimizer, "frozen.optim.sync")
    check_model(model, "frozen.optim.sync")
    if new_group is not None and (not isinstance(new_group, Mapping) or "params" in new_group):
        raise TypeError(
            f"frozen.optim.sync(new_group=...): expected a dict of group options such as {{'lr': 1e-4, 'name': "
            f"'backbone'}}, received {new_group!r}. Leave out 'params'."
        )
    if state not in STATE_POLICIES:
        raise FrozenError(
            f"frozen.optim.sync(state={state!r}): expected one of {STATE_POLICIES!r} — 'drop' frees a frozen "
            f"parameter's optimizer state, 'keep' restores it on thaw. Nothing was modified."
        )


def _homes(optimizer: torch.optim.Optimizer, arriving: list[nn.Parameter], path_of: dict[int, str]) -> dict[int, int]:
    """Group index for each returning parameter: the first group that records it as parked."""
    home: dict[int, int] = {}
    for index, group in enumerate(optimizer.param_groups):
        for param in arriving:
            if path_of[id(param)] in group.get(PARKED, ()):
                home.setdefault(id(param), index)
    return home


def sync(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    *,
    new_group: Mapping[str, Any] | None = None,
    state: str = "drop",
) -> torch.optim.Optimizer:
    """Make ``optimizer`` hold exactly the parameters trainable in ``model``; return it.

    Call it after :func:`frozen.freeze` / :func:`frozen.thaw` (or ``Frozen`` + ``settle``)
    mid-training. Works on any ``torch.optim.Optimizer``; group order and group
    options are kept.

    * A parameter that is no longer trainable leaves its group; its ``.grad`` is set
      to ``None`` so no stale gradient lingers; its path is recorded in the group's
      ``"frozen_params"``. Its optimizer state (momentum, Adam moments, step) is
      dropped (``state="drop"``, the memory comes back) or kept aside in the group's
      ``"frozen_state"`` (``state="keep"``), untouched while it is frozen.
    * A parameter that is trainable again returns to the group that records it in
      ``"frozen_params"`` (the group it left, or the one :func:`param_groups` placed it
      in), with that group's current options and its kept state if there is one
      (then it continues exactly where it stopped), fresh state otherwise.
    * A trainable parameter the optimizer never held goes to a new group named
      ``"thawed"`` (``"thawed-2"``, ... if that name is taken) with the optimizer's
      constructor defaults (``optimizer.defaults``).
    * ``new_group={"lr": 1e-4, "name": "backbone"}`` sends *every* newly trainable
      parameter (returning or never held) to a group with those options instead —
      Lightning's ``unfreeze_and_add_param_group``. If a group with that name exists,
      they join it and its options are kept. Without ``"name"``, each call that
      adds parameters makes its own group (``"thawed"``, ``"thawed-2"``, ...) with the
      options it asked for: two thaws are never merged silently.

    A new group gets ``initial_lr`` when the other groups have one (set by an LR
    scheduler); a scheduler created earlier does not know it (see docs/optimizers.md).

    Args:
        optimizer: the optimizer to update in place.
        model: the model it trains.
        new_group: options for the group that receives newly trainable parameters.
        state: ``"drop"`` (default) or ``"keep"``: what happens to the optimizer state
            of a parameter that leaves. Kept state is restored when it returns; it is
            saved with the optimizer (``state_dict``) and counted by :func:`state_nbytes`.

    Returns:
        ``optimizer``.

    Raises:
        TypeError: ``optimizer``, ``model`` or ``new_group`` has the wrong type.
        frozen.FrozenError: the optimizer holds (or records) a parameter that is not in
            the model, or ``state`` is not one of ``"drop"``, ``"keep"``. Nothing is
            modified then.

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
    _check_sync_arguments(optimizer, model, new_group, state)
    path_of = paths_by_id(optimizer, model, "frozen.optim.sync")
    wanted = trainable_ids(model, "frozen.optim.sync")
    named = named_parameters(model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    arriving = [p for _, p in named if id(p) in wanted and id(p) not in held]
    home = _homes(optimizer, arriving, path_of) if new_group is None else {}
    kept = _take_kept(optimizer, {path_of[id(p)] for p in arriving})
    active = {path for path, p in named if id(p) in wanted}
    leaving_any = any(id(p) not in wanted for group in optimizer.param_groups for p in group["params"])
    for index, group in enumerate(optimizer.param_groups):
        _park(optimizer, group, wanted, active, path_of, state)
        staying = [p for p in group["params"] if id(p) in wanted]
        _set_params(group, staying + [p for p in arriving if home.get(id(p)) == index], path_of)
    for param in arriving:
        optimizer.state.pop(param, None)  # fresh state, whatever an earlier run left ...
        if path_of[id(param)] in kept:  # ... unless it was kept while frozen
            optimizer.state[param] = kept[path_of[id(param)]]
    homeless = [p for p in arriving if id(p) not in home]
    if homeless:
        _add_to_new_group(optimizer, homeless, dict(new_group or {}), path_of)
    if hasattr(optimizer, "_numel_cache"):  # LBFGS: one flat vector over all its parameters
        optimizer._numel_cache = None
        if leaving_any or arriving:
            # Its curvature history (kept under its first parameter) has the old length.
            for param in optimizer.param_groups[0]["params"][:1]:
                optimizer.state.pop(param, None)
    guard_loads()  # a checkpoint of another freeze state now fails naming the fix, not torch's count
    return optimizer


def _park(
    optimizer: torch.optim.Optimizer,
    group: dict[str, Any],
    wanted: set[int],
    active: set[str],
    path_of: dict[int, str],
    state: str,
) -> None:
    """Record the group's leaving parameters in ``"frozen_params"``; drop or keep their state."""
    leaving = [p for p in group["params"] if id(p) not in wanted]
    for param in leaving:
        saved = optimizer.state.pop(param, None)
        if state == "keep" and saved:
            group.setdefault(KEPT, {})[path_of[id(param)]] = saved
        param.grad = None
    parked = [*group.get(PARKED, []), *(path_of[id(p)] for p in leaving)]
    group[PARKED] = [path for path in dict.fromkeys(parked) if path not in active]
    if KEPT in group and not group[KEPT]:
        del group[KEPT]


def _take_kept(optimizer: torch.optim.Optimizer, paths: set[str]) -> dict[str, Any]:
    """Remove and return the state kept (``state="keep"``) for ``paths``, from whatever group holds it."""
    found: dict[str, Any] = {}
    for group in optimizer.param_groups:
        store = group.get(KEPT)
        if not store:
            continue
        for path in paths & set(store):
            found[path] = store.pop(path)
        if not store:
            del group[KEPT]
    return found


def _add_to_new_group(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], options: dict[str, Any], path_of: dict[int, str]
) -> None:
    names = {group.get("name") for group in optimizer.param_groups}
    if "name" not in options:
        # Unnamed requests never share a group: each keeps the options it asked for.
        options["name"] = next(
            name
            for k in range(1, len(names) + 2)
            if (name := NEW_GROUP_NAME if k == 1 else f"{NEW_GROUP_NAME}-{k}") not in names
        )
    for existing in optimizer.param_groups:
        if existing.get("name") == options["name"]:
            _set_params(existing, list(existing["params"]) + params, path_of)
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

    State kept aside for frozen parameters (``sync(..., state="keep")``) is counted too:
    it is memory the optimizer holds. A sharded tensor (FSDP2's ``DTensor``) counts
    what this rank holds (``frozen.distributed._ddp.local_nbytes``).

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
            return local_nbytes(value)
        if isinstance(value, Mapping):
            return sum(nbytes(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(nbytes(v) for v in value)
        return 0

    kept = sum(nbytes(group.get(KEPT, {})) for group in optimizer.param_groups)
    return sum(nbytes(state) for state in optimizer.state.values()) + kept
