"""A fused optimizer step is seen: fused kernels write parameters without bumping their version.

``torch.optim.SGD(..., fused=True)`` (and Adam's) updates a parameter in place without moving
its ``_version``: a cached part kept answering with the old weights' outputs, and a lean
middle with its old folded weights, although ``docs/cache.md`` promises in-place updates are
seen. A global optimizer step hook now tells both.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen


def _fused_step(parameter: nn.Parameter, optimizer: str) -> None:
    """What a fused step does to a frozen parameter it was handed with a gradient."""
    parameter.grad = torch.ones_like(parameter)
    kind = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    step = kind([parameter], lr=0.1, fused=True)
    version = parameter._version
    step.step()
    assert parameter._version == version  # the write no version counter shows
    parameter.grad = None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_fused_step_on_a_cached_parts_parameter_drops_its_entries(optimizer: str) -> None:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 4)), nn.Linear(4, 1)), "0")
    handle = frozen.cache(model, "0")
    x = torch.randn(6, 4)
    model(x)
    _fused_step(model[0][0].weight, optimizer)
    torch.testing.assert_close(model[0](x), nn.functional.linear(x, model[0][0].weight, model[0][0].bias))
    assert handle.stats()["0"]["invalidations"] == 1


def test_a_fused_step_on_a_folded_norm_refolds_the_lean_convolution() -> None:
    torch.manual_seed(0)
    middle = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    model = frozen.lean(frozen.freeze(nn.Sequential(nn.Conv2d(3, 3, 1), middle), "1"), "1")
    x = torch.randn(2, 3, 6, 6)
    model(x)
    _fused_step(model[1][1].weight, "sgd")
    conv, norm = model[1][0], model[1][1]
    with torch.no_grad():
        want = torch.relu(nn.BatchNorm2d.forward(norm, nn.Conv2d.forward(conv, model[0](x))))
    torch.testing.assert_close(model(x), want)
