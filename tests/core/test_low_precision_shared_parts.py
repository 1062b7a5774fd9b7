"""``freeze(..., dtype=)`` of a module reached under two selected roots, then ``thaw``.

The shared module is cast by the first root; the second must give back the type from
before that cast. After ``thaw`` every tensor is in its original type and the model runs
and trains (before, the shared module stayed bf16 and the next forward failed with
"mat1 and mat2 must have the same dtype").
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen


class TwoRoots(nn.Module):
    """``a`` and ``b`` both hold ``shared`` (a Linear with a BatchNorm-like buffer beside it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        shared = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.a = nn.Sequential(shared, nn.ReLU())
        self.b = nn.Sequential(nn.Linear(4, 4), shared)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) + self.b(x))


def _dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in model.state_dict().items() if v.is_floating_point()}


def _trains(model: nn.Module) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model.train()
    model(torch.randn(8, 4, dtype=next(model.parameters()).dtype)).square().mean().backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())


class TiedRoots(nn.Module):
    """``a`` and ``b`` are different modules holding one weight (tied, as an encoder and a decoder)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x) + self.b(x))


@pytest.mark.parametrize("build", [TwoRoots, TiedRoots], ids=["shared-module", "tied-parameter"])
def test_thaw_gives_every_tensor_its_original_type_back(build):
    model = build()
    original = _dtypes(model)
    frozen.freeze(model, "a", "b", dtype=torch.bfloat16)
    shared = model.b.weight if build is TiedRoots else model.a[0][0].weight
    assert shared.dtype == torch.bfloat16
    assert model.head.weight.dtype == torch.float32 and model(torch.randn(8, 4)).dtype == torch.float32
    frozen.thaw(model)
    assert _dtypes(model) == original
    assert model(torch.randn(8, 4)).dtype == torch.float32
    _trains(model)


def test_a_model_moved_while_frozen_thaws_to_the_moved_type():
    model = TwoRoots()
    frozen.freeze(model, "a", "b", dtype=torch.bfloat16)
    model.double()  # the new type is the one thaw gives back, to both roots
    frozen.thaw(model)
    assert set(_dtypes(model).values()) == {torch.float64}
    _trains(model)


def test_freeze_thaw_freeze_again_records_afresh():
    model = TwoRoots()
    frozen.freeze(model, "a", "b", dtype=torch.bfloat16)
    frozen.thaw(model)
    model.double()
    frozen.freeze(model, "a", "b", dtype=torch.float16)
    frozen.thaw(model)
    assert set(_dtypes(model).values()) == {torch.float64}
    _trains(model)


def test_a_resumed_freeze_state_thaws_to_the_original_types():
    model = TwoRoots()
    frozen.freeze(model, "a", "b", dtype=torch.bfloat16)
    resumed = TwoRoots()
    frozen.load_state(resumed, frozen.state(model))
    assert resumed.b[1][0].weight.dtype == torch.bfloat16
    frozen.thaw(resumed)
    assert _dtypes(resumed) == _dtypes(TwoRoots())
    _trains(resumed)
