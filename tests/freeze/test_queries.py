"""trainable / named_trainable / is_frozen / grad (S2) and their errors."""

import pytest
import torch
from torch import nn

import frozen


def model_with_tie_and_frozen_part():
    torch.manual_seed(0)
    shared = nn.Linear(3, 3)
    return nn.Sequential(shared, nn.ReLU(), frozen.Frozen(nn.Linear(3, 3)), shared, nn.Linear(3, 1))


def test_named_trainable_is_deduplicated_in_named_parameters_order_with_state_dict_paths():
    model = model_with_tie_and_frozen_part()
    names = [n for n, _ in frozen.named_trainable(model)]
    assert names == ["0.weight", "0.bias", "4.weight", "4.bias"]
    assert set(names) <= set(model.state_dict())
    expected_order = [n for n, _ in model.named_parameters() if "module" not in n]
    assert names == expected_order
    assert [id(p) for p in frozen.trainable(model)] == [id(p) for _, p in frozen.named_trainable(model)]


def test_a_parameter_the_user_froze_by_hand_is_not_trainable():
    model = model_with_tie_and_frozen_part()
    model[4].bias.requires_grad_(False)
    assert "4.bias" not in dict(frozen.named_trainable(model))


@pytest.mark.parametrize(
    "path, expected",
    [("", False), ("2", True), ("2.weight", True), ("0", False), ("0.weight", False), ("1", False), ("4.bias", False)],
)
def test_is_frozen(path, expected):
    assert frozen.is_frozen(model_with_tie_and_frozen_part(), path) is expected


def test_is_frozen_is_true_for_a_model_whose_every_part_is_frozen():
    model = nn.Sequential(frozen.Frozen(nn.Linear(2, 2)), nn.ReLU(), frozen.Frozen(nn.Linear(2, 2)))
    assert frozen.is_frozen(model)
    assert not frozen.is_frozen(model, "1")  # a parameter-free module outside any frozen use


def test_is_frozen_unknown_path_names_the_closest_paths():
    with pytest.raises(frozen.UnknownPathError, match=r"path='2.wieght'.*'2.weight'"):
        frozen.is_frozen(model_with_tie_and_frozen_part(), "2.wieght")
    with pytest.raises(frozen.FrozenError):
        frozen.is_frozen(model_with_tie_and_frozen_part(), "9")


def test_grad_values_none_for_frozen_and_unused_and_equal_to_autograd_elsewhere():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"used": nn.Linear(2, 2), "unused": nn.Linear(2, 2), "frozen": frozen.Frozen(nn.Linear(2, 2))}
    )
    x = torch.randn(3, 2)
    loss = model["frozen"](model["used"](x)).square().sum()
    g = frozen.grad(loss, model, retain_graph=True)
    assert list(g) == ["used.weight", "used.bias", "unused.weight", "unused.bias", "frozen.weight", "frozen.bias"]
    assert all(g[k] is None for k in ("unused.weight", "unused.bias", "frozen.weight", "frozen.bias"))
    reference = torch.autograd.grad(loss, [model["used"].weight, model["used"].bias])
    assert torch.equal(g["used.weight"], reference[0]) and torch.equal(g["used.bias"], reference[1])
    assert model["used"].weight.grad is None  # like autograd.grad, .grad is not touched


def test_grad_of_a_loss_that_does_not_require_grad_is_all_none():
    model = frozen.settle(nn.Sequential(frozen.Frozen(nn.Linear(2, 2))))
    g = frozen.grad(model(torch.ones(1, 2)).sum(), model)
    assert g == {"0.weight": None, "0.bias": None}


def test_grad_rejects_non_scalar_and_non_tensor_losses():
    model = nn.Linear(2, 2)
    out = model(torch.ones(3, 2))
    with pytest.raises(frozen.NonScalarLossError, match=r"loss.*shape \(3, 2\).*loss.sum\(\)"):
        frozen.grad(out, model)
    with pytest.raises(TypeError, match="expected loss to be a torch.Tensor"):
        frozen.grad(1.0, model)
    with pytest.raises(TypeError, match="expected model to be a torch.nn.Module"):
        frozen.grad(out.sum(), [model])
    assert model.weight.grad is None


@pytest.mark.parametrize("function", [frozen.trainable, frozen.named_trainable, frozen.is_frozen, frozen.settle])
def test_queries_reject_a_non_module(function):
    with pytest.raises(TypeError, match=r"expected model to be a torch.nn.Module, received builtins.list"):
        function([nn.Linear(2, 2)])
