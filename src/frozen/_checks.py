"""Argument validation shared by every public function.

Each check returns its argument when it is valid and raises otherwise, with a message
that names the argument, says what was expected and what was received, and gives the
fix. Checks never change anything, so every public function can validate all of its
arguments before it mutates a model (validate, then mutate).
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from ._errors import ArgumentTypeError, FrozenError, InvalidModeError

__all__ = [
    "ModelT",
    "MODES",
    "TIED_POLICIES",
    "WRAPPER_TIED_POLICIES",
    "check_dtype",
    "check_mode",
    "check_model",
    "check_optimizer",
    "check_tied",
    "check_wrapper_tied",
]

# The model a function changes in place and returns: its own type, so ``frozen.freeze(MyNet(), ...)`` stays a MyNet.
ModelT = TypeVar("ModelT", bound=nn.Module)

MODES = ("eval", "inherit")
# tied= says what happens to a parameter a frozen part shares with a part that trains.
# freeze() marks modules, so it can freeze the parameter at every use ("freeze", its
# default). A Frozen wrapper freezes one use by construction: the other uses keep
# training the parameter (S4) whatever tied= says, so its tied= only chooses how settle
# reports that ("warn", its default). "train" (keep training it there, silently) and
# "error" (raise) mean the same in both.
TIED_POLICIES = ("freeze", "train", "error")  # frozen.freeze(tied=), frozen.state entries
WRAPPER_TIED_POLICIES = ("warn", "train", "error")  # frozen.Frozen(tied=)

# Floating types a frozen part may be stored in: the ones every CPU and GPU kernel takes.
# float8 types hold values but most operations refuse them, so they would fail at the
# first forward instead of here.
_STORAGE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_model(model: object, function: str) -> nn.Module:
    """Raise a ``TypeError`` naming ``function`` unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(
            f"{function}(model, ...): expected model to be a torch.nn.Module, received "
            f"{type(model).__module__}.{type(model).__qualname__}. Pass the model itself "
            f"(for a DataParallel/DDP model, pass model.module)."
        )
    return model


def check_mode(mode: object, argument: str = "mode") -> str:
    """Return ``mode`` if it is a valid mode, else raise :class:`frozen.InvalidModeError`."""
    if mode not in MODES:
        raise InvalidModeError(
            f"{argument}={mode!r} is not a mode frozen knows: expected one of {MODES!r}. "
            f"Use mode='eval' (the default: the frozen part keeps inference behaviour, "
            f"BatchNorm uses and keeps its running statistics, Dropout is off) or "
            f"mode='inherit' (the frozen part follows its parent's train()/eval())."
        )
    return str(mode)


def check_tied(tied: object, function: str) -> str:
    """Return ``tied`` if it is a policy of ``frozen.freeze(tied=)``, else raise :class:`frozen.FrozenError`."""
    if tied not in TIED_POLICIES:
        hint = (
            " 'warn' is frozen.Frozen's tied= (the shared parameter keeps training at the other use, with a "
            "warning); for freeze, tied='train' keeps it training there (silently)."
            if tied == "warn"
            else ""
        )
        raise FrozenError(
            f"{function}(..., tied={tied!r}): expected one of {TIED_POLICIES!r}, received {tied!r}. Use "
            f"'freeze' (default: a parameter shared with an unselected part freezes at every use, with a "
            f"TiedParameterWarning), 'train' (the unselected uses keep training it) or 'error'.{hint}"
        )
    return str(tied)


def check_wrapper_tied(tied: object) -> str:
    """Return ``tied`` if it is a policy of ``frozen.Frozen(tied=)``, else raise :class:`frozen.FrozenError`."""
    if tied not in WRAPPER_TIED_POLICIES:
        hint = (
            " A wrapper freezes this one use, so it cannot freeze the parameter at the other uses: to freeze "
            "it everywhere, freeze in place instead, frozen.freeze(model, path) (its tied='freeze'), or wrap "
            "every use."
            if tied == "freeze"
            else ""
        )
        raise FrozenError(
            f"Frozen(module, tied={tied!r}): expected one of {WRAPPER_TIED_POLICIES!r}, received {tied!r}. "
            f"It says what frozen.settle does when this use's parameters still train through another use "
            f"(they keep training there, contract S4): 'warn' (default, TiedParameterWarning), 'train' "
            f"(silently: a deliberate stop-gradient branch) or 'error' (frozen.TiedParameterError).{hint}"
        )
    return str(tied)


def check_dtype(dtype: object, argument: str = "dtype") -> torch.dtype | None:
    """Return ``dtype`` if it is ``None`` or a storage type for frozen weights, else raise."""
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(
            f"{argument}={dtype!r}: expected a floating torch.dtype such as torch.bfloat16, "
            f"received {type(dtype).__name__}. Pass the dtype object, e.g. dtype=torch.bfloat16."
        )
    if dtype not in _STORAGE_DTYPES:
        raise FrozenError(
            f"{argument}={dtype}: expected a floating-point dtype that torch's operations accept "
            f"({', '.join(str(d) for d in _STORAGE_DTYPES)}), received {dtype}. "
            f"Integer and complex types cannot hold the weights, and most operations refuse float8 types; "
            f"use dtype=torch.bfloat16 to halve the frozen weights' memory."
        )
    return dtype


def check_optimizer(optimizer: object, function: str) -> torch.optim.Optimizer:
    """Raise a ``TypeError`` naming ``function`` unless ``optimizer`` is a torch optimizer."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ArgumentTypeError(
            f"{function}(optimizer, model): expected optimizer to be a torch.optim.Optimizer, received "
            f"{type(optimizer).__module__}.{type(optimizer).__qualname__}. Pass the optimizer itself "
            f"(for a Lightning or Accelerate wrapper, its .optimizer)."
        )
    return optimizer
