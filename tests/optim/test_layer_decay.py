"""param_groups(model, lr=..., layer_decay=...): BEiT / ELECTRA layer-wise learning-rate decay over frozen.blocks."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert
from torch import nn

import frozen

LR, DECAY, LAYERS = 1e-3, 0.75, 3


def beit_rates(model) -> dict[str, float]:
    """The rate BEiT's optim_factory (LayerDecayValueAssigner, get_num_layer_for_vit) gives each parameter.

    BEiT: layer id 0 for the embeddings, i + 1 for block i, L + 1 for everything else (final
    norm, pooler, head); scale = layer_decay ** (L + 1 - layer id). Written out for BERT's names.
    """
    rates = {}
    for name, _ in model.named_parameters():
        if name.startswith("bert.embeddings."):
            layer_id = 0
        elif name.startswith("bert.encoder.layer."):
            layer_id = int(name.split(".")[3]) + 1
        else:
            layer_id = LAYERS + 1
        rates[name] = LR * DECAY ** (LAYERS + 1 - layer_id)
    return rates


def rates_by_path(model, groups) -> dict[str, float]:
    paths = {id(p): n for n, p in model.named_parameters()}
    rates = {}
    for group in groups:
        for p in group["params"]:
            assert paths[id(p)] not in rates, "a parameter in two groups"
            rates[paths[id(p)]] = group["lr"]
        for path in group["frozen_params"]:
            rates[path] = group["lr"]
    return rates


def test_rates_follow_beits_layer_decay_exactly():
    model = tiny_bert(layers=LAYERS)
    groups = frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY)
    assert rates_by_path(model, groups) == beit_rates(model)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("stem", LR * DECAY**4),
        ("bert.encoder.layer.0", LR * DECAY**3),
        ("bert.encoder.layer.1", LR * DECAY**2),
        ("bert.encoder.layer.2", LR * DECAY),
        ("head", LR),
    ]


def test_a_real_sgd_step_moves_each_parameter_by_its_layers_rate():
    model = tiny_bert(layers=LAYERS)
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY), lr=LR)
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
    expected = {n: p.detach().add(p.grad, alpha=-beit_rates(model)[n]) for n, p in model.named_parameters()}
    optimizer.step()
    assert all(torch.equal(p, expected[n]) for n, p in model.named_parameters())


def test_frozen_parameters_are_out_of_the_groups_and_keep_their_layers_rate():
    model = frozen.freeze_to(tiny_bert(layers=LAYERS), 2)  # the embeddings and layer 0
    groups = frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY)
    held = {id(p) for g in groups for p in g["params"]}
    frozen_ids = {id(p) for p in model.parameters()} - {id(p) for p in frozen.trainable(model)}
    assert frozen_ids and not held & frozen_ids
    assert held == {id(p) for p in frozen.trainable(model)}
    # Rates come from the model's structure, not from what is frozen: freezing moves no rate.
    assert rates_by_path(model, groups) == beit_rates(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.1)
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        model(input_ids=ids, labels=torch.tensor([0, 1, 1, 0])).loss.backward()
        optimizer.step()
    for n, p in model.named_parameters():
        frozen_now = n.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
        assert torch.equal(before[n], p) == frozen_now, n


def test_a_thawed_block_returns_to_its_layers_group_and_rate():
    model = frozen.freeze_to(tiny_bert(layers=LAYERS), 2)
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY), lr=LR)
    frozen.freeze_to(model, 1)  # layer 0 thaws
    frozen.optim.sync(optimizer, model)
    layer0 = next(g for g in optimizer.param_groups if g["name"] == "bert.encoder.layer.0")
    names = {id(p): n for n, p in model.named_parameters()}
    assert layer0["lr"] == LR * DECAY**3 and layer0["frozen_params"] == []
    assert {names[id(p)] for p in layer0["params"]} == {
        n for n, _ in model.named_parameters() if n.startswith("bert.encoder.layer.0.")
    }


def test_layer_decay_composes_with_no_weight_decay_on_biases_and_norms():
    model = tiny_bert(layers=LAYERS)
    groups = frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY, weight_decay=0.05, no_decay_bias_and_norm=True)
    modules = dict(model.named_modules())
    names = {id(p): n for n, p in model.named_parameters()}
    level_rates = {"stem": LR * DECAY**4, "head": LR}
    level_rates |= {f"bert.encoder.layer.{i}": LR * DECAY ** (LAYERS - i) for i in range(LAYERS)}
    for group in groups:
        assert group["lr"] == level_rates[group["name"].removesuffix("/no_decay")]
        for p in group["params"]:
            name = names[id(p)]
            owner = modules[name.rpartition(".")[0]]
            no_decay = p.ndim <= 1 or isinstance(owner, nn.LayerNorm)
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
            assert group["name"].endswith("/no_decay") == no_decay
    assert rates_by_path(model, groups) == beit_rates(model)


def test_overrides_win_over_the_layers_rate():
    model = tiny_bert(layers=LAYERS)
    groups = frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY, overrides={"classifier": {"lr": 0.5}})
    by_name = {g["name"]: g for g in groups}
    assert by_name["head/classifier"]["lr"] == 0.5 and len(by_name["head/classifier"]["params"]) == 2
    assert by_name["head"]["lr"] == LR  # the pooler stays at the head's rate
    assert by_name["stem"]["lr"] == LR * DECAY**4


def test_a_sequential_decays_over_its_children():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))
    groups = frozen.optim.param_groups(model, lr=1.0, layer_decay=0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [("0", 0.125), ("2", 0.5), ("3", 1.0)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": LR, "layer_decay": 0.0}, "expected layer_decay to be a positive number"),
        ({"lr": LR, "layer_decay": -0.5}, "expected layer_decay to be a positive number"),
        ({"lr": LR, "layer_decay": "0.75"}, "expected layer_decay to be a positive number"),
        ({"lr": LR, "layer_decay": True}, "expected layer_decay to be a positive number"),
        ({"layer_decay": DECAY}, r"needs the head's learning rate as a number, received lr=None"),
        ({"lr": slice(1e-5, 1e-3), "layer_decay": DECAY}, "needs the head's learning rate as a number"),
        ({"lr": LR, "layer_decay": DECAY, "parts": ["bert.embeddings"]}, "does not combine with parts= or lr_decay="),
        ({"lr": LR, "layer_decay": DECAY, "lr_decay": 0.9}, "does not combine with parts= or lr_decay="),
    ],
    ids=["zero", "negative", "string", "bool", "no-lr", "slice-lr", "with-parts", "with-lr_decay"],
)
def test_bad_layer_decay_arguments_raise(options, message):
    with pytest.raises(frozen.FrozenError, match=message):
        frozen.optim.param_groups(tiny_bert(), **options)


def test_layer_decay_on_a_model_without_blocks_names_the_fix():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "decoder": nn.Linear(4, 4)})
    with pytest.raises(
        frozen.FrozenError, match=r"param_groups\(model, layer_decay=0.75\): found no repeated blocks.*parts="
    ):
        frozen.optim.param_groups(model, lr=LR, layer_decay=DECAY)
