"""A lean middle never changes what a module returned to a caller that keeps it.

Lean ran the ReLU after a lean convolution in place and handed the norm after it the folded
output, assuming the parent ``nn.Sequential``'s own forward made the calls. A loop over
``vgg.features``' children that keeps pre-activation taps (ESRGAN-style perceptual features)
then read ReLU(conv) -- and, with BatchNorm folded, BatchNorm's output -- instead of the
convolution's output. Now both happen only inside the parent's own forward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import frozen

TOL = {"rtol": 1e-5, "atol": 1e-6}  # folding changes the last bits (docs/cache.md)


def _features(norms: bool) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for cin, cout in ((3, 8), (8, 8), (8, 8)):
        layers.append(nn.Conv2d(cin, cout, 3, padding=1))
        if norms:
            norm = nn.BatchNorm2d(cout)
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            layers.append(norm)
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _taps(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Every child's output, kept, the way a perceptual loss collects pre-activation features."""
    taps = []
    for layer in features:
        x = layer(x)
        taps.append(x)
    return taps


def test_taps_kept_from_a_loop_over_a_lean_middles_children_are_the_modules_own_outputs() -> None:
    for norms in (False, True):
        plain = frozen.freeze(_features(norms), "")
        lean = frozen.lean(frozen.freeze(copy.deepcopy(_features(norms)), ""))
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        got, want = _taps(lean, x), _taps(plain, x)
        for index, (tap, expected) in enumerate(zip(got, want, strict=True)):
            torch.testing.assert_close(tap, expected, **TOL, msg=f"child {index} (norms={norms})")
        grads = [torch.autograd.grad(sum(t.sum() for t in taps), x)[0] for taps in (got, want)]
        torch.testing.assert_close(grads[0], grads[1], **TOL)
        # Called by the Sequential itself, the shortcuts still apply: folded, and the ReLU in place (the
        # convolution's output is then the ReLU's, kept by the next convolution; else nothing keeps it).
        out = lean(x)
        torch.testing.assert_close(out, plain(x), **TOL)
        stand_in = lean[0].__dict__["forward"]
        produced = stand_in.produced[0]()
        assert produced is not None and bool((produced >= 0).all())
        assert stand_in.folding is norms
