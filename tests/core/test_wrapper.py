"""Frozen(module): white box (S1), constant (S2), inference behaviour (S3), transparency (S5)."""

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import frozen


class TwoInTwoOut(nn.Module):
    """Positional and keyword arguments in, a tuple and a dict out."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x, y, *, scale=1.0, as_dict=False):
        u, v = self.a(x) * scale, self.b(y) + x
        return {"u": u, "v": v} if as_dict else (u, v)


def test_output_equals_the_wrapped_module_and_input_gradients_flow():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(3, 4, requires_grad=True)
    expected = inner(x)
    (gx_plain,) = torch.autograd.grad(expected.sum(), x)

    wrapped = frozen.Frozen(inner)
    out = wrapped(x)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert torch.allclose(x.grad, gx_plain)
    assert all(p.grad is None for p in inner.parameters())


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple-out", "dict-out"])
def test_several_positional_and_keyword_arguments_and_structured_outputs(as_dict):
    torch.manual_seed(0)
    inner = TwoInTwoOut()
    x, y = torch.randn(2, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    out = frozen.Frozen(inner)(x, y, scale=2.0, as_dict=as_dict)
    ref = inner(x, y, scale=2.0, as_dict=as_dict)
    parts = list(out.values()) if as_dict else list(out)
    refs = list(ref.values()) if as_dict else list(ref)
    assert all(torch.equal(p, r) for p, r in zip(parts, refs))
    sum(p.sum() for p in parts).backward()
    assert x.grad is not None and y.grad is not None
    assert all(p.grad is None for p in inner.parameters())


def test_optimizer_step_leaves_frozen_part_bit_identical_and_moves_the_rest():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), frozen.Frozen(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
    after = model.state_dict()
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["1.bias"], before["1.bias"])
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert not torch.equal(after["3.weight"], before["3.weight"])


def batchnorm_model(mode):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.fill_(0.5), bn.running_var.fill_(2.0)
    return nn.Sequential(nn.Linear(4, 4), frozen.Frozen(nn.Sequential(bn, nn.Dropout(0.5)), mode=mode)), bn


def test_eval_behaviour_by_default_survives_model_train():
    model, bn = batchnorm_model("eval")
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    model.train()
    x = torch.randn(8, 4) * 3 + 1
    out = model(x)
    expected = model[1].module.eval()(model[0](x))  # BatchNorm with running stats, Dropout off
    assert torch.equal(out, expected)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    model.train()  # again: still eval inside
    model(x)
    assert torch.equal(bn.running_mean, stats[0])


def test_mode_inherit_follows_the_parent():
    model, bn = batchnorm_model("inherit")
    model.train()
    assert bn.training
    before = bn.running_mean.clone()
    model(torch.randn(8, 4) + 3)
    assert not torch.equal(bn.running_mean, before)
    model.eval()
    assert not bn.training


def test_module_shared_with_a_plain_use_runs_in_eval_only_at_the_frozen_use():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3)
    plain_then_frozen = nn.ModuleDict({"plain": bn, "frozen": frozen.Frozen(bn)})
    plain_then_frozen.train()
    x = torch.randn(6, 3) + 2
    assert bn.training  # the plain use trains it
    before = bn.running_mean.clone()
    y = plain_then_frozen["frozen"](x)
    assert torch.equal(bn.running_mean, before) and bn.training  # frozen use: eval for that call only
    assert torch.allclose(y, (x - before) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    plain_then_frozen["plain"](x)
    assert not torch.equal(bn.running_mean, before)  # plain use: training behaviour


def plain_and_wrapped():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))
    torch.manual_seed(1)
    wrapped = nn.Sequential(nn.Linear(2, 3), frozen.Frozen(nn.BatchNorm1d(3)), nn.Linear(3, 1))
    return plain, wrapped


def test_state_dict_keys_are_those_of_the_plain_model_and_load_both_ways_strictly():
    plain, wrapped = plain_and_wrapped()
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    wrapped.load_state_dict(plain.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), wrapped.state_dict().values()))
    with torch.no_grad():
        wrapped[1].weight.add_(1.0)
    plain.load_state_dict(wrapped.state_dict(), strict=True)
    assert torch.equal(plain[1].weight, wrapped[1].module.weight)


def test_missing_keys_are_reported_without_a_module_segment():
    plain, wrapped = plain_and_wrapped()
    partial = {k: v for k, v in plain.state_dict().items() if k != "1.weight"}
    result = wrapped.load_state_dict(partial, strict=False)
    assert result.missing_keys == ["1.weight"] and result.unexpected_keys == []
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "1.weight"'):
        wrapped.load_state_dict(partial)


def test_a_frozen_model_at_the_top_level_is_transparent_too():
    inner = nn.Linear(2, 2)
    wrapped = frozen.Frozen(inner)
    assert list(wrapped.state_dict()) == ["weight", "bias"]
    wrapped.load_state_dict(nn.Linear(2, 2).state_dict())
    nested = frozen.Frozen(frozen.Frozen(nn.Linear(2, 2)))
    assert list(nested.state_dict()) == ["weight", "bias"]
    nested.load_state_dict(inner.state_dict())
    assert torch.equal(nested.module.module.weight, inner.weight)


def test_attribute_access_unwrap_and_repr():
    inner = nn.Linear(2, 3)
    wrapped = frozen.Frozen(inner)
    assert wrapped.module is inner
    assert wrapped.weight is inner.weight and wrapped.in_features == 2
    new_bias = nn.Parameter(torch.zeros(3))
    wrapped.bias = new_bias  # forwarded: the wrapped module's attribute
    assert inner.bias is new_bias and "bias" not in wrapped._parameters
    assert repr(wrapped) == "Frozen(Linear(in_features=2, out_features=3, bias=True))"
    assert repr(frozen.Frozen(nn.ReLU(), mode="inherit")) == "Frozen(ReLU(), mode='inherit')"
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute


def check_semantics(model):
    """The copy is still frozen in its middle and trainable elsewhere."""
    model.train()
    model(torch.randn(4, 2)).sum().backward()
    assert model[1].module.weight.grad is None
    stats = model[1].module.running_mean.clone()
    model(torch.randn(4, 2))
    assert torch.equal(model[1].module.running_mean, stats)  # still inference behaviour
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("settled", [False, True], ids=["as-built", "settled"])
def test_deepcopy_and_torch_save_keep_the_semantics(settled):
    _, wrapped = plain_and_wrapped()
    if settled:
        frozen.settle(wrapped)
    copied = copy.deepcopy(wrapped)
    assert copied[1].module.weight is not wrapped[1].module.weight
    check_semantics(copied)
    buffer = io.BytesIO()
    torch.save(wrapped, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded[1], frozen.Frozen)
    check_semantics(loaded)
    assert [n for n, _ in frozen.named_trainable(loaded)] == [n for n, _ in frozen.named_trainable(wrapped)]


class RecordsParameterKinds(nn.Module):
    """Records whether its weight was the Parameter itself or a detached alias."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(isinstance(self.linear._parameters["weight"], nn.Parameter))
        return self.linear(x)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_call_the_module_directly(context):
    inner = RecordsParameterKinds()
    wrapped = frozen.Frozen(inner)
    x = torch.randn(1, 2)
    with context():
        out = wrapped(x)
    assert inner.seen == [True]  # no detaching under no_grad: nothing extra
    assert torch.equal(out, inner.linear(x).detach())
    wrapped(x)
    assert inner.seen[-1] is False  # with grad enabled and not settled, it detaches


def test_torch_compile_keeps_the_semantics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), frozen.Frozen(nn.Linear(3, 3)), nn.Linear(3, 1))
    frozen.settle(model)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(4, 3)
    assert torch.allclose(compiled(x), model(x))
    compiled(x).sum().backward()
    assert model[1].module.weight.grad is None and model[0].weight.grad is not None


def test_settle_puts_a_module_used_only_frozen_into_eval_once():
    model, bn = batchnorm_model("eval")
    model.train()
    frozen.settle(model)
    assert not bn.training  # no per-call switching needed any more
    model.train()
    assert not bn.training  # and model.train() does not undo it


def test_hooks_and_torch_internals_set_on_the_wrapper_stay_on_the_wrapper():
    inner = nn.Linear(2, 2)
    wrapped = frozen.Frozen(inner)
    seen = []
    wrapped.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(module))
    x = torch.randn(3, 2, requires_grad=True)
    wrapped(x).sum().backward()
    assert seen == [wrapped]
    assert inner._is_full_backward_hook is None and wrapped._is_full_backward_hook is True


# -- a child attached to a wrapper ---------------------------------------------------------------------------


def test_child_attached_to_a_wrapper_is_owned_or_refused():
    lin = nn.Linear(4, 4)
    w = frozen.Frozen(lin)
    model = nn.Sequential(w, nn.Linear(4, 2))
    try:
        w.adapter = nn.Linear(4, 4)
    except (frozen.FrozenError, TypeError, AttributeError) as error:  # refused clearly
        assert "adapter" in str(error)
        assert list(model.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
        return
    adapter = w.adapter
    keys = [k for k in model.state_dict() if "adapter" in k]
    assert keys, "state_dict must save the attached adapter"
    restored = copy.deepcopy(model)
    restored.load_state_dict(model.state_dict())
    listed = {id(p) for p in frozen.trainable(model)}
    report = frozen.report(model)
    assert any("adapter" in row.path for row in report.rows)
    assert report.total_params == sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        grads = frozen.grad(model(torch.randn(2, 4)).sum(), model)
    assert any("adapter" in k for k in grads)
    assert (id(adapter.weight) in listed) == (grads[next(k for k in grads if "adapter.weight" in k)] is not None)
