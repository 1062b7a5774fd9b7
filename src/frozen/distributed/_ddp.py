"""Freezing under ``DistributedDataParallel`` and FSDP2 (contract S13).

DDP builds its gradient reducer once, at construction, over the parameters that
require grad *then*. After :func:`frozen.thaw` a thawed parameter is not in the
reducer: it trains on each rank with its local gradient and the replicas drift
apart silently. After :func:`frozen.freeze` a frozen parameter never gets a
gradient and DDP crashes with "Expected to have finished reduction". The remedy
for both is to rebuild the wrapper over the same module: :func:`rewrap`. A
wrapper built or rebuilt here carries a guard (a forward pre-hook) that raises
:class:`frozen.FrozenError` at the next forward when its trainable set no longer
matches the flags, so the mistake is never silent.

FSDP2 (``fully_shard``) reads ``requires_grad`` at every step and needs no
rebuild; :func:`local_nbytes` counts what one rank really holds of a sharded
tensor.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._errors import FrozenError

__all__ = [
    "wrap",
    "rewrap",
    "guard",
    "needs_rewrap",
    "check_ddp_consistent",
    "local_nbytes",
    "reducer_params",
    "REDUCED",
    "GUARD_HOOK",
]

# Attributes frozen sets on a DDP wrapper it built, guarded or watched.
_KWARGS = "_frozen_ddp_kwargs"  # constructor keyword arguments, for rewrap
REDUCED = "_frozen_ddp_reduced"  # the parameters in the reducer, in order
GUARD_HOOK = "_frozen_ddp_guard"  # the guard's hook handle
_REDUCED, _HOOK = REDUCED, GUARD_HOOK

_FIX = "call `model = frozen.distributed.rewrap(model)` on every rank after freeze/thaw (before the next forward)"


def reducer_params(module: nn.Module, ignored: set[str], *, every: bool = False) -> list[nn.Parameter]:
    """The parameters DDP puts in its reducer: requires grad, not ignored, deduplicated.

    The same rule as ``DistributedDataParallel._build_params_for_reducer``; ``every=True``
    drops the ``requires_grad`` condition (the candidates, in module order).
    """
    seen: set[int] = set()
    params = []
    for name, param in module.named_parameters(remove_duplicate=False):
        if (every or param.requires_grad) and name not in ignored and id(param) not in seen:
            seen.add(id(param))
            params.append(param)
    return params


def _inferred_kwargs(ddp: DistributedDataParallel) -> dict[str, Any]:
    # The constructor arguments of a wrapper frozen did not build, read back from the
    # attributes DistributedDataParallel keeps (their names moved between torch releases).
    config = getattr(ddp, "_bucket_config", None)  # torch >= 2.13
    if config is not None:
        bucket_cap_mb = config.bucket_cap_mb
    else:  # torch 2.10-2.12: only the byte cap, and whether it was the default
        bucket_cap_mb = None if getattr(ddp, "bucket_bytes_cap_default", False) else ddp.bucket_bytes_cap / 2**20
    kwargs = {
        "device_ids": ddp.device_ids,
        "output_device": ddp.output_device,
        "dim": ddp.dim,
        "process_group": ddp.process_group,
        "bucket_cap_mb": bucket_cap_mb,
        "find_unused_parameters": ddp.find_unused_parameters,
        "gradient_as_bucket_view": ddp.gradient_as_bucket_view,
        "static_graph": ddp.static_graph,
        "mixed_precision": ddp.mixed_precision,
        "skip_all_reduce_unused_params": getattr(ddp, "skip_all_reduce_unused_params", False),
    }
    if "forward_sync_buffers" in vars(ddp):  # torch >= 2.13 (broadcast_buffers became a property)
        kwargs["forward_sync_buffers"] = ddp.forward_sync_buffers
    else:
        kwargs["broadcast_buffers"] = ddp.broadcast_buffers
    return kwargs


def _check_ddp(ddp: object, function: str) -> DistributedDataParallel:
    if not isinstance(ddp, DistributedDataParallel):
        raise TypeError(
            f"{function}(model): expected a torch.nn.parallel.DistributedDataParallel, received "
            f"{type(ddp).__module__}.{type(ddp).__qualname__}. Wrap the model with "
            f"frozen.distributed.wrap(model, ...) first."
        )
    return ddp


def guard(ddp: DistributedDataParallel) -> DistributedDataParallel:
    """Make ``ddp`` raise :class:`frozen.FrozenError` when its trainable set goes stale; return it.

    Installs a forward pre-hook that runs :func:`check_ddp_consistent` (one pass over
    the parameters, no communication). It records the reducer's parameters as the
    parameters that require grad *now*, so call it right after constructing the
    wrapper. :func:`wrap` and :func:`rewrap` call it for you. Idempotent.

    Args:
        ddp: a ``DistributedDataParallel`` wrapper.

    Returns:
        ``ddp``.

    Raises:
        TypeError: ``ddp`` is not a ``DistributedDataParallel``.
    """
    _check_ddp(ddp, "frozen.distributed.guard")
    if getattr(ddp, _HOOK, None) is None:
        setattr(ddp, _REDUCED, reducer_params(ddp.module, ddp.parameters_to_ignore))
        hook = ddp.register_forward_pre_hook(lambda module, args: check_ddp_consistent(module))
        setattr(ddp, _HOOK, hook)
        _keep_buffer_versions(ddp)
    return ddp


def _keep_buffer_versions(ddp: DistributedDataParallel) -> None:
    """Make the buffer broadcast before each forward keep the buffers' version counters, as torch >= 2.13 does.

    Up to torch 2.12, DDP's broadcast of rank 0's buffers (``broadcast_buffers=True``, the
    default) wrote every buffer in place at every forward and bumped its version: a cached
    part with a BatchNorm in it saw a changed part at every step and never hit. torch 2.13
    wraps the broadcast in ``_unsafe_preserve_version_counter``; this does the same on the
    releases before it, on the wrappers frozen builds or guards.
    """
    if torch.torch_version.TorchVersion(torch.__version__) >= "2.13":
        return
    held = weakref.ref(ddp)  # weak: the wrapper holds this function, no reference cycle

    def keeping_versions(authoritative_rank: int) -> Any:
        wrapper = held()
        assert wrapper is not None  # called by the wrapper itself
        with torch.autograd._unsafe_preserve_version_counter(tuple(wrapper.modules_buffers)):
            return DistributedDataParallel._sync_module_buffers(wrapper, authoritative_rank)

    ddp._sync_module_buffers = keeping_versions  # type: ignore[method-assign]


def wrap(module: nn.Module, **ddp_kwargs: Any) -> DistributedDataParallel:
    """Wrap ``module`` in ``DistributedDataParallel`` that :func:`rewrap` can rebuild exactly.

    Same as ``DistributedDataParallel(module, **ddp_kwargs)`` (a collective: call it on
    every rank), plus: the keyword arguments are remembered for :func:`rewrap`, and the
    wrapper is guarded (:func:`guard`). Freeze the module (or ``settle`` it) before, so
    frozen parameters stay out of the reducer and no ``find_unused_parameters`` is needed.

    Args:
        module: the model, already on its device.
        **ddp_kwargs: any ``DistributedDataParallel`` keyword argument.

    Returns:
        The guarded wrapper.
    """
    ddp = DistributedDataParallel(module, **ddp_kwargs)
    setattr(ddp, _KWARGS, dict(ddp_kwargs))
    return guard(ddp)


def needs_rewrap(ddp: DistributedDataParallel) -> bool:
    """Return whether the parameters that require grad differ from ``ddp``'s reducer.

    Local to this rank, no communication. For a wrapper frozen did not build or guard,
    the reducer is compared by count and bytes (from DDP's logging data).

    Raises:
        TypeError: ``ddp`` is not a ``DistributedDataParallel``.
    """
    _check_ddp(ddp, "frozen.distributed.needs_rewrap")
    now = reducer_params(ddp.module, ddp.parameters_to_ignore)
    reduced = getattr(ddp, _REDUCED, None)
    if reduced is not None:
        return len(now) != len(reduced) or any(a is not b for a, b in zip(now, reduced))
    data = ddp._get_ddp_logging_data()
    count, nbytes = data.get("num_parameter_tensors"), data.get("total_parameter_size_bytes")
    return count != len(now) or nbytes != sum(p.numel() * p.element_size() for p in now)


def check_ddp_consistent(model: nn.Module) -> None:
    """Raise :class:`frozen.FrozenError` if ``model`` is a DDP wrapper whose reducer is stale.

    A DDP wrapper all-reduces the gradients of the parameters that required grad when
    it was built. After a thaw, a parameter outside that set would train on local
    gradients (replicas drift apart silently); after a freeze, DDP would crash at the
    next step. Anything that is not a DDP wrapper passes (nothing to check).

    Args:
        model: a model, or a ``DistributedDataParallel`` wrapper.

    Raises:
        frozen.FrozenError: the wrapper must be rebuilt with :func:`rewrap`.
    """
    if not isinstance(model, DistributedDataParallel) or not needs_rewrap(model):
        return
    reduced = getattr(model, _REDUCED, None)
    now = reducer_params(model.module, model.parameters_to_ignore)
    detail = ""
    if reduced is not None:
        path_of = {id(p): name for name, p in model.module.named_parameters()}
        thawed = [path_of[id(p)] for p in now if all(p is not q for q in reduced)]
        frozen_ = [path_of.get(id(p), "?") for p in reduced if all(p is not q for q in now)]
        detail = f" Trainable since: {thawed[:8]}; frozen since: {frozen_[:8]}."
    raise FrozenError(
        f"DistributedDataParallel model: the parameters that require grad changed since the wrapper was "
        f"built (freeze/thaw after wrapping).{detail} Expected the reducer's set; DDP would all-reduce "
        f"the old set only (thawed parameters would train on local gradients and the ranks would drift "
        f"apart; frozen ones would crash the next backward). Fix: {_FIX}; the optimizer keeps working "
        f"(same parameter objects, then frozen.optim.sync(optimizer, model.module))."
    )


def _check_same_on_every_rank(ddp: DistributedDataParallel, paths: list[str]) -> None:
    # DDP verifies only shapes across ranks; equal shapes with different paths would
    # pass and pair up the wrong gradients. Compare the paths (one all_gather).
    gathered: list[Any] = [None] * dist.get_world_size(ddp.process_group)
    dist.all_gather_object(gathered, paths, group=ddp.process_group)
    for rank, other in enumerate(gathered):
        if other != gathered[0]:
            only_0 = sorted(set(gathered[0]) - set(other))[:8]
            only_r = sorted(set(other) - set(gathered[0]))[:8]
            raise FrozenError(
                f"frozen.distributed.rewrap(model): the ranks disagree on what is trainable: rank 0 only "
                f"{only_0}, rank {rank} only {only_r}. Expected the same freeze/thaw calls on every rank. "
                f"Fix: make every rank freeze/thaw the same parts before rewrap. Nothing was modified."
            )


def rewrap(ddp: DistributedDataParallel, **overrides: Any) -> DistributedDataParallel:
    """Rebuild a DDP wrapper for the current trainable set when it changed; return the wrapper to use.

    Call it on every rank (it is a collective) after :func:`frozen.freeze` /
    :func:`frozen.thaw` and before the next forward: ``model = frozen.distributed.rewrap(model)``.
    It checks that every rank has the same trainable parameter paths, then, if the
    set differs from the reducer's, builds a new ``DistributedDataParallel`` over the
    same ``ddp.module`` with the same constructor arguments (those given to :func:`wrap`,
    else read back from the wrapper) and ``overrides``, re-registers communication
    hooks, and guards it. Otherwise it returns ``ddp`` itself. Parameter objects do not
    change, so an optimizer keeps working (``frozen.optim.sync(optimizer, model.module)``).

    The new wrapper broadcasts rank 0's parameters and buffers at construction (DDP's
    ``init_sync``); they are identical already when every rank ran the same steps.
    Drop references to the old wrapper: its reducer is not used again.

    Args:
        ddp: the current wrapper.
        **overrides: ``DistributedDataParallel`` keyword arguments to change.

    Returns:
        The wrapper to train with (``ddp`` or a new one).

    Raises:
        TypeError: ``ddp`` is not a ``DistributedDataParallel``.
        frozen.FrozenError: the ranks disagree on the trainable set, nothing is
            trainable any more, or the wrapper was built with mixed precision and
            communication hooks (not rebuilt automatically). Nothing is modified then.
    """
    _check_ddp(ddp, "frozen.distributed.rewrap")
    module = ddp.module
    params = reducer_params(module, ddp.parameters_to_ignore)
    path_of = {id(p): name for name, p in module.named_parameters()}
    _check_same_on_every_rank(ddp, [path_of[id(p)] for p in params])
    if not needs_rewrap(ddp) and not overrides:
        return guard(ddp)
    if not params:
        raise FrozenError(
            "frozen.distributed.rewrap(model): no parameter of model.module is trainable any more; "
            "DistributedDataParallel needs at least one. Expected a trainable part. Fix: train with "
            "model.module directly (nothing to all-reduce) or keep a part trainable. Nothing was modified."
        )
    hooks = list(getattr(ddp, "_comm_hooks", []))
    if hooks and ddp.mixed_precision is not None:
        raise FrozenError(
            "frozen.distributed.rewrap(model): the wrapper has mixed_precision and communication hooks, "
            "which rewrap cannot tell apart. Expected one or the other. Fix: build the new wrapper yourself "
            "with DistributedDataParallel(model.module, ...). Nothing was modified."
        )
    kwargs = {**(getattr(ddp, _KWARGS, None) or _inferred_kwargs(ddp)), **overrides}
    hook = getattr(ddp, _HOOK, None)
    if hook is not None:
        hook.remove()
        setattr(ddp, _HOOK, None)
    new = wrap(module, **kwargs)
    for comm_hook, state in hooks if ddp.mixed_precision is None else ():
        new.register_comm_hook(state, comm_hook)
    return new


def local_nbytes(tensor: torch.Tensor) -> int:
    """Return the bytes this rank holds of ``tensor``: its local shard for a ``DTensor``.

    ``DTensor.nbytes`` is the size of the whole (global) tensor; under FSDP2 each rank
    holds only its shard. Plain tensors count their own bytes.

    Example:
        >>> import torch, frozen.distributed
        >>> frozen.distributed.local_nbytes(torch.zeros(10))
        40
    """
    to_local = getattr(tensor, "to_local", None)
    local = to_local() if callable(to_local) else tensor
    return int(local.numel() * local.element_size())
