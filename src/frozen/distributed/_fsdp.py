"""What an FSDP2-managed module computes from: its parameters' sharded local tensors.

Inside ``forward``, FSDP2 (``fully_shard``) registers on each module an *unsharded*
parameter that it refills by all-gather before every forward: the same object, the same
storage object and the same ``_version`` whatever the values. A snapshot of those
(``_tensor_state.py``) never sees a change -- measured: after ``set_model_state_dict``
doubled a cached prefix's weights, the cache went on returning the old outputs. The values
change only through the *sharded* parameters (``load_state_dict``, optimizer steps,
in-place edits of the ``DTensor``), so a snapshot of an FSDP2-managed part also records
those sharded parameters and their local shards: the ``DTensor``'s own version counter moves
on an in-place edit (measured: its local shard's does not), a new local shard is a new
object. That catches in-place edits and replaced shards, but not a
load: FSDP2 copies a loaded ``state_dict`` into the shards with their version counters
preserved (measured: values doubled, ``_version`` still 0). So :func:`watch_loads` also
hooks ``load_state_dict`` itself (every load of the modules, direct or through a parent,
as ``torch.distributed.checkpoint.state_dict.set_model_state_dict`` does).

FSDP2 has no public map from a module to its sharded parameters; this reads
``FSDPModule._get_fsdp_state()`` and its parameter groups (torch 2.6-2.13). Where that
cannot be read, :func:`sharded_sources` says so (``None``) and the callers recompute
instead of trusting a snapshot. Only FSDP2 modules on the path from the given root to the
part, or inside the part, are found: shard the model you cached or made lean, or a part of it.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["manages_parameter", "sharded_sources", "watch_loads"]


@functools.cache
def _fsdp_module_class() -> Any:
    """``FSDPModule``, or ``None`` where torch was built without its distributed package (looked up once)."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FSDPModule

    return FSDPModule


def _path_modules(root: nn.Module | None, path: str) -> list[nn.Module]:
    """``root`` and every module on the way down to ``path`` (the part itself included)."""
    if root is None:
        return []
    chain = [root]
    for name in path.split(".") if path else ():
        child = chain[-1]._modules.get(name)
        if child is None:
            break
        chain.append(child)
    return chain


def _groups(owner: Any) -> list[Any]:
    state = owner._get_fsdp_state()
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:  # torch before 2.8: one group per state
        group = getattr(state, "_fsdp_param_group", None)
        groups = [group] if group is not None else []
    return list(groups)


def manages_parameter(module: nn.Module, name: str) -> bool:
    """Whether FSDP2 manages the parameter ``name`` registered on ``module`` (``False`` when unreadable).

    Inside ``forward`` that slot holds FSDP2's unsharded parameter, a plain ``Parameter``
    that looks like any other; row freezing must refuse it (``frozen._rows``' ``watch_slots``). The
    FSDP2 units are found through torch's composable-state registry, as no public API
    maps a module to the unit that manages it.
    """
    fsdp_module = _fsdp_module_class()
    if fsdp_module is None or not torch.distributed.is_initialized():
        return False
    try:
        from torch.distributed._composable_state import _module_state_mapping

        owners = [m for m in list(_module_state_mapping) if isinstance(m, fsdp_module)]
        for owner in owners:
            for group in _groups(owner):
                for param in group.fsdp_params:
                    info = param._module_info
                    slots = zip((info.module, *info.shared_modules), (info.param_name, *info.shared_param_names))
                    if any(m is module and n == name for m, n in slots):
                        return True
    except (ImportError, AttributeError, AssertionError, TypeError):
        return False
    return False


def sharded_sources(root: nn.Module | None, path: str, modules: Sequence[nn.Module]) -> list[torch.Tensor] | None:
    """The local shards of the FSDP2 parameters registered on ``modules`` (``[]`` without FSDP2).

    ``root`` and ``path`` locate the part in the model, so that an FSDP2 unit above it
    is found too. ``None``: FSDP2 manages something here but its state could not be read.
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return []  # FSDP2 needs a process group: one C call spares everyone else the walk
    fsdp_module = _fsdp_module_class()
    if fsdp_module is None:
        return []
    owners = [m for m in (*_path_modules(root, path), *modules) if isinstance(m, fsdp_module)]
    if not owners:
        return []
    wanted = {id(m) for m in modules}
    sources: list[torch.Tensor] = []
    try:
        for owner in dict.fromkeys(owners):  # an owner may be both on the path and inside the part
            for group in _groups(owner):
                for param in group.fsdp_params:
                    if id(param._module_info.module) in wanted:
                        # The DTensor counts in-place edits (its local shard's counter does not move
                        # then); the local shard is replaced when FSDP2 re-shards or moves.
                        sources += [param.sharded_param, param.sharded_param._local_tensor]
    except (AttributeError, AssertionError, TypeError):
        return None
    return sources


class _Inert:
    """What a load hook becomes in a copy (``deepcopy``, pickle): copies run uncached and plain."""

    def __call__(self, _module: nn.Module, _incompatible: Any) -> None:
        return None


class _AfterLoad:
    """A ``load_state_dict`` post-hook calling its owner's ``forget``, held weakly."""

    def __init__(self, forget: Any) -> None:
        self.owner = weakref.WeakMethod(forget)

    def __call__(self, _module: nn.Module, _incompatible: Any) -> None:
        method = self.owner()
        if method is not None:
            method()

    def __reduce__(self) -> tuple:
        return (_Inert, ())


def watch_loads(modules: Sequence[nn.Module], forget: Any) -> list[Any]:
    """Call ``forget()`` after any ``load_state_dict`` that loads one of ``modules``; return the hook handles.

    ``forget`` is held weakly (a bound method of the part or convolution that owns the
    snapshot): the hooks never keep their owner alive, and do nothing once it is gone.
    A copy of the module gets an inert hook (copies run uncached, and plain).
    """
    hook = _AfterLoad(forget)
    return [m.register_load_state_dict_post_hook(hook) for m in dict.fromkeys(modules)]
