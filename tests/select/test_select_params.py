"""Parameter selectors (the selection half; tests/freeze/test_freeze_params.py has freeze / thaw / state): paths, params(...), parameter objects, exclusions."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import frozen
from frozen._select.select import params, resolve


def make_model() -> nn.Module:
    model = nn.Module()
    model.cls_token = nn.Parameter(torch.zeros(4))
    model.encoder = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(3))
    model.head = nn.Linear(4, 2)
    return model


def state_order(model: nn.Module, chosen: set[str]) -> list[str]:
    """``chosen`` in state_dict order: each module path, then its own parameters."""
    order = []
    for path, module in model.named_modules():
        order.append(path)
        order += [f"{path}.{n}" if path else n for n in module._parameters]
    return [p for p in order if p in chosen]


def test_a_pattern_naming_a_parameter_selects_that_parameter():
    model = make_model()
    assert frozen.select(model, "head.weight") == ["head.weight"]
    assert frozen.select(model, "cls_token") == ["cls_token"]
    selection = resolve(model, ("encoder.0.0.weight",), (), function="t")
    assert selection.uses == [] and selection.matched == []
    assert [(u.path, u.owner, u.name) for u in selection.params] == [
        ("encoder.0.0.weight", model.encoder[0][0], "weight")
    ]


def test_any_depth_bias_and_mixed_module_and_parameter_targets():
    model = make_model()
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    assert frozen.select(model, "**.bias") == biases
    # A selected module covers its own parameters: head.bias is not listed twice.
    mixed = frozen.select(model, "head", "**.bias")
    assert mixed == state_order(model, {"head", *biases} - {"head.bias"})
    selection = resolve(model, ("head", "**.bias"), (), function="t")
    assert [u.path for u in selection.uses] == ["head"]
    assert [p.path for p in selection.params] == [b for b in biases if b != "head.bias"]


def test_one_segment_wildcards_reach_parameters_at_that_level():
    model = make_model()
    assert frozen.select(model, "*") == ["cls_token"] + [n for n, _ in model.named_modules() if n]
    assert frozen.select(model, "encoder.*.1.*") == [f"encoder.{i}.1.{n}" for i in range(3) for n in ("weight", "bias")]


def test_params_predicate_is_called_once_per_parameter_use_and_selects_no_module():
    model = make_model()
    calls = []

    def one_dimensional(path, param):
        calls.append(path)
        return param.ndim == 1

    assert frozen.select(model, params(one_dimensional)) == [n for n, p in model.named_parameters() if p.ndim == 1]
    assert calls == [n for n, _ in model.named_parameters()]
    everything = resolve(model, (params("**"),), (), function="t")
    assert everything.uses == [] and [p.path for p in everything.params] == calls


def test_parameter_objects_select_every_use_of_that_tensor():
    model = nn.Module()
    model.wte = nn.Embedding(10, 4)
    model.lm_head = nn.Linear(4, 10, bias=False)
    model.lm_head.weight = model.wte.weight  # tied, as GPT-2
    assert frozen.select(model, model.wte.weight) == ["wte.weight", "lm_head.weight"]
    assert frozen.select(model, "wte.weight") == ["wte.weight"]  # a path names one use
    assert frozen.select(model, "wte", exclude=model.wte.weight) == []
    with pytest.raises(frozen.SelectorError, match=r"parameter object of shape \(3,\) is not part of the model"):
        frozen.select(model, nn.Parameter(torch.zeros(3)))


def test_excluding_a_parameter_of_a_selected_module_selects_its_other_parameters():
    model = make_model()
    assert frozen.select(model, "head", exclude="head.bias") == ["head.weight"]
    selection = resolve(model, ("encoder.0",), "encoder.0.1.bias", function="t")
    assert [u.path for u in selection.uses] == ["encoder.0", "encoder.0.0"]
    assert [p.path for p in selection.params] == ["encoder.0.1.weight"]
    # Excluding a module removes the parameters below it, however they were selected.
    assert frozen.select(model, "**.bias", exclude="encoder") == ["head.bias"]
    assert frozen.select(model, "**.bias", train_norms=True) == [
        "encoder.0.0.bias",
        "encoder.1.0.bias",
        "encoder.2.0.bias",
        "head.bias",
    ]
    # exclude= takes parameter selectors of every kind
    assert frozen.select(model, "head", exclude=model.head.bias) == ["head.weight"]
    assert frozen.select(model, "head", exclude=params(lambda path, p: p.ndim == 2)) == ["head.bias"]


def test_bitfit_selection_on_bert_freezes_every_parameter_but_biases_and_head():
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
    model = BertForSequenceClassification(config)
    selection = resolve(model, (params("**"),), ["**.bias", "classifier"], function="t")
    assert selection.uses == []  # no module is frozen as a module: dropout keeps training behaviour
    names = [n for n, _ in model.named_parameters()]
    assert [p.path for p in selection.params] == [n for n in names if not n.endswith(".bias") and "classifier" not in n]


@pytest.mark.parametrize(
    "target, error, match",
    [
        ("head.wieght", frozen.SelectorError, r"matches no module or parameter path.*'head.weight'"),
        ("cls_tokn", frozen.SelectorError, r"closest existing paths: 'cls_token'"),
        (params("**.weight_g"), frozen.SelectorError, r"'\*\*.weight_g' matches no parameter path"),
        (params(lambda path, p: p.ndim == 4), frozen.SelectorError, r"parameter predicate .* matches no parameter"),
        ([nn.Linear], TypeError, r"unpack it: freeze\(model, \*targets\)"),
    ],
)
def test_parameter_selector_errors(target, error, match):
    with pytest.raises(error, match=match):
        frozen.select(make_model(), target)


def test_params_takes_a_pattern_or_a_predicate():
    with pytest.raises(TypeError, match=r"frozen.params\(...\): expected a path pattern .* received int 3"):
        params(3)


def test_exclude_may_name_parameters_that_predicates_miss_but_not_typos():
    model = make_model()
    assert frozen.select(model, "head", exclude=params(lambda path, p: p.ndim == 4)) == ["head"]
    with pytest.raises(frozen.SelectorError, match="exclude pattern 'head.bais'"):
        frozen.select(model, "head", exclude="head.bais")
