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

__all__ = ["check_dtype", "cast_floating", "caller_dtype", "module_float_dtype", "cast_module"]


def check_dtype(dtype: object, argument: str = "dtype") -> torch.dtype | None:
    """Return ``dtype`` if it is ``None`` or a floating ``torch.dtype``, else raise."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(
            f"{argument}={dtype!r}: expected a floating torch.dtype such as torch.bfloat16, "
            f"received {type(dtype).__name__}. Pass the dtype object, e.g. dtype=torch.bfloat16."
        )
    if not dtype.is_floating_point:
        raise FrozenError(
            f"{argument}={dtype}: expected a floating-point dtype (torch.bfloat16, torch.float16, "
            f"torch.float32, ...), received a non-floating one. Frozen weights keep their values "
            f"only approximately in a narrower float; integer types cannot hold them."
        )
    return dtype


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
