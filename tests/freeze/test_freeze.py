"""freeze / thaw in place (S6), BatchNorm policy (S3), tied parameters (S9)."""

import copy
import io
import sys
import threading

import pytest
import torch
from snapshots import assert_same, snapshot
from tiny_models import two_layers
from torch import nn

import frozen


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU()),
        nn.Sequential(nn.Linear(8, 8), nn.ReLU()),
        nn.Linear(8, 2),
    )


def train_steps(model: nn.Module, steps: int = 3, params=None) -> None:
    opt = torch.optim.AdamW(params if params is not None else frozen.trainable(model), lr=0.1, weight_decay=0.1)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()


def test_freeze_keeps_frozen_part_constant_and_trains_the_rest():
    net = make_net()
    before = copy.deepcopy(net.state_dict())
    assert frozen.freeze(net, "0") is net
    assert [n for n, _ in frozen.named_trainable(net)] == ["1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    assert not any(p.requires_grad for p in net[0].parameters())
    train_steps(net, params=net.parameters())  # an optimizer holding every parameter, as users often do
    after = net.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]) == key.startswith("0."), key  # BN stats included
    assert all(p.grad is None for p in net[0].parameters())
    assert frozen.is_frozen(net, "0") and frozen.is_frozen(net, "0.1") and not frozen.is_frozen(net, "1")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())  # settled: plain calls


def test_freeze_before_lazy_parameters_materialise():
    net = frozen.freeze(nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1)), "0")
    net(torch.randn(2, 5))
    assert not net[0].weight.requires_grad and frozen.trainable(net) == [net[1].weight, net[1].bias]


def test_eval_mode_survives_train_and_inherit_follows():
    net = frozen.freeze(make_net(), "0")
    net.train()
    assert [m.training for m in net[0]] == [False] * 4 and net.training and net[1].training
    x = torch.randn(16, 4)
    assert torch.equal(net[0](x), net[0](x))  # Dropout off, BatchNorm uses running stats
    net2 = frozen.freeze(make_net(), "0", mode="inherit")
    net2.train()
    assert net2[0][1].training
    mean = net2[0][1].running_mean.clone()
    net2(x)
    assert not torch.equal(mean, net2[0][1].running_mean)  # inherit: statistics follow the parent


def test_train_norms_keeps_batchnorm_training_inside_a_frozen_part():
    net = frozen.freeze(make_net(), "0", train_norms=True)
    assert [n for n, _ in frozen.named_trainable(net)][:2] == ["0.1.weight", "0.1.bias"]
    mean, weight = net[0][1].running_mean.clone(), net[0][0].weight.clone()
    train_steps(net)
    assert net[0][1].training and not net[0].training and not net[0][2].training
    assert not torch.equal(mean, net[0][1].running_mean) and torch.equal(weight, net[0][0].weight)


def test_thaw_round_trip_is_exact_and_keeps_user_flags():
    net = make_net()
    net[2].bias.requires_grad_(False)  # frozen by hand: stays frozen
    net.train()
    before = snapshot(net)
    frozen.thaw(frozen.freeze(net, ""))
    assert_same(before, snapshot(net))
    assert not net[2].bias.requires_grad


def test_thaw_gives_the_mode_last_asked_for():
    net = make_net().train()
    frozen.freeze(net, "0")
    net.eval()
    frozen.thaw(net)
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_freeze_twice_is_idempotent_and_mode_conflict_raises_unchanged():
    net = make_net().train()
    before = snapshot(net)
    frozen.freeze(net, "0")
    once = snapshot(net)
    frozen.freeze(net, "0.0-1")
    assert_same(once, snapshot(net))
    with pytest.raises(
        frozen.FrozenError, match=r"'0' is already frozen in place with mode='eval'.*frozen.thaw\(model, '0'\)"
    ):
        frozen.freeze(net, "0", "2", mode="inherit")
    assert_same(once, snapshot(net))
    frozen.thaw(net)
    assert_same(before, snapshot(net))


def test_thaw_part_of_a_frozen_part_and_what_was_never_frozen():
    net = frozen.freeze(make_net(), "0-1")
    frozen.thaw(net, "1.0")
    assert [n for n, _ in frozen.named_trainable(net)] == ["1.0.weight", "1.0.bias", "2.weight", "2.bias"]
    assert frozen.is_frozen(net, "1") and not frozen.is_frozen(net, "1.0")
    state = snapshot(net)
    frozen.thaw(net, "2")  # never frozen: nothing happens
    assert_same(state, snapshot(net))


def test_module_added_to_a_frozen_part_later_trains():
    net = frozen.freeze(make_net(), "0")
    net[0].adapter = nn.Linear(8, 8)
    assert "0.adapter.weight" in [n for n, _ in frozen.named_trainable(net)]


def test_thaw_of_a_frozen_wrapper_raises_unchanged():
    net = frozen.settle(nn.Sequential(frozen.Frozen(nn.Linear(2, 2)), nn.Linear(2, 2)))
    before = snapshot(net)
    with pytest.raises(frozen.FrozenError, match=r"'0' is frozen by a frozen.Frozen wrapper.*\.module"):
        frozen.thaw(net, "0")
    assert_same(before, snapshot(net))
    frozen.thaw(net)  # nothing frozen in place: fine
    assert_same(before, snapshot(net))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda n: frozen.freeze(n, "0", "nope"), frozen.SelectorError, "'nope' matches no module"),
        (lambda n: frozen.freeze(n, "0", mode="train"), frozen.InvalidModeError, "mode='train'"),
        (lambda n: frozen.freeze(n, "0", tied="share"), frozen.FrozenError, "tied='share'"),
        (lambda n: frozen.freeze(n, "0", exclude=5), TypeError, "exclude="),
        (lambda n: frozen.thaw(n, "1", "nope"), frozen.SelectorError, "'nope' matches no module"),
    ],
    ids=["pattern", "mode", "tied", "exclude-type", "thaw-pattern"],
)
def test_failing_calls_leave_the_model_unchanged(call, error, match):
    net = frozen.freeze(make_net(), "1")
    before = snapshot(net)
    with pytest.raises(error, match=match):
        call(net)
    assert_same(before, snapshot(net))


def tied_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Tanh(), nn.Linear(3, 3, bias=False))
    net[2].weight = net[0].weight
    return net


def test_tied_freeze_warns_once_and_freezes_everywhere():
    net = tied_net()
    with pytest.warns(frozen.TiedParameterWarning, match=r"'0.weight' and '2.weight'") as caught:
        frozen.freeze(net, "0")
    assert len(caught) == 1
    assert frozen.trainable(net) == [] and not net[0].weight.requires_grad
    x = torch.randn(2, 3, requires_grad=True)
    net(x).sum().backward()  # a white box: the input still gets its gradient
    assert x.grad is not None and net[0].weight.grad is None
    frozen.thaw(net)
    assert (
        frozen.trainable(net) == [net[0].weight]
        and net[0].weight.requires_grad
        and "_frozen" not in net[2].__dict__  # no record left where the tied slot was frozen
    )


def test_tied_train_is_a_white_box_at_the_frozen_use():
    net = tied_net()
    before = snapshot(net)
    frozen.freeze(net, "0", tied="train")
    # The white box at the frozen use: a stand-in for net[0].forward detaches the tied weight per call.
    assert "forward" in net[0].__dict__ and "forward" not in net[2].__dict__
    assert frozen.trainable(net) == [net[0].weight]
    x = torch.randn(2, 3)
    net(x).square().sum().backward()
    w = net[0].weight.detach()
    reference = w.clone().requires_grad_()
    (torch.tanh(x @ w.T) @ reference.T).square().sum().backward()  # gradient through use "2" only
    torch.testing.assert_close(net[0].weight.grad, reference.grad)
    for clone in (copy.deepcopy(net), reload(net)):
        clone.zero_grad()
        clone(x).square().sum().backward()
        torch.testing.assert_close(clone[0].weight.grad, reference.grad)
    assert_same(before, snapshot(frozen.thaw(net)))


def reload(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_tied_error_raises_naming_both_paths_unchanged():
    net = tied_net()
    before = snapshot(net)
    with pytest.raises(frozen.TiedParameterError, match=r"'0.weight' and '2.weight'.*tied='freeze'"):
        frozen.freeze(net, "0", tied="error")
    assert_same(before, snapshot(net))
    frozen.freeze(net, "0", "2", tied="error")  # both selected: nothing shared with the rest
    assert frozen.trainable(net) == []


def test_shared_module_object_at_two_paths():
    shared = nn.Linear(2, 2)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    before = snapshot(net)
    with pytest.raises(frozen.TiedParameterError, match=r"'0' and '2'.*frozen.Frozen\(child\)"):
        frozen.freeze(net, "0", tied="train")
    assert_same(before, snapshot(net))
    with pytest.warns(frozen.TiedParameterWarning, match="'0' and '2'"):
        frozen.freeze(net, "0")
    assert frozen.trainable(net) == [] and frozen.is_frozen(net, "2")


def test_frozen_model_survives_deepcopy_and_save():
    net = frozen.freeze(make_net(), "0")
    for clone in (copy.deepcopy(net), reload(net)):
        clone.train()
        assert not clone[0].training and clone[1].training
        assert [n for n, _ in frozen.named_trainable(clone)] == [n for n, _ in frozen.named_trainable(net)]
        frozen.thaw(clone)
        assert clone[0].training and "train" not in clone[0].__dict__


# -- threads, inference mode, cycles -------------------------------------------------------------------------


def test_concurrent_freeze_thaw_on_disjoint_parts_never_loses_a_record():
    # A race test: unguarded bookkeeping loses a record in about 1 trial in 20, so a regression may pass a run.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(20):
            model = nn.Sequential(*[nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)) for _ in range(6)])
            errors: list[BaseException] = []

            def churn(target: str, model: nn.Module = model, errors: list = errors) -> None:
                try:
                    for _ in range(30):
                        frozen.freeze(model, target)
                        frozen.thaw(model, target)
                except BaseException as error:  # noqa: B036 - reported below
                    errors.append(error)

            threads = [threading.Thread(target=churn, args=(t,)) for t in ("0-2", "3-5")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(isinstance(e, frozen.FrozenError) for e in errors), errors  # detected, not corrupted
            frozen.thaw(model)
            assert all(p.requires_grad for p in model.parameters())
            assert len(frozen.trainable(model)) == 24
    finally:
        sys.setswitchinterval(interval)


def test_a_model_built_under_inference_mode_is_refused_unchanged():
    with torch.inference_mode():
        model = two_layers()
    before = snapshot(model)
    try:
        frozen.freeze(model, "0")
    except frozen.FrozenError as error:  # refusing at freeze is allowed
        assert "inference" in str(error)
        assert_same(before, snapshot(model))
        return
    frozen_state = snapshot(model)
    with pytest.raises(frozen.FrozenError, match="inference"):
        frozen.thaw(model)
    assert_same(frozen_state, snapshot(model))  # not half-modified


def test_a_cyclic_module_graph_is_refused():
    a = nn.Sequential(nn.Linear(2, 2))
    b = nn.Sequential(a)
    a.add_module("back", b)  # a -> b -> a
    with pytest.raises(frozen.FrozenError, match="cycl"):
        frozen.freeze(a)
    with pytest.raises(frozen.FrozenError, match="cycl"):
        frozen.trainable(a)
