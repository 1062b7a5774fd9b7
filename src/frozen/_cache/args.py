"""What a cached part's call may receive, and the names of its forward's parameters.

A key stands for tensors and plain scalars only, and a cached part is a prefix: its inputs
need no gradient. :func:`check_arguments` refuses anything else with the fix;
:func:`forward_parameters` reads the part's ``forward`` once so that ``shared=`` names match
arguments passed by keyword or by position.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._errors import FrozenError

__all__ = ["CacheError", "any_requires_grad", "check_arguments", "forward_parameters", "input_grads_hint"]

_STATIC = (type(None), bool, int, float, str, torch.dtype, torch.device)


class CacheError(FrozenError):
    """A part cannot be cached: not frozen, not batch-separable, or its inputs need gradients."""


def check_arguments(named: list[tuple[int | str, Any]], where: str) -> None:
    """Refuse arguments a key cannot stand for: tensors that require grad, objects other than plain scalars."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise CacheError(
                f"frozen.cache: the part at {where!r} received argument {name!r} that requires grad; a cached part "
                f"must be a frozen prefix (its inputs constant). Cache a part earlier in the model; or, if the part "
                f"also runs on constant inputs (a perceptual loss's feature net on targets), cache it with "
                f"grad_inputs='pass' to run such calls plainly; or stop caching it: frozen.uncache(model, {where!r})."
            )
        if not isinstance(value, (torch.Tensor, *_STATIC)):
            raise CacheError(
                f"frozen.cache: the part at {where!r} received argument {name!r} of type {type(value).__name__}; "
                f"expected tensors and plain scalars only (a cache object, a list of tensors... cannot be keyed). "
                f"Pass such options as None (e.g. use_cache=False), or cache a smaller part."
            )


def forward_parameters(forward: Callable[..., Any]) -> tuple[list[str], set[str] | None]:
    """``forward``'s parameters (the instance left out): those passed by position, in order, and every name.

    A call names a positional argument by its index (``call_keys``); the first list turns
    indices into parameter names. The instance is the first positional parameter of a
    plain function, whatever its name (``def forward(s, x, w)``: dropping a parameter named
    ``self`` instead shifted every position by one, and ``shared=("w",)`` split ``w``). The
    set is ``None`` when any keyword is taken (``**kwargs``, or no signature to read).
    Parameters after ``*args`` have no position.
    """
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return [], None
    if (
        inspect.isfunction(forward)
        and parameters
        and parameters[0].kind
        in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
    ):
        parameters = parameters[1:]  # an unbound method's instance
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return positional, None
    return positional, {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def input_grads_hint(model: nn.Module | None) -> str:
    """How to undo Hugging Face's ``enable_input_require_grads``, when that is why an input requires grad."""
    if model is None or not getattr(model, "_require_grads_hooks", None):
        return ""
    return (
        " Here Hugging Face's gradient checkpointing made the input embeddings' output require grad "
        "(enable_input_require_grads, called by gradient_checkpointing_enable and by the Trainer with "
        "gradient_checkpointing=True). A cached frozen prefix needs no input gradient, and non-reentrant "
        "checkpointing (the default) works without it: call model.disable_input_require_grads() after "
        "checkpointing is enabled (frozen.integrations.hf.FreezeCallback does it for the Trainer)."
    )


def any_requires_grad(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values()))
