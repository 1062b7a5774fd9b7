"""A lean frozen eval-mode BatchNorm that is not folded: a per-channel affine map saving only its scale.

In eval mode with running statistics, ``batch_norm(x) == x * s + t`` per channel, with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. Frozen, its backward needs the
input gradient only, ``grad * s``; yet ``F.batch_norm`` (``native_batch_norm``) saves its
input -- the convolution's output, which nothing else keeps -- for backward. Where the norm
cannot be folded into the convolution before it (a custom ``forward`` calls them, as in
transformers' and torchvision's ResNets), :class:`LeanBatchNorm` computes it as
:class:`InputGradAffine`, which saves ``s`` alone (one value per channel).

``s`` and ``t`` are worked out in float64 from the norm's tensors and cast to the input's
type (BatchNorm returns its input's type, under autocast too), so the output equals eval
BatchNorm's to float rounding: ~1e-7 relative in float32, one rounding of ``s`` and ``t``
more (~1e-3 relative) in half precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._functorch.utils import unwrap_dead_wrappers

from .._cache import observed_globally, watch_steps
from .._core import GuardedForward, ModuleRef, StandIn, TensorState
from ..distributed import sharded_sources, watch_loads
from .fold import foldable, kept_by_producer, state_of

__all__ = ["NORMS", "InputGradAffine", "InputGradAffineJvp", "LeanBatchNorm"]

# Exact types: a subclass may compute something else in its own forward.
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def scale_shift(norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` of the eval-mode BatchNorm ``norm`` in float64: ``norm(x) == x * s + t`` per channel."""
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        shift = -norm.running_mean.double() * scale
        if norm.affine:
            scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
    return scale, shift


class InputGradAffine(torch.autograd.Function):
    """``x * scale + shift`` per channel whose backward gives the input gradient only, saving ``scale``.

    ``scale`` and ``shift`` are constants shaped to broadcast over ``x``'s channel dimension.
    The ``forward`` / ``setup_context`` form with a generated vmap rule lets ``torch.func``
    transforms run through it; :class:`InputGradAffineJvp` adds forward mode.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """``Function.apply`` without its per-call signature binding outside transforms (as ``InputGradConv``)."""
        if kwargs or len(args) != 3 or torch._C._are_functorch_transforms_active():
            return super().apply(*args, **kwargs)
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))  # type: ignore[misc]

    @staticmethod
    def forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(shift, x, scale)  # one kernel: shift + x * scale

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _, scale, _ = inputs
        ctx.save_for_backward(scale)
        ctx.save_for_forward(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None, None


class InputGradAffineJvp(InputGradAffine):
    """:class:`InputGradAffine` with a ``jvp`` (forward-mode AD); dynamo cannot trace it, so eager only."""

    @staticmethod
    def jvp(ctx: Any, x_tangent: torch.Tensor | None, *_constant_tangents: Any) -> torch.Tensor | None:
        if x_tangent is None:
            return None
        (scale,) = ctx.saved_tensors
        return x_tangent * scale


class LeanBatchNorm(StandIn):
    """The ``forward`` of a frozen BatchNorm that no convolution folds: :class:`InputGradAffine` while it may.

    Its plain forward runs instead whenever the lean one could differ or gains nothing: the
    norm trains or is in train mode (``foldable``), a forward hook could see it (as for a
    folding convolution), under ``inference_mode``, when no gradient is taken through ``x``
    (nothing is saved then), or when ``x``'s producer keeps ``x`` anyway (no bytes to save).
    Eagerly, the decision and ``(s, t)`` are worked out once per :class:`TensorState` of the
    norm (a load or a fused step forgets them); compiled, they are traced from the live tensors.
    """

    attr, layer = "forward", "lean"

    def __init__(self, norm: nn.Module, root: nn.Module | None = None, path: str = "") -> None:
        super().__init__(norm)  # weakly: this lives in the norm's __dict__
        self.root, self.path = ModuleRef(root), path
        self.state: TensorState | None = None
        self.plain = True
        self.affine: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}  # (s, t) per input type
        self.load_hooks: list[Any] | None = self.watch()

    def watch(self) -> list[Any]:
        """Forget ``(s, t)`` after a ``load_state_dict`` of the norm or a fused step on it; return the load hooks."""
        watch_steps(list(self.module.parameters()), self.forget)
        return watch_loads([self.module], self.forget)

    def __getstate__(self) -> dict[str, Any]:
        # A copy works out its own (s, t) and watches its own norm's loads at its first call.
        state = dict(self.__dict__)
        state.update(root=ModuleRef(None), state=None, affine={}, load_hooks=None)
        return state

    def forget(self) -> None:
        """Work ``(s, t)`` out again at the next call."""
        self.state = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        guard = self.previous
        if isinstance(guard, GuardedForward):  # frozen's guard behind this: its slots still detach
            return guard.around(self.run, x)
        return self.run(x)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's output for ``x``: lean where allowed, else the norm's own forward."""
        norm = self.module
        if torch.compiler.is_compiling():
            if _plain(norm) or not (x.requires_grad and torch.is_grad_enabled()):
                return type(norm).forward(norm, x)
            norm._check_input_dim(x)
            scale, shift = (t.to(x.dtype) for t in scale_shift(norm))
            return _apply(InputGradAffine, x, scale, shift)  # dynamo cannot trace a custom jvp
        if torch.is_inference_mode_enabled() or not (x.requires_grad and torch.is_grad_enabled()):
            return type(norm).forward(norm, x)
        if self.load_hooks is None:  # a copy, at its first call
            self.load_hooks = self.watch()
        tensors, flags = state_of(norm)
        shards = sharded_sources(self.root(), self.path, [norm])
        tensors += shards if shards is not None else []
        flags += _watchers(norm)
        if shards is None or self.state is None or not self.state.matches(tensors, flags):
            self.plain, self.affine = _plain(norm), {}
            self.state = TensorState(tensors, flags)
            watch_steps([t for t in tensors if isinstance(t, nn.Parameter)], self.forget)  # replaced ones too
        if self.plain or kept_by_producer(x):
            return type(norm).forward(norm, x)
        norm._check_input_dim(x)
        affine = self.affine.get(x.dtype)
        if affine is None:
            scale, shift = scale_shift(norm)
            affine = self.affine[x.dtype] = (scale.to(x.dtype), shift.to(x.dtype))
        return _apply(InputGradAffineJvp, x, *affine)


def _apply(function: type[InputGradAffine], x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> Any:
    shape = (-1,) + (1,) * (x.dim() - 2)  # the channel dimension is x's second
    return function.apply(x, scale.reshape(shape), shift.reshape(shape))


def _plain(norm: Any) -> bool:
    """Whether the norm must run as itself: not a frozen eval-mode norm, or a forward hook could see it."""
    return not foldable(norm) or any(_watchers(norm))


def _watchers(norm: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Ids of the hooks that see the norm's call (its own forward hooks and pre-hooks, the global ones)."""
    return tuple(norm._forward_hooks), tuple(norm._forward_pre_hooks), observed_globally()
