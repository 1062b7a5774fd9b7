"""Frozen(m, dtype=...): frozen weights in low precision, the boundary in the caller's."""

import copy
import dataclasses
import io
from collections import OrderedDict

import pytest
import torch
from snapshots import assert_same, snapshot
from tiny_models import two_layers
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


# -- dtype changes after freezing ----------------------------------------------------------------------------


# Casting the whole model (.to(dtype), .half(), .float(), .double()) after freeze(..., dtype=) /
# Frozen(m, dtype=) keeps the frozen part's storage dtype (the boundary casts to and from whatever the
# caller uses); thaw restores the part's pre-freeze dtype unless the whole model was cast after
# freezing: then the part takes the model's current dtype.


def _low(kind: str) -> tuple[nn.Module, nn.Module]:
    """A two-layer model whose first layer is stored in bfloat16, the ``kind`` way; and that layer."""
    torch.manual_seed(0)
    if kind == "freeze":
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        frozen.freeze(model, "0", dtype=torch.bfloat16)
        return model, model[0]
    inner = nn.Linear(4, 4)
    return nn.Sequential(frozen.Frozen(inner, dtype=torch.bfloat16), nn.Linear(4, 2)), inner


@pytest.mark.parametrize("kind", ["freeze", "Frozen"])
@pytest.mark.parametrize(
    "cast, dtype",
    [
        (lambda m: m.to(torch.float64), torch.float64),
        (lambda m: m.double(), torch.float64),
        (lambda m: m.half(), torch.float16),
        (lambda m: m.float(), torch.float32),
    ],
    ids=["to(float64)", "double", "half", "float"],
)
def test_casting_the_model_after_low_precision_freezing_keeps_storage_and_forward_works(kind, cast, dtype):
    model, part = _low(kind)
    cast(model)
    assert part.weight.dtype == torch.bfloat16  # the frozen part's storage dtype is kept
    assert model[1].weight.dtype == dtype
    out = model(torch.randn(3, 4, dtype=dtype))
    assert out.dtype == dtype


def test_thaw_after_casting_the_whole_model_gives_the_part_the_models_dtype():
    model, part = _low("freeze")
    model.to(torch.float64)
    frozen.thaw(model)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


def test_thaw_after_to_bfloat16_leaves_no_mixed_dtypes():
    model, _ = _low("freeze")
    model.to(torch.bfloat16)
    frozen.thaw(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_thaw_without_a_cast_restores_the_pre_freeze_dtype():
    model, _ = _low("freeze")
    frozen.thaw(model)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_autocast_cpu_bf16_with_an_fp16_stored_part_gives_no_raw_torch_error():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), nn.Linear(4, 2))
    frozen.freeze(model, "1", dtype=torch.float16)  # the LayerNorm sees autocast's bfloat16 output
    x = torch.randn(3, 4, requires_grad=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    except frozen.FrozenError as error:  # refusing clearly is allowed; a raw torch error is not
        assert "autocast" in str(error)
        return
    out.float().sum().backward()
    assert x.grad is not None and model[0].weight.grad is not None and model[1][0].weight.grad is None


def test_freeze_with_dtype_of_a_module_reached_twice_then_thaw_restores_float32_without_hooks():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared, nn.Linear(4, 2))
    frozen.freeze(model, "0", "1", dtype=torch.bfloat16)
    assert shared.weight.dtype == torch.bfloat16
    assert model(torch.randn(3, 4)).dtype == torch.float32
    frozen.thaw(model)
    assert shared.weight.dtype == torch.float32 and shared.bias.dtype == torch.float32
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@dataclasses.dataclass
class _Out:
    value: torch.Tensor
    extra: torch.Tensor


class _DataclassPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> _Out:
        y = self.lin(x)
        return _Out(y, y.sum(-1))


class _UsesDataclass(nn.Module):
    def __init__(self, part: nn.Module) -> None:
        super().__init__()
        self.part = part

    def forward(self, x: torch.Tensor) -> _Out:
        return self.part(x)


@pytest.mark.parametrize("kind", ["freeze", "Frozen"])
def test_low_precision_part_returning_a_dataclass_returns_caller_precision(kind):
    if kind == "freeze":
        model = frozen.freeze(_UsesDataclass(_DataclassPart()), "part", dtype=torch.bfloat16)
    else:
        model = _UsesDataclass(frozen.Frozen(_DataclassPart(), dtype=torch.bfloat16))
    out = model(torch.randn(3, 4))
    assert isinstance(out, _Out)
    assert out.value.dtype == torch.float32 and out.extra.dtype == torch.float32


def test_freeze_with_a_float8_dtype_is_refused_at_the_call():
    model = two_layers()
    before = snapshot(model)
    with pytest.raises(frozen.FrozenError, match="dtype"):
        frozen.freeze(model, "0", dtype=torch.float8_e4m3fn)
    assert_same(before, snapshot(model))


def test_fp16_part_under_bf16_autocast_is_finite_or_refused_naming_both():
    torch.manual_seed(0)
    part = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model = nn.Sequential(nn.Linear(4, 4), frozen.Frozen(part, dtype=torch.float16), nn.Linear(4, 2))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(3, 4))
    except frozen.FrozenError as error:
        assert "autocast" in str(error) and "float16" in str(error)
        return
    assert torch.isfinite(out.float()).all()


def test_freeze_with_dtype_of_a_part_whose_root_has_no_forward_never_gives_a_raw_dtype_error():
    # A ModuleList is never called itself: boundary casts hung on it would never run.
    torch.manual_seed(0)

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    model = nn.Sequential(nn.Linear(4, 4), Chain())
    before = snapshot(model)
    try:
        frozen.freeze(model, "1.layers", dtype=torch.bfloat16)
    except frozen.FrozenError as error:  # refusing clearly, naming the part, is allowed
        assert "1.layers" in str(error)
        assert_same(before, snapshot(model))
        return
    x = torch.randn(3, 4, requires_grad=True)
    out = model(x)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x.grad is not None and model[1].layers[0].weight.grad is None
