"""freeze / thaw / state of single parameters: the core half of parameter selectors."""

import json

import pytest
import torch
from snapshots import assert_same, snapshot
from torch import nn
from torch.func import functional_call
from transformers import BertConfig, BertForSequenceClassification

import frozen


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def step(model: nn.Module) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    model(torch.randn(8, 3)).square().sum().backward()
    opt.step()


def test_a_frozen_weight_stays_bit_identical_its_bias_trains_and_thaw_is_exact():
    model = net()
    before = snapshot(model)
    weight, bias = model[0].weight.clone(), model[0].bias.clone()
    frozen.freeze(model, "0.weight")
    assert [n for n, _ in frozen.named_trainable(model)] == ["0.bias", "2.weight", "2.bias"]
    assert frozen.is_frozen(model, "0.weight") and not frozen.is_frozen(model, "0.bias")
    step(model)  # the optimizer holds every parameter, as users often do
    assert torch.equal(model[0].weight, weight) and model[0].weight.grad is None
    assert not torch.equal(model[0].bias, bias)
    with torch.no_grad():
        model[0].bias.copy_(bias)
        model[2].weight.copy_(before["state"]["2.weight"]), model[2].bias.copy_(before["state"]["2.bias"])
    frozen.thaw(model, "0.weight")
    assert_same(before, snapshot(model))


def test_a_frozen_parameter_is_a_white_box_constant_under_torch_func():
    model = frozen.freeze(net(), "2.weight")
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    grads = torch.func.grad(lambda p: functional_call(model, p, (x,)).square().sum())(params)
    assert torch.equal(grads["2.weight"], torch.zeros_like(grads["2.weight"]))
    assert grads["2.bias"].abs().sum() > 0 and grads["0.weight"].abs().sum() > 0


def test_a_tied_parameter_selected_at_one_path_freezes_at_both_with_a_warning():
    model = net()
    model.add_module("3", nn.Linear(2, 4))
    model[3].weight = model[0].weight  # (4, 3) both
    with pytest.warns(frozen.TiedParameterWarning, match="'0.weight' and '3.weight'"):
        frozen.freeze(model, "0.weight")
    assert not model[0].weight.requires_grad and "3.weight" not in dict(frozen.named_trainable(model))


def test_parameter_freezing_round_trips_through_state_and_load_state():
    model = frozen.freeze(net(), frozen.params("**.bias"))
    saved = json.loads(json.dumps(frozen.state(model)))
    assert saved["frozen_params"] == ["0.bias", "2.bias"]
    fresh = frozen.load_state(net(), saved)
    assert [n for n, _ in frozen.named_trainable(fresh)] == ["0.weight", "2.weight"]
    assert frozen.state(fresh) == saved


def test_bitfit_on_bert_trains_exactly_the_biases_and_the_head():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = BertForSequenceClassification(config)
    everything = [n for n, _ in model.named_parameters()]
    frozen.freeze(model, "bert", exclude=frozen.params("**.bias"))  # BitFit: biases and the head train
    trained = [n for n, _ in frozen.named_trainable(model)]
    assert trained == [n for n in everything if n.endswith(".bias") or n.startswith("classifier.")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    model.train()
    model(input_ids=torch.randint(0, 50, (4, 6)), labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        moved = not torch.equal(before[key], after[key])
        assert moved == (key in trained), key
    frozen.thaw(model)
    assert [n for n, _ in frozen.named_trainable(model)] == everything


def test_flux_trainable_weight_only_translated():
    # Flux: `@layer Dense trainable=(weight,)` -- Optimisers.setup sees only the weights, and the
    # bias never moves. frozen: freeze every bias by parameter selector.
    model = net()
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    frozen.freeze(model, frozen.params("**.bias"))
    assert [n for n, _ in frozen.named_trainable(model)] == ["0.weight", "2.weight"]
    step(model)
    assert all(torch.equal(p, biases[n]) for n, p in model.named_parameters() if n.endswith("bias"))
    assert all(p.grad is None for n, p in model.named_parameters() if n.endswith("bias"))


def test_lux_partial_freeze_of_one_layer_translated():
    # Lux: `Lux.Experimental.freeze(dense, (:weight,))` -- the weight is a constant of that layer,
    # the bias and the other layers train, and gradients still reach the input.
    model = net()
    frozen.freeze(model, "2.weight")
    x = torch.randn(5, 3, requires_grad=True)
    grads = frozen.grad(model(x).square().sum(), model)
    assert grads["2.weight"] is None and grads["2.bias"] is not None and grads["0.weight"] is not None
    model(x).square().sum().backward()
    assert x.grad is not None and model[2].weight.grad is None
