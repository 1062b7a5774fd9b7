"""Folding an eval-mode BatchNorm into the convolution before it, and the lean convolution.

In inference behaviour ``bn(conv(x)) == conv'(x)`` with ``w' = w * s``, ``b' = (b - mean) * s + beta``
and ``s = gamma / sqrt(var + eps)`` per output channel: one convolution instead of a
convolution and a normalisation, and nothing saved for the normalisation's backward.
The folded weights are computed in float64, cast to the weight's type, and recomputed
whenever either module's tensors or flags change (``load_state_dict``, ``.to()``, thaw; see
``_tensor_state.py``).

:class:`InputGradConv` is a convolution whose backward computes the input gradient
only, so it saves the weight and the input's *shape*, not the input itself (torch's
own convolution saves the input even when the weight needs no gradient; ``Linear``
already does not, so it needs nothing from us).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch._functorch.utils import unwrap_dead_wrappers

from .._core import own_tensors

__all__ = ["InputGradConv", "InputGradConvJvp", "autocast_operands", "fold", "foldable", "kept_by_producer", "state_of"]


def state_of(*modules: nn.Module) -> tuple[list[torch.Tensor], tuple]:
    """The leaf modules' own parameters and buffers, and the flags folding reads (see :class:`TensorState`)."""
    # The modules are leaves (a convolution, a BatchNorm): their own dicts, no recursive walk per call.
    return own_tensors(modules), tuple((m.training, getattr(m, "eps", None)) for m in modules)


# Autograd nodes whose backward keeps the op's output itself (torch's derivatives.yaml: ``result``).
_KEEP_RESULT = frozenset({"ReluBackward0", "SigmoidBackward0", "TanhBackward0", "ExpBackward0"})


def kept_by_producer(x: torch.Tensor) -> bool:
    """Whether the op that produced ``x`` keeps ``x`` itself for its backward (ReLU, tanh, sigmoid, exp).

    A convolution saving such an input adds no bytes (the storage is kept anyway), so torch's
    own convolution, with no Python autograd function around it, is then the cheaper choice.
    The node's type decides, not its saved tensor: reading ``_saved_result`` would unpack it
    through any active ``saved_tensors_hooks`` -- inside non-reentrant checkpointing that made
    the recomputed forward differ from the first and raised ``CheckpointError``.
    """
    return x.grad_fn is not None and type(x.grad_fn).__name__ in _KEEP_RESULT


def foldable(norm: nn.Module) -> bool:
    """Whether ``norm`` normalises with fixed statistics now (eval mode, running statistics, frozen)."""
    return (
        isinstance(norm, nn.modules.batchnorm._BatchNorm)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
        and not any(p.requires_grad for p in norm.parameters())
    )


def fold(conv: Any, norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight, bias)`` of the convolution ``conv`` followed by the eval-mode BatchNorm ``norm``."""
    with torch.no_grad():
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
        assert norm.running_mean is not None and norm.running_var is not None
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        shift = -norm.running_mean.double() * scale
        if norm.affine:
            scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        folded_weight = (weight * scale.reshape(shape)).to(conv.weight.dtype)
        folded_bias = (bias * scale + shift).to(conv.weight.dtype)
    return folded_weight, folded_bias


def autocast_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The convolution's operands as autocast would give them to ``conv2d`` (all in its lower precision).

    :class:`InputGradConv` calls ``aten.convolution``, which autocast does not cover: under
    ``torch.autocast`` a half-precision activation met a float32 weight and the call raised.
    Casting here, outside the autograd function, lets autograd cast the input gradient back.
    """
    kind = x.device.type
    if not torch.is_autocast_enabled(kind) or not x.is_floating_point():
        return x, weight, bias
    dtype = torch.get_autocast_dtype(kind)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


class InputGradConv(torch.autograd.Function):
    """``aten.convolution`` whose backward gives the input gradient only (weight and bias are constants).

    Written in the ``forward`` / ``setup_context`` form with a generated vmap rule so that
    ``torch.func`` transforms (``vmap`` of ``grad`` for per-sample gradients, ``jacrev``)
    run through it, as through torch's own; :class:`InputGradConvJvp` adds forward mode.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """``Function.apply`` without its per-call ``inspect.signature`` binding, outside transforms.

        A ``Function`` with ``setup_context`` binds its arguments to ``forward``'s signature
        at every call to fill in defaults: ~40 us, as much as a small convolution (it made a
        lean VGG-style net slower than the plain one). The lean convolution always passes
        all seven arguments by position, which that binding returns unchanged, so outside
        ``torch.func`` transforms this goes straight to the autograd call, after the same
        unwrapping of dead ``torch.func`` wrappers; inside them, torch's own path.
        """
        if kwargs or len(args) != 7 or torch._C._are_functorch_transforms_active():
            return super().apply(*args, **kwargs)
        return super(torch.autograd.Function, cls).apply(*unwrap_dead_wrappers(args))  # type: ignore[misc]

    @staticmethod
    def forward(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: list[int],
        padding: list[int],
        dilation: list[int],
        groups: int,
    ) -> torch.Tensor:
        zeros = [0] * len(stride)
        return torch.convolution(x, weight, bias, stride, padding, dilation, False, zeros, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, weight, _, stride, padding, dilation, groups = inputs
        ctx.save_for_backward(weight)
        ctx.save_for_forward(weight)
        ctx.shape, ctx.config = x.shape, (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.config
        # The input gradient of a convolution is the transposed convolution with the same weight.
        # Measured faster than aten.convolution_backward given a stand-in input of the right shape
        # (an expanded one-element tensor: ~15 % slower per call on CPU, it takes a slower path).
        # output_padding restores the input rows a strided convolution's last window skipped.
        kernel = weight.shape[2:]
        output_padding = [
            size - ((out - 1) * s - 2 * p + d * (k - 1) + 1)
            for size, out, s, p, d, k in zip(
                ctx.shape[2:], grad.shape[2:], stride, padding, dilation, kernel, strict=True
            )
        ]
        grad_input = torch.convolution(grad, weight, None, stride, padding, dilation, True, output_padding, groups)
        return grad_input, None, None, None, None, None, None


class InputGradConvJvp(InputGradConv):
    """:class:`InputGradConv` with a ``jvp``: forward-mode AD (``torch.func.jvp``/``jacfwd``, ``forward_ad``).

    Kept apart because dynamo cannot trace a custom ``jvp`` (a graph break per call):
    compiled code uses :class:`InputGradConv`, eager code this one.
    """

    @staticmethod
    def jvp(ctx: Any, x_tangent: torch.Tensor | None, *_constant_tangents: Any) -> torch.Tensor | None:
        # Linear in x with constant weights: the tangent is the same convolution, without the bias.
        if x_tangent is None:  # no tangent for x: none for the output
            return None
        (weight,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.config
        zeros = [0] * len(stride)
        return torch.convolution(x_tangent, weight, None, stride, padding, dilation, False, zeros, groups)
