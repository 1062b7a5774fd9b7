"""Frozen(m, dtype=...): frozen weights in low precision, the boundary in the caller's."""

import pytest
import torch
from torch import nn

import frozen


def backbone():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_weights_are_stored_in_the_given_type_and_the_boundary_keeps_the_callers(dtype):
    reference = backbone()
    inner = backbone()
    weight = inner[0].weight
    model = nn.Sequential(frozen.Frozen(inner, dtype=dtype), nn.Linear(16, 1))
    assert inner[0].weight is weight  # same Parameter object, cast in place
    assert all(p.dtype == dtype for p in inner.parameters())
    full = sum(p.numel() * 4 for p in reference.parameters())
    assert sum(p.numel() * p.element_size() for p in inner.parameters()) * 2 == full  # memory halves
    assert model[1].weight.dtype == torch.float32  # trainable parts untouched

    x = torch.randn(8, 16, requires_grad=True)
    out = model[0](x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference(x), atol=0.1, rtol=0.05)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert all(p.grad is None for p in inner.parameters())
    assert model[1].weight.grad is not None


def test_integer_inputs_get_outputs_in_the_modules_original_type():
    torch.manual_seed(0)
    wrapped = frozen.Frozen(nn.Embedding(10, 4), dtype=torch.bfloat16)
    assert wrapped.original_dtype == torch.float32
    out = wrapped(torch.tensor([[1, 2, 3]]))
    assert out.dtype == torch.float32
    assert "dtype=torch.bfloat16" in repr(wrapped)


def test_optimizer_steps_leave_low_precision_frozen_weights_bit_identical():
    model = nn.Sequential(frozen.Frozen(backbone(), dtype=torch.bfloat16), nn.Linear(16, 1))
    frozen.settle(model)
    before = {k: v.clone() for k, v in model[0].state_dict().items()}
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
    assert all(torch.equal(v, model[0].state_dict()[k]) for k, v in before.items())


def test_bad_dtype_is_rejected_before_anything_changes():
    inner = backbone()
    with pytest.raises(frozen.FrozenError, match=r"dtype=torch.int8: expected a floating-point dtype"):
        frozen.Frozen(inner, dtype=torch.int8)
    with pytest.raises(TypeError, match=r"dtype='bf16'.*torch.bfloat16"):
        frozen.Frozen(inner, dtype="bf16")
    assert all(p.dtype == torch.float32 for p in inner.parameters())
