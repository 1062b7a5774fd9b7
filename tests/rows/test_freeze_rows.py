"""frozen.freeze / thaw / state with frozen.Rows targets: row freezing through the public verbs."""

import json

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

import frozen


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config)


def train(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        ids = torch.randint(0, 40, (2, 6))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()


def test_new_token_rows_train_and_old_rows_stay_bit_identical_in_both_tied_uses():
    model = gpt2()
    before = model.transformer.wte.weight.detach().clone()
    frozen.freeze(model, frozen.Rows("lm_head.weight", trainable=range(36, 40)))  # 4 new tokens
    assert model.transformer.wte.weight.requires_grad and not frozen.is_frozen(model, "transformer.wte.weight")
    assert frozen.report(model).rows[0].frozen_rows == 36
    train(model)
    after = model.transformer.wte.weight.detach()
    assert torch.equal(after[:36], before[:36]) and not torch.equal(after[36:], before[36:])
    frozen.thaw(model, "transformer.wte")  # a part holding the parameter thaws all its rows
    train(model, 1)
    assert not torch.equal(model.transformer.wte.weight[:36], before[:36])


def test_rows_round_trip_through_state_and_load_state_and_thaw_everything():
    model = frozen.freeze(gpt2(), frozen.Rows("transformer.wte.weight", [0, 1, 2]), "transformer.h.0")
    saved = json.loads(json.dumps(frozen.state(model)))
    assert saved["rows"] == {"transformer.wte.weight": {"rows": 40, "frozen": [[0, 3]]}}
    fresh = frozen.load_state(gpt2(), saved)
    assert frozen.state(fresh) == saved
    frozen.thaw(fresh)
    assert frozen.state(fresh)["rows"] == {} and frozen.state(fresh)["frozen"] == []


def test_a_bad_rows_target_changes_nothing():
    model = gpt2()
    with pytest.raises(frozen.UnknownPathError):
        frozen.freeze(model, "transformer.h.0", frozen.Rows("transformer.wte.wieght", [0]))
    assert frozen.state(model)["frozen"] == [] and frozen.state(model)["rows"] == {}
