"""frozen.explain: why a parameter gets no gradient, one test per reason, checked against a real backward."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert
from torch import nn

import frozen


class Tied(nn.Module):
    """An embedding and an output layer sharing one weight (GPT-2's wte / lm_head), plus an unused layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(6, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
        self.out = nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight
        self.spare = nn.Linear(4, 4)  # never called by forward

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.emb(ids)))


IDS = torch.tensor([[0, 1, 2], [3, 4, 5]])


def backward(model: nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    model(IDS).square().mean().backward()


def test_frozen_in_place_names_the_part_and_how_to_thaw_it():
    model = frozen.freeze(Tied(), "body")
    backward(model)
    answer = frozen.explain(model, "body.1.weight")
    assert model.body[1].weight.grad is None and not answer.trains
    assert answer.causes == ("freeze",)
    assert "inside 'body', frozen in place (mode='eval') by frozen.freeze(model, 'body')" in str(answer)
    assert "frozen.thaw(model, 'body'); only this module: frozen.thaw(model, 'body.1')" in str(answer)


def test_built_inside_freezing_is_frozen_in_place_too():
    with frozen.freezing():
        body = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model = Tied()
    model.body = body
    frozen.settle(model)
    backward(model)
    answer = frozen.explain(model, "body.0.bias")
    assert model.body[0].bias.grad is None and answer.causes == ("freeze",)
    assert "frozen.freezing() block" in str(answer)


def test_a_frozen_wrapper_is_named_by_its_path():
    model = Tied()
    model.body = frozen.Frozen(model.body)
    for settled in (False, True):  # before settle the wrapper detaches per call; after, the flag is off
        if settled:
            frozen.settle(model)
        backward(model)
        answer = frozen.explain(model, "body.0.weight")
        assert model.body.module[0].weight.grad is None and not answer.trains
        assert answer.causes == ("wrapper",) and "the frozen.Frozen wrapper at 'body'" in str(answer)


def test_a_parameter_frozen_on_its_own():
    model = frozen.freeze(Tied(), "body.0.bias")
    backward(model)
    answer = frozen.explain(model, "body.0.bias")
    assert model.body[0].bias.grad is None and answer.causes == ("param",)
    assert "frozen.thaw(model, 'body.0.bias')" in str(answer)


def test_a_tied_weight_frozen_with_its_partner_names_the_partner():
    with pytest.warns(frozen.TiedParameterWarning):
        model = frozen.freeze(Tied(), "emb")
    backward(model)
    answer = frozen.explain(model, "out.weight")
    assert model.out.weight.grad is None and not answer.trains
    assert answer.causes == ("freeze", "tied")
    assert "shared with the part 'emb', frozen with tied='freeze'" in str(answer)
    assert "tied='train'" in str(answer)


def test_a_tied_weight_trained_elsewhere_is_detached_at_its_frozen_use():
    model = frozen.freeze(Tied(), "emb", tied="train")
    backward(model)
    answer = frozen.explain(model, "emb.weight")
    assert answer.trains and answer.causes == ("freeze", "detached")
    assert "it trains through 'out.weight'; its frozen use at 'emb.weight' detaches it there" in str(answer)
    # The gradient is the one through the output layer alone: the embedding lookup sees a constant.
    reference = Tied()
    weight = reference.emb.weight
    hidden = reference.body(nn.functional.embedding(IDS, weight.detach()))
    (expected,) = torch.autograd.grad(nn.functional.linear(hidden, weight).square().mean(), weight)
    assert torch.equal(model.emb.weight.grad, expected)


def test_a_flag_set_by_hand():
    model = Tied()
    model.body[1].weight.requires_grad_(False)
    backward(model)
    answer = frozen.explain(model, "body.1.weight")
    assert model.body[1].weight.grad is None and answer.causes == ("hand",)
    assert "requires_grad=False was set outside frozen" in str(answer)
    assert "model.get_parameter('body.1.weight').requires_grad_(True), then frozen.settle(model)" in str(answer)


def test_a_flag_set_by_hand_inside_a_frozen_part_is_both():
    model = Tied()
    model.body[1].weight.requires_grad_(False)
    frozen.freeze(model, "body")
    assert frozen.explain(model, "body.1.weight").causes == ("freeze", "hand")
    assert frozen.explain(model, "body.1.bias").causes == ("freeze",)  # thaw alone trains this one again


def test_a_parameter_peft_keeps_frozen():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, target_modules=["query"]))
    base = "base_model.model.bert.encoder.layer.1.attention.self.key.weight"
    answer = frozen.explain(model, base)
    assert not answer.trains and answer.causes == ("peft",) and "PEFT keeps it frozen" in str(answer)
    lora = next(n for n, _ in model.named_parameters() if "lora_A" in n)
    assert frozen.explain(model, lora).causes == ("unused",)


def test_an_unused_parameter_trains_but_gets_no_gradient():
    model = Tied()
    backward(model)
    answer = frozen.explain(model, "spare.weight")
    assert answer.trains and model.spare.weight.grad is None
    assert answer.causes == ("unused",)
    assert (
        "no frozen use and requires_grad=True: if its .grad is None after backward, the forward does not use it"
        in str(answer)
    )


def test_frozen_rows_are_counted():
    model = frozen.freeze(Tied(), frozen.Rows("emb.weight", [0, 1]))
    backward(model)
    answer = frozen.explain(model, "out.weight")  # any path of the tied weight
    assert answer.trains and answer.causes == ("rows", "unused")
    assert "2 of its 6 rows are frozen with frozen.Rows (rows [0, 1])" in str(answer)
    assert torch.count_nonzero(model.emb.weight.grad[:2]) == 0 and torch.count_nonzero(model.emb.weight.grad[2:]) > 0


def test_the_answer_agrees_with_a_real_backward_for_every_parameter():
    model = Tied()
    model.body[0] = frozen.Frozen(model.body[0])
    model.spare.bias.requires_grad_(False)
    frozen.freeze(model, "body.1.bias")
    backward(model)
    for name in frozen.select(model, frozen.params("**")):  # frozen's paths: no wrapper segment
        param, answer = model.get_parameter(name), frozen.explain(model, name)
        if name.startswith("spare."):
            assert param.grad is None  # spare is never called: nothing says more than "unused" or "hand"
        else:
            assert answer.trains == (param.grad is not None), name


def snapshot(model: nn.Module) -> tuple:
    return (
        frozen.state(model),
        [(n, p.requires_grad, p.grad is None, p.detach().clone()) for n, p in model.named_parameters()],
        [(m.training, dict(m.__dict__.items()), dict(m._forward_pre_hooks)) for m in model.modules()],
    )


def same(a: tuple, b: tuple) -> bool:
    states_a, params_a, modules_a = a
    states_b, params_b, modules_b = b
    return (
        states_a == states_b
        and all(x[:3] == y[:3] and torch.equal(x[3], y[3]) for x, y in zip(params_a, params_b, strict=True))
        and all(
            x[0] == y[0] and x[1].keys() == y[1].keys() and all(x[1][k] is y[1][k] for k in x[1]) and x[2] == y[2]
            for x, y in zip(modules_a, modules_b, strict=True)
        )
    )


def test_explain_changes_nothing():
    with pytest.warns(frozen.TiedParameterWarning):
        model = frozen.freeze(Tied(), "emb", "body.1.bias", frozen.Rows("spare.weight", [0]))
    model.body[0] = frozen.Frozen(model.body[0])
    model.spare.bias.requires_grad_(False)
    backward(model)
    before = snapshot(model)
    answers = [str(frozen.explain(model, name)) for name in frozen.select(model, frozen.params("**"))]
    assert len(answers) == 8 and same(snapshot(model), before)


def test_a_module_path_lists_its_parameters():
    with pytest.raises(frozen.UnknownPathError, match=r"'body' is a module path|path='body'\): that is a module path"):
        frozen.explain(Tied(), "body")
    with pytest.raises(frozen.UnknownPathError, match="such as 'body.0.weight', 'body.0.bias', 'body.1.weight'"):
        frozen.explain(Tied(), "body")


def test_an_unknown_path_lists_the_closest():
    with pytest.raises(frozen.UnknownPathError, match="no parameter has that path.*'body.1.weight'"):
        frozen.explain(Tied(), "body.1.wieght")


def test_a_path_that_is_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match="expected path to be a parameter path string"):
        frozen.explain(Tied(), 0)
