"""A model under torch.func as per-sample training and Jacobian code runs it, and the check lean and plain agree.

``transformed(model, x)`` runs ``functional_call`` over every parameter (frozen ones too) and
buffer: per-sample gradients (``vmap`` of ``grad``), and the reverse- and forward-mode
Jacobians (``jacrev``, ``jacfwd``) of the output in the first sample.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["assert_same_under_transforms", "transformed"]


def transformed(model: nn.Module, x: torch.Tensor) -> list[Any]:
    """``[per-sample gradients by name, jacrev at x[:1], jacfwd at x[:1]]`` of ``model`` through ``functional_call``."""
    from torch.func import functional_call, grad, jacfwd, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def run(p: dict, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**p, **buffers}, (inputs,))

    def at_params(inputs: torch.Tensor) -> torch.Tensor:
        return run(params, inputs)

    per_sample = vmap(grad(lambda p, xi: run(p, xi[None]).square().mean()), in_dims=(None, 0))(params, x)
    return [per_sample, jacrev(at_params)(x[:1]), jacfwd(at_params)(x[:1])]


def assert_same_under_transforms(plain: list[Any], lean: list[Any], frozen_prefix: str, tol: dict) -> None:
    """Lean's results equal the plain model's: frozen parameters' gradients exactly zero in both."""
    (plain_grads, *plain_jacobians), (lean_grads, *lean_jacobians) = plain, lean
    for name, value in plain_grads.items():
        if name.startswith(frozen_prefix):
            assert lean_grads[name].abs().sum() == 0 == value.abs().sum(), name  # frozen: exactly zero
        else:
            torch.testing.assert_close(lean_grads[name], value, **tol)
    for got, want in zip(lean_jacobians, plain_jacobians, strict=True):
        torch.testing.assert_close(got, want, **tol)
