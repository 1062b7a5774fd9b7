"""Frozen rows on an *untied* output layer through ``resize_token_embeddings``.

With ``tie_word_embeddings=False`` Hugging Face resizes ``lm_head`` by building a new
``nn.Linear`` and assigning it. The rows frozen on the old layer's parameters carry over to
the new layer's parameters at the same paths: the old frozen rows stay frozen, rows the
resize added train, every question and optimizer helper sees the new layer, and a shrink
that cuts a frozen row is refused as a resize in place is. The same holds for a layer
replaced by hand (rows frozen on ``lm_head.weight`` are a statement about the path).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert_config
from torch import nn
from transformers import BertForMaskedLM, GPT2Config, GPT2LMHeadModel

import frozen
from frozen._core import rows_of
from frozen._rows import frozen_rows

N, ADDED = 40, 4
WTE, HEAD = "transformer.wte.weight", "lm_head.weight"


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=N, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False)
    config.bos_token_id = config.eos_token_id = None  # the defaults (50256) lie outside a 40-token vocabulary
    return GPT2LMHeadModel(config)


def frozen_gpt2() -> GPT2LMHeadModel:
    model = gpt2()
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied
    frozen.freeze(model, frozen.Rows(HEAD, range(0, 30)), frozen.Rows(WTE, range(0, 30)))
    return model


def batch(seed: int, vocab: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(seed))
    ids[:, : vocab - N] = torch.arange(N, vocab)[:8]  # every added token is used
    return ids


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    torch.manual_seed(1)  # the same dropout in every run
    for seed in range(steps):
        ids = batch(seed, model.get_input_embeddings().weight.shape[0])
        optimizer.zero_grad()
        logits = model(ids).logits  # every row of the output layer gets a gradient through the softmax
        nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        optimizer.step()


def assert_rows_held(weight: torch.Tensor, before: torch.Tensor) -> None:
    after = weight.detach()
    assert torch.equal(after[:30], before[:30])  # the frozen rows: bit-identical
    assert all(not torch.equal(after[i], before[i]) for i in range(30, N))  # the other old rows train
    assert all(not torch.equal(after[i], before[i]) for i in range(N, N + ADDED))  # each added row trains


def test_rows_carry_over_to_the_new_lm_head_and_train_with_an_optimizer_built_after():
    model = frozen_gpt2()
    old = model.lm_head
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    head = model.lm_head.weight
    assert model.lm_head is not old and head.shape == (N + ADDED, 16)  # HF built a new layer
    expected = {"rows": N + ADDED, "frozen": [[0, 30]]}
    assert frozen.state(model)["rows"] == {WTE: expected, HEAD: expected}
    layers = {r.path: r.frozen_rows for r in frozen.report(model).rows if r.path in ("transformer.wte", "lm_head")}
    assert layers == {"transformer.wte": 30, "lm_head": 30}
    trainable = frozen.trainable(model)
    assert any(p is head for p in trainable) and not any(p is old.weight for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    before, wte_before = head.detach().clone(), model.transformer.wte.weight.detach().clone()
    train(model, optimizer, 3)
    assert_rows_held(head, before)
    assert_rows_held(model.transformer.wte.weight, wte_before)
    assert optimizer.state[head]["exp_avg"].shape == (N + ADDED - 30, 16)  # state for the trainable rows only
    assert torch.equal(head.grad[:30], torch.zeros(30, 16))


def test_state_saved_after_the_resize_round_trips_into_a_fresh_model_resized_the_same_way():
    model = frozen_gpt2()
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    saved = frozen.state(model)

    fresh = gpt2()
    fresh.resize_token_embeddings(N + ADDED, mean_resizing=False)
    fresh.load_state_dict(model.state_dict())
    frozen.load_state(fresh, saved)
    assert frozen.state(fresh) == saved
    optimizers = [torch.optim.AdamW(frozen.optim.param_groups(m, lr=1e-2, weight_decay=0.1)) for m in (model, fresh)]
    before = fresh.lm_head.weight.detach().clone()
    for m, optimizer in zip((model, fresh), optimizers, strict=True):
        train(m, optimizer, 3)
    assert_rows_held(fresh.lm_head.weight, before)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same rows froze in both: the same training, bit for bit


def test_an_optimizer_built_before_the_resize_is_refused_by_sync_and_a_new_one_keeps_the_rows():
    model = frozen_gpt2()
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    train(model, optimizer, 1)
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    # It holds the replaced layer's weight, which is no longer in the model: refused, naming the fix.
    with pytest.raises(frozen.FrozenError, match=r"not in the model.*frozen.optim.param_groups\(model\)"):
        frozen.optim.sync(optimizer, model)
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-2, weight_decay=0.1))
    head = model.lm_head.weight
    before = head.detach().clone()
    train(model, optimizer, 3)
    frozen.optim.sync(optimizer, model)  # in line: nothing to add or drop
    assert_rows_held(head, before)
    assert optimizer.state[head]["exp_avg"].shape == (N + ADDED - 30, 16)


def test_a_shrink_that_cuts_frozen_rows_of_the_new_lm_head_is_refused_and_changes_nothing():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(HEAD, [1, 35, 38]))
    model.resize_token_embeddings(30, mean_resizing=False)
    head = model.lm_head.weight
    before = head.detach().clone()
    message = rf"{HEAD}.*resized from {N} to 30 rows.*frozen rows \[35, 38\].*frozen.thaw\(model, '{HEAD}'\)"
    with pytest.raises(frozen.FrozenError, match=message):
        model(torch.randint(0, 30, (2, 8)))
    with pytest.raises(frozen.FrozenError, match=message):
        frozen.state(model)
    with pytest.raises(frozen.FrozenError, match=message):
        frozen.trainable(model)
    optimizer = torch.optim.SGD([head], lr=0.1, weight_decay=0.1)
    head.grad = torch.ones_like(head)
    with pytest.raises(frozen.FrozenError, match=message):
        optimizer.step()
    assert torch.equal(head, before) and len(rows_of(model.lm_head)["weight"].mask) == N  # unchanged
    frozen.thaw(model, HEAD)  # the fix the message names
    assert frozen_rows(model) == {}
    frozen.freeze(model, frozen.Rows(HEAD, [1]))
    assert frozen.state(model)["rows"][HEAD] == {"rows": 30, "frozen": [[1, 2]]}


def test_a_layer_replaced_by_hand_takes_the_rows_at_its_paths():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(HEAD, range(0, 30)))
    mlp = model.transformer.h[0].mlp
    model.transformer.h[0].mlp = type(mlp)(64, model.config)  # a layer without frozen rows: nothing carried
    assert all(not rows_of(m) for m in model.transformer.h[0].mlp.modules())

    model.lm_head = nn.Linear(16, N + ADDED, bias=False)
    assert frozen.state(model)["rows"] == {HEAD: {"rows": N + ADDED, "frozen": [[0, 30]]}}
    optimizer = torch.optim.Adam(frozen.trainable(model), lr=1e-2)
    before = model.lm_head.weight.detach().clone()
    train(model, optimizer, 3)
    assert_rows_held(model.lm_head.weight, before)

    model.lm_head = nn.Sequential(model.lm_head)  # a wrapper holding the layer: its rows stay with it
    assert frozen.state(model)["rows"] == {"lm_head.0.weight": {"rows": N + ADDED, "frozen": [[0, 30]]}}
    own = nn.Linear(16, N + ADDED, bias=False)
    frozen.freeze(own, frozen.Rows("weight", [5]))
    model.lm_head = own  # rows frozen on the new layer itself are its own: kept, not overwritten
    assert frozen.state(model)["rows"] == {HEAD: {"rows": N + ADDED, "frozen": [[5, 6]]}}


def test_a_layer_whose_rows_have_another_shape_is_refused_at_the_assignment():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(HEAD, range(0, 30)))
    old, saved = model.lm_head, frozen.state(model)
    message = (
        rf"GPT2LMHeadModel.lm_head = Linear.*frozen rows of '{HEAD}', rows of shape \(16,\).*"
        rf"'weight' has shape \(40, 32\).*frozen.thaw\(model, '{HEAD}'\)"
    )
    with pytest.raises(frozen.FrozenError, match=message):
        model.lm_head = nn.Linear(32, N, bias=False)
    assert model.lm_head is old and frozen.state(model) == saved  # unchanged
    frozen.thaw(model, HEAD)  # the fix the message names
    model.lm_head = nn.Linear(32, N, bias=False)
    assert frozen_rows(model) == {}


def test_bert_mlm_decoder_rows_carry_over_through_the_resize():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(layers=1, vocab=N, tie_word_embeddings=False))
    path, bias = "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"
    frozen.freeze(model, frozen.Rows(path, range(0, 30)), frozen.Rows(bias, range(0, 30)))
    model.resize_token_embeddings(N + ADDED)  # default mean_resizing, as users run it
    decoder = model.cls.predictions.decoder
    assert model.cls.predictions.bias is decoder.bias  # HF points the head's bias slot at the new bias
    rows = frozen.state(model)["rows"]  # the new bias's first path is now that slot's
    assert rows == {path: {"rows": N + ADDED, "frozen": [[0, 30]]}, "cls.predictions.bias": rows[path]}
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-2, weight_decay=0.1))
    before = [decoder.weight.detach().clone(), decoder.bias.detach().clone()]
    train(model, optimizer, 3)
    assert_rows_held(decoder.weight, before[0])
    assert_rows_held(decoder.bias, before[1])
