"""Frozen rows through Hugging Face's ``resize_token_embeddings`` (the "add tokens" step).

HF keeps the embedding's ``Parameter`` and swaps in a larger (or smaller) tensor; a tied
output layer (GPT-2's ``lm_head``) is the same ``Parameter``. The frozen rows stay frozen,
rows added at the end train (with an optimizer built before the resize or after it),
``frozen.state`` records the new row count, and a resize that cuts frozen rows is refused.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_bert_config
from torch import nn
from transformers import BertModel, GPT2Config, GPT2LMHeadModel

import frozen
from frozen._core import rows_of
from frozen._rows import frozen_rows

N, ADDED = 40, 4


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=N, n_positions=16, n_embd=16, n_layer=1, n_head=2))


def bert() -> BertModel:
    torch.manual_seed(0)
    return BertModel(tiny_bert_config(layers=1, vocab=N))


def batch(seed: int, vocab: int) -> torch.Tensor:
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(seed))
    ids[:, : vocab - N] = torch.arange(N, vocab)[:8]  # every added token is used
    return ids


def gpt2_step(model: GPT2LMHeadModel, optimizer: torch.optim.Optimizer, seed: int) -> None:
    ids = batch(seed, model.transformer.wte.weight.shape[0])
    optimizer.zero_grad()
    model(ids, labels=ids).loss.backward()
    optimizer.step()


WTE = "transformer.wte.weight"


def test_gpt2_tied_rows_stay_frozen_and_added_rows_train_with_the_optimizer_built_before():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, trainable=range(N - 4, N)))
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    gpt2_step(model, optimizer, 0)
    weight = model.transformer.wte.weight
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    assert model.transformer.wte.weight is weight and model.lm_head.weight is weight  # HF kept it, tied
    before = weight.detach().clone()
    for seed in range(1, 4):
        gpt2_step(model, optimizer, seed)
    after = weight.detach()
    assert torch.equal(after[: N - 4], before[: N - 4])  # frozen rows: bit-identical in both uses
    assert not torch.equal(after[N - 4 : N], before[N - 4 : N])  # old trainable rows go on training
    assert all(not torch.equal(after[i], before[i]) for i in range(N, N + ADDED))  # each added row trains
    assert optimizer.state[weight]["exp_avg"].shape == (4 + ADDED, 16)  # state for the trainable rows only
    assert weight.grad is not None and torch.equal(weight.grad[: N - 4], torch.zeros_like(weight.grad[: N - 4]))
    assert frozen.state(model)["rows"] == {WTE: {"rows": N + ADDED, "frozen": [[0, N - 4]]}}


def test_the_old_trainable_rows_keep_their_optimizer_state_through_the_resize():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, trainable=range(N - 4, N)))
    optimizer = torch.optim.Adam(frozen.trainable(model), lr=1e-2)
    gpt2_step(model, optimizer, 0)
    weight = model.transformer.wte.weight
    moments = optimizer.state[weight]["exp_avg"].clone()
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    model(batch(1, N + ADDED))  # the first forward follows the resize
    state = optimizer.state[weight]
    assert "frozen_rows_layout" not in state and state["exp_avg"].shape == (N + ADDED, 16)  # widened
    assert torch.equal(state["exp_avg"][N - 4 : N], moments)  # the rows that kept training keep their moments
    assert not state["exp_avg"][N:].any()  # added rows start from zero state


def test_bert_input_embeddings_with_an_optimizer_built_after_the_resize():
    model = bert()
    path = "embeddings.word_embeddings.weight"
    frozen.freeze(model, frozen.Rows(path, range(0, 30)))
    model.resize_token_embeddings(N + ADDED)  # default mean_resizing, as users run it
    assert frozen.state(model)["rows"] == {path: {"rows": N + ADDED, "frozen": [[0, 30]]}}
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-2, weight_decay=0.1))
    weight = model.embeddings.word_embeddings.weight
    before = weight.detach().clone()
    for seed in range(3):
        optimizer.zero_grad()
        model(batch(seed, N + ADDED)).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        frozen.optim.sync(optimizer, model)  # in line already: nothing to add or drop
    after = weight.detach()
    assert torch.equal(after[:30], before[:30])
    assert not torch.equal(after[30:N], before[30:N]) and not torch.equal(after[N:], before[N:])
    assert optimizer.state[weight]["exp_avg"].shape == (N + ADDED - 30, 16)


def test_questions_answer_for_the_new_row_count_before_any_forward_and_change_nothing():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, range(0, 10)))
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    record = frozen_rows(model)[WTE]
    assert len(record.mask) == N + ADDED and record.frozen.tolist() == list(range(10))
    assert frozen.state(model)["rows"][WTE]["rows"] == N + ADDED
    assert frozen.report(model).rows[0].frozen_rows == 10
    assert len(rows_of(model.transformer.wte)["weight"].mask) == N  # the questions changed no record
    model(batch(0, N + ADDED))  # the forward makes the record itself follow
    assert frozen.state(model)["rows"][WTE] == {"rows": N + ADDED, "frozen": [[0, 10]]}


def test_state_saved_after_the_resize_loads_into_a_fresh_model_resized_first():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, trainable=range(N - 4, N)))
    model.resize_token_embeddings(N + ADDED, mean_resizing=False)
    saved = frozen.state(model)

    fresh = gpt2()
    with pytest.raises(frozen.FrozenError, match=f"saved for {N + ADDED} rows"):
        frozen.load_state(fresh, saved)  # not resized yet: refused, naming both counts
    assert frozen_rows(fresh) == {}  # and nothing changed
    fresh.resize_token_embeddings(N + ADDED, mean_resizing=False)
    frozen.load_state(fresh, saved)
    assert frozen.state(fresh) == saved
    optimizer = torch.optim.AdamW(frozen.trainable(fresh), lr=1e-2, weight_decay=0.1)
    before = fresh.transformer.wte.weight.detach().clone()
    gpt2_step(fresh, optimizer, 0)
    after = fresh.transformer.wte.weight.detach()
    assert torch.equal(after[: N - 4], before[: N - 4]) and not torch.equal(after[N:], before[N:])


def test_a_shrink_that_cuts_only_trainable_rows_keeps_the_frozen_ones():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, range(0, 30)))
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2, weight_decay=0.1)
    gpt2_step(model, optimizer, 0)
    model.resize_token_embeddings(N - 5, mean_resizing=False)
    assert frozen.state(model)["rows"][WTE] == {"rows": N - 5, "frozen": [[0, 30]]}
    weight = model.transformer.wte.weight
    before = weight.detach().clone()
    ids = torch.randint(0, N - 5, (2, 8), generator=torch.Generator().manual_seed(1))
    optimizer.zero_grad()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert torch.equal(weight[:30], before[:30]) and not torch.equal(weight[30:], before[30:])
    assert optimizer.state[weight]["exp_avg"].shape == (N - 5 - 30, 16)


def test_a_shrink_that_cuts_frozen_rows_is_refused_at_the_next_forward_and_question():
    model = gpt2()
    frozen.freeze(model, frozen.Rows(WTE, [1, 35, 38]))
    model.resize_token_embeddings(30, mean_resizing=False)
    weight = model.transformer.wte.weight
    before = weight.detach().clone()
    message = rf"{WTE}.*resized from {N} to 30 rows.*frozen rows \[35, 38\].*frozen.thaw\(model, '{WTE}'\)"
    with pytest.raises(frozen.FrozenError, match=message):
        model(torch.randint(0, 30, (2, 8)))
    with pytest.raises(frozen.FrozenError, match=message):
        frozen.state(model)
    with pytest.raises(frozen.FrozenError, match=message):
        frozen.freeze(model, frozen.Rows(WTE, [2]))
    assert torch.equal(weight, before) and len(rows_of(model.transformer.wte)["weight"].mask) == N  # unchanged
    frozen.thaw(model, WTE)  # the fix the message names
    assert frozen_rows(model) == {}
    frozen.freeze(model, frozen.Rows(WTE, [1]))
    assert frozen.state(model)["rows"][WTE] == {"rows": 30, "frozen": [[1, 2]]}


def test_an_optimizer_step_follows_a_resize_no_module_forward_saw():
    emb = nn.Embedding(6, 3)
    frozen.freeze(emb, frozen.Rows("weight", range(0, 6)))  # every row frozen: the hook zeroes all
    optimizer = torch.optim.AdamW([emb.weight], lr=0.1, weight_decay=0.1)
    with torch.no_grad():  # a resize in place, as HF does it
        emb.weight.data = torch.cat([emb.weight.data, torch.randn(2, 3)])
    before = emb.weight.detach().clone()
    nn.functional.embedding(torch.tensor([0, 6, 7]), emb.weight).sum().backward()  # functional: no pre-hook ran
    assert torch.equal(emb.weight.grad[:6], torch.zeros(6, 3)) and emb.weight.grad[6:].abs().sum() > 0
    optimizer.step()
    assert torch.equal(emb.weight[:6], before[:6]) and not torch.equal(emb.weight[6:], before[6:])
    assert frozen.state(emb)["rows"] == {"weight": {"rows": 8, "frozen": [[0, 6]]}}


def test_an_optimizer_step_refuses_a_resize_that_cut_frozen_rows_and_changes_nothing():
    emb = nn.Embedding(6, 3)
    frozen.freeze(emb, frozen.Rows("weight", [0, 5]))
    optimizer = torch.optim.SGD([emb.weight], lr=0.1, weight_decay=0.1)
    with torch.no_grad():
        emb.weight.data = emb.weight.data[:4].clone()
    emb.weight.grad = torch.ones(4, 3)
    before = emb.weight.detach().clone()
    with pytest.raises(frozen.FrozenError, match=r"'weight'.*from 6 to 4 rows.*frozen rows \[5\]"):
        optimizer.step()
    assert torch.equal(emb.weight, before)
