"""Train/eval behaviour of frozen uses (S3) where a module is reached by several uses, across freeze/thaw/settle."""

import torch
from torch import nn

import frozen


def _modes(model: nn.Module) -> list[tuple[str, bool]]:
    return [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)]


def test_modes_after_thaw_with_a_frozen_wrapper_inside_a_part_frozen_in_place():
    model = nn.Sequential(frozen.Frozen(nn.Sequential(nn.Linear(4, 4), nn.Dropout())), nn.Linear(4, 2))
    before = _modes(model)  # '0.module' is in training mode: nothing settled it yet
    frozen.freeze(model, "0")
    frozen.thaw(model)
    assert _modes(model) == before


def test_frozen_eval_runs_a_descendant_batchnorm_in_eval_even_if_it_is_used_plainly_and_in_train():
    bn = nn.BatchNorm1d(4)
    backbone = nn.Sequential(nn.Linear(4, 4), bn).eval()  # the wrapped root is in eval, its BatchNorm is not
    model = nn.ModuleDict({"frozen": frozen.Frozen(backbone), "plain": bn})
    model.train()
    assert bn.training and not backbone.training
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.randn(8, 4)
    out = model["frozen"](x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    with torch.no_grad():
        reference = nn.functional.batch_norm(backbone[0](x), mean, var, bn.weight, bn.bias, training=False)
    assert torch.allclose(out, reference)


def test_freeze_thaw_keeps_a_module_used_in_a_wrapper_and_plainly_in_train_mode():
    drop = nn.Dropout(0.5)
    model = nn.Sequential(frozen.Frozen(nn.Sequential(nn.Linear(4, 4), drop)), drop).train()
    frozen.freeze(model, "")
    frozen.thaw(model)
    assert drop.training  # the plain use follows the model, which is in training mode
    out = model[1](torch.ones(64, 4))
    assert (out == 0).any()  # dropout is active at the plain use


def test_thaw_with_nothing_frozen_does_not_switch_a_module_shared_by_an_eval_and_an_inherit_wrapper():
    drop = nn.Dropout(0.5)
    model = nn.Sequential(frozen.Frozen(drop, mode="eval"), frozen.Frozen(drop, mode="inherit")).train()
    before = _modes(model)
    frozen.thaw(model)
    assert _modes(model) == before
    assert (model[1](torch.ones(64, 4)) == 0).any()  # the inherit use follows the model: training


class _WatchedDropout(nn.Dropout):
    """Counts every change of its ``training`` flag."""

    flips = 0

    def __setattr__(self, name, value):
        if name == "training" and "training" in self.__dict__ and self.__dict__["training"] != value:
            type(self).flips += 1
        super().__setattr__(name, value)


def test_frozen_under_no_grad_does_not_switch_train_eval_each_call_once_settled():
    # Decision (Frozen's docstring): an unsettled wrapper cannot know whether its modules are
    # also used plainly, so it switches those in training mode to eval for each call; settle
    # learns that they are used only frozen, puts them in eval once, and calls stop switching.
    _WatchedDropout.flips = 0
    inner = nn.Sequential(nn.Linear(4, 4), _WatchedDropout(0.5))
    model = nn.Sequential(frozen.Frozen(inner)).train()
    x = torch.ones(16, 4)
    with torch.no_grad():
        expected = inner[0](x)
        assert torch.equal(model(x), expected)  # eval behaviour: dropout is the identity
        assert _WatchedDropout.flips == 2  # switched for the call, and back
        frozen.settle(model)
        flips = _WatchedDropout.flips
        for _ in range(10):
            assert torch.equal(model(x), expected)
    assert _WatchedDropout.flips == flips  # no per-call switching once settled
    assert not inner[1].training
