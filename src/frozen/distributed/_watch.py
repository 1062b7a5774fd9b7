"""A ``DistributedDataParallel`` wrapper the user built: a freeze or thaw after it is caught.

Most ``torchrun`` scripts build ``DistributedDataParallel(model)`` themselves instead of
:func:`frozen.distributed.wrap`. Its reducer holds the parameters that required grad at
construction, so a thaw after wrapping trains the thawed parameters on each rank's local
gradient (the replicas drift apart silently) and a freeze after wrapping crashes a later
step inside torch ("Expected to have finished reduction in the prior iteration").

A module knows nothing of the wrappers that hold it, and locating them through ``gc`` costs
a walk over the whole heap. But every wrapper announces itself while it runs: during its
forward, ``DistributedDataParallel._active_ddp_module`` is the wrapper (torch sets it for
dynamo). So whenever ``settle`` writes flags in a process with a process group — freeze,
thaw, load_state, settle — it puts one forward pre-hook on the model it settled (once).
At the model's next forward inside a wrapper, the hook reads the reducer's parameters
(exactly, from its gradient buckets, once per wrapper) and compares them with what
requires grad now: a difference raises :class:`frozen.FrozenError` naming
``frozen.distributed.rewrap``, before the step that would diverge or crash. Outside a
wrapper the hook returns after one attribute read; without a process group there is none
(single-process models keep plain calls).

DeepSpeed (ZeRO 1-3) chooses what it trains once, inside ``deepspeed.initialize``; the same
hook finds the engine through the forward pre-hook it registers on the model and refuses a
forward after ``requires_grad`` changed, naming the fix (destroy the engine, initialize again).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._errors import FrozenError
from ._ddp import GUARD_HOOK, REDUCED, check_ddp_consistent, reducer_params

__all__ = ["watch", "averaged_elsewhere"]

# Root modules whose wrapper's thawed parameters another component averages across ranks
# itself (the Hugging Face callback: the Trainer keeps its wrapper where nothing can rebuild it).
_AVERAGED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def watch(model: nn.Module) -> None:
    """Check ``model``'s next forwards inside a ``DistributedDataParallel`` wrapper (see the module doc).

    A no-op without an initialised process group, and idempotent.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if any(hook is _check_active_wrapper for hook in model._forward_pre_hooks.values()):
        return
    model.register_forward_pre_hook(_check_active_wrapper)


def averaged_elsewhere(model: nn.Module) -> None:
    """Say that the gradients of parameters thawed after wrapping ``model`` are averaged by the caller."""
    _AVERAGED.add(model)


def _reducer_at_construction(ddp: DistributedDataParallel) -> list[nn.Parameter] | None:
    """The parameters ``ddp``'s reducer holds, in module order, read from its gradient buckets.

    None where this torch does not expose the buckets: the check then falls back on the
    count and bytes DDP logged at construction (:func:`frozen.distributed.needs_rewrap`).
    """
    try:
        buckets = ddp.reducer._get_zeros_like_grad_buckets()
        held = {id(p) for bucket in buckets for p in bucket.parameters()}
    except (AttributeError, RuntimeError):
        return None
    seen: set[int] = set()
    ordered = []
    for param in reducer_params(ddp.module, ddp.parameters_to_ignore, every=True):
        if id(param) in held and id(param) not in seen:
            seen.add(id(param))
            ordered.append(param)
    return ordered


def _deepspeed_engine(module: nn.Module) -> Any:
    """The latest DeepSpeed engine built over ``module`` (found through the forward hook it registers), or None."""
    engine = None
    for hook in module._forward_pre_hooks.values():
        if getattr(hook, "__qualname__", "").startswith("DeepSpeedEngine."):
            for cell in getattr(hook, "__closure__", None) or ():
                if type(cell.cell_contents).__name__ == "DeepSpeedEngine":
                    engine = cell.cell_contents  # a later deepspeed.initialize registers a later hook
    return engine


def _check_deepspeed(module: nn.Module, engine: Any) -> None:
    """Refuse a forward when ``requires_grad`` changed since ``deepspeed.initialize`` chose what trains."""
    optimizer = getattr(engine, "optimizer", None)
    groups = getattr(optimizer, "bit16_groups", None) or getattr(optimizer, "fp16_groups", None)
    if groups is None:
        groups = [g["params"] for g in getattr(optimizer, "param_groups", [])]
    held = {id(p) for group in groups for p in group}
    path_of: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in module.named_parameters():
        path_of.setdefault(id(param), (name, param))
    thawed = [n for i, (n, p) in path_of.items() if p.requires_grad and i not in held]
    frozen_ = [n for i, (n, p) in path_of.items() if not p.requires_grad and i in held]
    if not thawed and not frozen_:
        return
    stage = getattr(engine, "zero_optimization_stage", lambda: "?")()
    raise FrozenError(
        f"DeepSpeed engine (ZeRO stage {stage}): the parameters that require grad changed since "
        f"deepspeed.initialize (trainable since: {thawed[:8]}; frozen since: {frozen_[:8]}). DeepSpeed chose "
        f"what it trains once, at initialize: a thawed part would never train (a silent no-op) and a frozen "
        f"one would keep moving (momentum, weight decay). Expected freeze/thaw before deepspeed.initialize. "
        f"Fix: on every rank, engine.destroy(), then deepspeed.initialize(model=engine.module, "
        f"optimizer=torch.optim.AdamW(frozen.trainable(engine.module), ...), config=...) again — the layers "
        f"already training restart their optimizer state (docs/distributed.md)."
    )


def _check_active_wrapper(module: nn.Module, args: Any) -> None:
    if torch.compiler.is_compiling():
        return  # compiled graphs are guarded on requires_grad; dynamo must not trace this
    engine = _deepspeed_engine(module)
    if engine is not None:
        _check_deepspeed(module, engine)
    ddp = getattr(DistributedDataParallel, "_active_ddp_module", None)
    if ddp is None or getattr(ddp, GUARD_HOOK, None) is not None:
        return  # not inside a wrapper, or one frozen.distributed.wrap guards already
    if any(ddp.module is m for m in _AVERAGED):
        return
    if getattr(ddp, REDUCED, None) is None:
        reduced = _reducer_at_construction(ddp)
        if reduced is not None:
            setattr(ddp, REDUCED, reduced)
    check_ddp_consistent(ddp)
