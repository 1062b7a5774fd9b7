"""Frozen weights in low precision: cast at the boundary of a frozen use.

A frozen part never receives gradient for its weights, so it can keep them in a
narrower floating type (``bfloat16``, ``float16``) and halve their memory. The
boundary casts floating-point inputs to that type and floating-point outputs back
to the caller's type; both casts are differentiable, so gradients still reach the
inputs (contract S1), in the caller's precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._errors import FrozenError

__all__ = [
    "cast_floating",
    "caller_dtype",
    "module_float_dtype",
    "cast_module",
    "PrecisionRecord",
    "precision_of",
    "lower_precision",
    "restore_precision",
]


def cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    """Cast every floating-point tensor in ``obj`` (tuples, lists, dicts) to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # NamedTuple
        return type(obj)(*(cast_floating(v, dtype) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floating(v, dtype) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((k, cast_floating(v, dtype)) for k, v in obj.items())
    return obj


def caller_dtype(args: tuple, kwargs: dict, default: torch.dtype) -> torch.dtype:
    """The floating type of the first floating-point tensor argument, else ``default``."""
    stack: list[Any] = [*args, *kwargs.values()]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor):
            if item.is_floating_point():
                return item.dtype
        elif isinstance(item, (tuple, list)):
            stack[:0] = list(item)
        elif isinstance(item, dict):
            stack[:0] = list(item.values())
    return default


def module_float_dtype(module: nn.Module) -> torch.dtype:
    """The type of the module's first floating parameter or buffer (the default if none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def cast_module(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers in place, keeping every ``Parameter`` object.

    ``Module.to`` assigns ``param.data``, so optimizers and records that hold the
    parameter objects keep working.
    """
    module.to(dtype)


# -- parts frozen in place with freeze(..., dtype=...) ------------------------------

PRECISION = "_frozen_precision"  # key in the root module's __dict__


class PrecisionRecord:
    """What ``freeze(..., dtype=...)`` changed on the root of one frozen part."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.original = {name: t.dtype for name, t in _floating_tensors(module)}
        self.fallback = module_float_dtype(module)  # the output type when no input is floating
        self.callers: list[torch.dtype] = []  # the callers' types of the calls in progress
        pre = module.register_forward_pre_hook(_cast_inputs, with_kwargs=True)
        post = module.register_forward_hook(_cast_outputs, always_call=True)
        self.hook_ids = (pre.id, post.id)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "callers": []}  # calls in progress do not travel


def precision_of(module: nn.Module) -> PrecisionRecord | None:
    """The record of a part frozen in low precision at ``module``, else ``None``."""
    return module.__dict__.get(PRECISION)


def lower_precision(module: nn.Module, dtype: torch.dtype) -> None:
    """Store ``module``'s floating tensors in ``dtype`` and cast at its boundary."""
    record = PrecisionRecord(module, dtype)
    cast_module(module, dtype)
    module.__dict__[PRECISION] = record


def restore_precision(module: nn.Module) -> None:
    """Undo :func:`lower_precision`: the original types (values keep the rounding)."""
    record: PrecisionRecord = module.__dict__.pop(PRECISION)
    pre_id, post_id = record.hook_ids
    module._forward_pre_hooks.pop(pre_id, None)
    module._forward_pre_hooks_with_kwargs.pop(pre_id, None)
    module._forward_hooks.pop(post_id, None)
    module._forward_hooks_always_called.pop(post_id, None)
    for name, tensor in _floating_tensors(module):
        original = record.original.get(name)
        if original is not None and tensor.dtype != original:
            if isinstance(tensor, nn.Parameter):
                tensor.data = tensor.data.to(original)  # same Parameter object
            else:
                owner_path, _, buffer_name = name.rpartition(".")
                module.get_submodule(owner_path)._buffers[buffer_name] = tensor.to(original)


def _floating_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [(name, t) for name, t in tensors if t.is_floating_point()]


def _cast_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    record = precision_of(module)
    if record is None:
        return args, kwargs
    record.callers.append(caller_dtype(args, kwargs, record.fallback))
    return cast_floating(args, record.dtype), cast_floating(kwargs, record.dtype)


def _cast_outputs(module: nn.Module, args: tuple, output: Any) -> Any:
    record = precision_of(module)
    if record is None or not record.callers:
        return None
    back = record.callers.pop()
    return None if output is None else cast_floating(output, back)


def low_precision_roots(uses: list, dtype: torch.dtype, shared: list) -> list[nn.Module]:
    """Validate ``freeze(..., dtype=...)``; return the roots of the parts to cast.

    A part stored in low precision is cast at its root, so it must be frozen whole:
    no excluded module inside it (it would receive low-precision inputs with
    full-precision weights) and no parameter shared with a part that still trains.
    """
    from ._state import is_marked_frozen

    if shared:
        frozen_at, other = shared[0]
        raise FrozenError(
            f"frozen.freeze(..., dtype={dtype}): {frozen_at!r} shares a parameter with {other!r}, which is "
            f"not selected; casting it would change the weights that part uses too. Select both parts, or "
            f"freeze without dtype=."
        )
    selected = {use.path for use in uses}
    ids = {id(use.module) for use in uses}
    roots = []
    for use in uses:
        if use.path and use.path.rpartition(".")[0] in selected:
            continue  # inside a selected part: its root casts it
        outside = [path for path, m in use.module.named_modules() if id(m) not in ids]
        if outside:
            raise FrozenError(
                f"frozen.freeze(..., dtype={dtype}): the part {use.path!r} contains {outside[0]!r}, which is "
                f"excluded and would keep training in full precision inside a low-precision part. Expected a "
                f"part frozen whole: drop the exclusion (or train_norms=), or freeze the sub-parts separately."
            )
        if is_marked_frozen(use.module):
            if all(t.dtype == dtype for _, t in _floating_tensors(use.module)):
                continue  # already frozen in this precision: nothing to do
            raise FrozenError(
                f"frozen.freeze(..., dtype={dtype}): {use.path!r} is already frozen in place in another "
                f"precision. Thaw it first: frozen.thaw(model, {use.path!r})."
            )
        roots.append(use.module)
    return roots


def check_thaw_keeps_parts_whole(uses: list, thawing: list[nn.Module]) -> None:
    """Raise unless each low-precision part is thawed whole or not at all."""
    from ._state import is_marked_frozen

    ids = {id(m) for m in thawing}
    for use in uses:
        if precision_of(use.module) is None:
            continue
        inside = [m for m in use.module.modules() if is_marked_frozen(m)]
        thawed = [id(m) in ids for m in inside]
        if any(thawed) and not all(thawed):
            raise FrozenError(
                f"frozen.thaw: the part {use.path!r} is frozen in {precision_of(use.module).dtype}, and only "
                f"some of it was selected. A low-precision part thaws whole, back to its original types: "
                f"frozen.thaw(model, {use.path!r}), then freeze again what should stay frozen."
            )
