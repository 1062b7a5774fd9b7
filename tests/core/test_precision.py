"""Frozen(m, dtype=...): frozen weights in low precision, the boundary in the caller's."""

import copy
import io
from collections import OrderedDict

import pytest
import torch
from snapshots import assert_same, snapshot
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


# -- freeze(..., dtype=...) ----------------------------------------------------------


def cnn():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    return nn.Sequential(OrderedDict(body=body, head=nn.Linear(4 * 6 * 6, 3)))


def test_freeze_with_dtype_stores_the_part_in_low_precision_and_trains_the_rest():
    model = cnn()
    ids = [id(p) for p in model.parameters()]
    full_bytes = sum(t.numel() * t.element_size() for t in model.body.state_dict().values() if t.is_floating_point())
    frozen.freeze(model, "body", dtype=torch.bfloat16)
    assert [id(p) for p in model.parameters()] == ids
    body_state = model.body.state_dict()
    assert all(t.dtype == torch.bfloat16 for t in body_state.values() if t.is_floating_point())
    assert sum(t.numel() * t.element_size() for t in body_state.values() if t.is_floating_point()) * 2 == full_bytes
    assert model.head.weight.dtype == torch.float32

    before = {k: v.clone() for k, v in body_state.items()}
    head_before = model.head.weight.detach().clone()
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.01)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        out = model(torch.randn(5, 1, 8, 8))
        assert out.dtype == torch.float32
        out.square().mean().backward()
        optimizer.step()
    assert all(torch.equal(v, model.body.state_dict()[k]) for k, v in before.items())  # incl. BatchNorm statistics
    assert not torch.equal(head_before, model.head.weight)
    assert all(p.grad is None for p in model.body.parameters())


def test_thaw_restores_types_not_bits():
    model = cnn()
    reference = copy.deepcopy(model)
    frozen.thaw(frozen.freeze(model, "body", dtype=torch.bfloat16))
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert p.dtype == torch.float32 and p.requires_grad
        rounded = q.to(torch.bfloat16).to(torch.float32) if name.startswith("body.") else q
        assert torch.equal(p, rounded), name  # the body keeps the rounding; the head was never cast
    assert not model.body._forward_pre_hooks and not model.body._forward_hooks
    assert list(model.state_dict()) == list(reference.state_dict())


def test_low_precision_part_survives_deepcopy_and_torch_save():
    model = frozen.freeze(cnn(), "body", dtype=torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        out = copied(torch.randn(2, 1, 8, 8))
        assert out.dtype == torch.float32 and copied.body[0].weight.dtype == torch.bfloat16
        frozen.thaw(copied)
        assert copied.body[0].weight.dtype == torch.float32


def test_freeze_dtype_refuses_parts_that_are_not_frozen_whole_and_changes_nothing():
    model = cnn()
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match=r"part 'body' contains '1'.*excluded"):
        frozen.freeze(model, "body", train_norms=True, dtype=torch.bfloat16)
    tied = nn.ModuleDict({"embed": nn.Embedding(5, 4), "out": nn.Linear(4, 5, bias=False)})
    tied["out"].weight = tied["embed"].weight
    with pytest.raises(frozen.FrozenError, match=r"'embed.weight' shares a parameter with 'out.weight'"):
        frozen.freeze(tied, "embed", dtype=torch.bfloat16)
    assert tied["embed"].weight.dtype == torch.float32 and tied["embed"].weight.requires_grad
    assert_same(before, snapshot(model))


def test_a_low_precision_part_thaws_whole():
    model = frozen.freeze(cnn(), "body", dtype=torch.bfloat16)
    with pytest.raises(frozen.FrozenError, match=r"part 'body' is frozen in torch.bfloat16.*thaw\(model, 'body'\)"):
        frozen.thaw(model, "body.0")
    assert frozen.is_frozen(model, "body.0") and model.body[0].weight.dtype == torch.bfloat16
    frozen.freeze(model, "body", dtype=torch.bfloat16)  # again: nothing changes
    assert model.body[0].weight.dtype == torch.bfloat16


def test_freeze_state_records_the_precision_and_load_state_restores_it_exactly():
    model = frozen.freeze(cnn(), "body", dtype=torch.bfloat16)
    saved = frozen.state(model)
    assert [e.get("dtype") for e in saved["frozen"] if e["path"] == "body"] == ["bfloat16"]
    fresh = cnn()
    frozen.load_state(fresh, saved)
    fresh.load_state_dict(model.state_dict())
    assert fresh.body[0].weight.dtype == torch.bfloat16
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))
