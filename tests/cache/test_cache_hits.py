"""What a cached part answers from its store, and when.

Every input is part of the key (autocast state, dtype, argument structure); row hashes and sample ids key
samples; hits across shuffled epochs, chained prefixes and parts frozen by an unsettled wrapper.
"""

from __future__ import annotations

import copy

import pytest
import torch
from cached_models import CHECK, TOL, cached_linear, count_forwards, plain_chain, train_probe
from torch import nn
from transformers import BertConfig, BertModel

import frozen
from frozen import CacheError, cache


def test_shuffled_epochs_replay_the_cache_and_train_the_head_identically() -> None:
    plain_losses, plain, plain_calls, _ = train_probe(use_cache=False)
    losses, cached, calls, stats = train_probe(use_cache=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    torch.testing.assert_close(cached.head.weight, plain.head.weight, **TOL)
    assert plain_calls == [3, 3, 3] and calls == [3 + CHECK, 0, 0]  # epochs 2+ never run the backbone
    assert stats["backbone"]["hits"] == 48 and stats["backbone"]["misses"] == 24
    assert (
        cached.head.weight.grad is not None
        and cached.backbone.embeddings.patch_embeddings.projection.weight.grad is None
    )


def test_autocast_is_part_of_the_key() -> None:
    # An output stored in float32 answered a call under autocast (and the reverse): the uncached part returns
    # bfloat16 there. Each autocast state keys its own entries.
    model, calls, x = cached_linear()  # float32 entries stored
    part = model[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first, second = part(x), part(x)
        want = nn.Sequential.forward(part, x)  # the uncached computation (runs the children: counted)
    assert calls == [3 + CHECK] and first.dtype == second.dtype == torch.bfloat16  # one miss, one hit
    assert torch.equal(first, want) and torch.equal(second, want)
    assert part(x).dtype == torch.float32 and calls == [3 + CHECK]  # outside autocast: the float32 entries
    with torch.autocast("cpu", dtype=torch.float16):
        assert part(x).dtype == torch.float16 and calls == [4 + CHECK]


def test_inference_mode_entries_serve_training_and_a_chain_rehashes_them() -> None:
    # An evaluation loop under torch.inference_mode (Lightning's validate/test/predict) stores inference
    # tensors, which have no version counter: reading it raised. They never count as unchanged.
    model, calls, x = cached_linear()
    fresh = torch.randn(3, 4)
    with torch.inference_mode():
        seen = model(x)  # a hit
        first = model(fresh)  # a miss: stored as inference tensors
    assert calls == [2 + CHECK] and seen.is_inference() and first.is_inference()
    model.train()
    out = model(torch.cat([fresh, x[:2]]))  # all hits, outside inference mode
    out.sum().backward()
    assert calls == [2 + CHECK] and not out.is_inference() and model[1].weight.grad is not None
    torch.testing.assert_close(out, plain_chain(model, torch.cat([fresh, x[:2]])), **TOL)
    bert_model = frozen.freeze(BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32)), "embeddings", "encoder")  # fmt: skip
    handle = cache(bert_model, "embeddings", "encoder.layer.0", "encoder.layer.1")
    ids = torch.randint(0, 50, (4, 6))
    with torch.inference_mode():
        want = bert_model(input_ids=ids).last_hidden_state
        got = bert_model(input_ids=ids).last_hidden_state  # the chain's inner keys come from hashing
    assert torch.equal(got, want) and [handle.stats()[p]["hits"] for p in handle.paths] == [4, 4, 4]


def test_a_shared_non_batch_argument_is_hashed_once_while_unchanged(monkeypatch) -> None:
    # GPT-2 passes one position_ids tensor to every block: on a GPU each hash is a copy to the host that
    # waits for the card, so it is hashed once per step, and again only once it changed.
    from frozen._cache import keys as _cache_key

    copies = []  # each hash of a whole tensor copies it to the host, then digests its bytes
    digest_rows = _cache_key._row_digests
    monkeypatch.setattr(_cache_key, "_row_digests", lambda t, rows: copies.append(t.shape) or digest_rows(t, rows))
    positions = torch.arange(6)[None]
    first = _cache_key._whole_digest(positions)
    assert _cache_key._whole_digest(positions) == first and len(copies) == 1
    positions.add_(1)
    assert _cache_key._whole_digest(positions) != first and len(copies) == 2
    assert _cache_key._whole_digest(torch.arange(6)[None] + 1) == _cache_key._whole_digest(positions)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0) -> dict:
        out = self.embed(ids) * scale
        if mask is not None:
            out = out * mask[..., None]
        return {"hidden": out, "pair": (out.sum(-1), None)}


def test_every_input_is_part_of_the_key_and_structures_are_rebuilt() -> None:
    model = frozen.freeze(nn.Sequential(TwoInputs()), "0")
    handle = cache(model, "0")
    ids = torch.randint(0, 10, (4, 5))
    ones, half = torch.ones(4, 5), torch.ones(4, 5)
    half[0, 2] = 0.5
    plain = TwoInputs.forward
    for mask, scale in ((ones, 1.0), (half, 1.0), (ones, 2.0), (None, 1.0)):
        got = model[0](ids, mask=mask, scale=scale)
        want = plain(model[0], ids, mask=mask, scale=scale)
        assert set(got) == {"hidden", "pair"} and got["pair"][1] is None
        torch.testing.assert_close(got["hidden"], want["hidden"], **TOL)
        torch.testing.assert_close(got["pair"][0], want["pair"][0], **TOL)
    assert handle.stats()["0"]["hits"] == 3  # rows 1-3 of `half` equal rows of `ones`; row 0 differs
    # A batch mixing seen and unseen samples computes only the unseen ones, at a smaller batch size.
    mixed = torch.cat([ids[:2], torch.randint(0, 10, (3, 5))])
    got = model[0](mixed, mask=None, scale=1.0)["hidden"]
    torch.testing.assert_close(got, plain(model[0], mixed)["hidden"], **TOL)
    assert handle.stats()["0"]["hits"] == 5 and handle.stats()["0"]["misses"] == 13 + 3


class Inverted(nn.Module):
    """``~mask``: logical not for a bool mask, bitwise not for a uint8 one (the same bytes, other results)."""

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return (~mask).float()


def test_rows_with_the_same_bytes_in_another_dtype_are_other_samples() -> None:
    # A bool row is hashed as its bytes; so is a uint8 row of 0s and 1s. Keyed by the bytes alone,
    # the bool call was answered with the uint8 call's output (254 where 0 is right).
    model = frozen.freeze(nn.Sequential(Inverted()), "0")
    handle = cache(model, "0")
    as_bytes = torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8)
    assert torch.equal(model(as_bytes), torch.tensor([[254.0, 255.0], [255.0, 254.0]]))
    assert torch.equal(model(as_bytes.bool()), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert handle.stats()["0"]["hits"] == 0 and handle.stats()["0"]["misses"] == 4


def test_content_keys_hash_rows_where_they_are_by_content_dtype_and_row_shape() -> None:
    # Rows are hashed with one multilinear 128-bit hash computed by tensor operations where the rows are
    # (it replaced SHA-256 / BLAKE2b on the host, which copied every batch to the host): each row gets one
    # key, by content and not identity, and the same bytes in another dtype or row shape are another key.
    from frozen._cache import keys as _cache_key

    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(3, 2))), "0")
    calls = count_forwards(model[0])
    handle = cache(model, "0")
    data = torch.randn(4, 3)
    keys = _cache_key.call_keys((data,), {}, "0").keys
    assert len(set(keys)) == 4 and all(len(k) == 16 for k in keys)
    assert _cache_key.call_keys((data.clone(),), {}, "0").keys == keys  # content, not identity
    assert _cache_key.call_keys((data[[2, 0]].clone(),), {}, "0").keys == [keys[2], keys[0]]  # rows, not batches
    assert not set(_cache_key.call_keys((data.view(torch.int32),), {}, "0").keys) & set(keys)  # another dtype
    assert not set(_cache_key.call_keys((data.reshape(4, 3, 1),), {}, "0").keys) & set(keys)  # another shape
    model(data)
    model(data.clone())
    model(data[[2, 0]].clone())
    assert handle.stats()["0"]["misses"] == 4 and handle.stats()["0"]["hits"] == 6 and calls == [1 + CHECK]
    torch.testing.assert_close(model(data), model[0].forward(data), rtol=0, atol=0)


def test_chained_bert_prefix_hits_and_returns_model_outputs() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0  # layer 2 trains: no randomness
    bert = frozen.freeze(BertModel(config), "embeddings", "encoder.layer.0-1")
    ids, mask = torch.randint(0, 50, (6, 7)), torch.ones(6, 7, dtype=torch.long)
    mask[0, 5:] = 0
    bert.train()
    want = bert(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    handle = cache(bert, "embeddings", "encoder.layer.0", "encoder.layer.1")
    for _ in range(2):
        got = bert(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(got.last_hidden_state, want, **TOL)
    stats = handle.stats()
    assert [stats[p]["forwards"] for p in handle.paths] == [1, 1, 1]
    assert [stats[p]["hits"] for p in handle.paths] == [6, 6, 6]
    got.last_hidden_state.sum().backward()  # layer 2 trains on top of the cached prefix
    assert bert.encoder.layer[2].output.dense.weight.grad is not None


def test_a_part_frozen_by_a_frozen_wrapper_hits_without_settling_by_hand() -> None:
    # Unsettled, the Frozen wrapper detached its parameters and switched its module to eval at every
    # call; the snapshot took each call for a changed part: invalidated every time, never a hit.
    torch.manual_seed(0)
    model = nn.Sequential(frozen.Frozen(nn.Sequential(nn.Linear(3, 4), nn.ReLU())), nn.Linear(4, 1)).train()
    reference = copy.deepcopy(model)
    calls = count_forwards(model[0])
    handle = cache(model, "0")
    x = torch.randn(6, 3)
    for rows in (torch.arange(6), torch.randperm(6), torch.randperm(6)):
        torch.testing.assert_close(model(x[rows]), reference(x[rows]), **TOL)
    assert calls == [1 + CHECK] and handle.stats()["0"]["hits"] == 12 and handle.stats()["0"]["invalidations"] == 0


def test_sample_ids_key_batches_without_reading_their_inputs(monkeypatch) -> None:
    import frozen._cache.keys as cache_key

    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Conv1d(2, 3, 1), nn.ReLU()), nn.Conv1d(3, 1, 1)), "0")
    reference = copy.deepcopy(model)
    calls = count_forwards(model[0])
    handle = cache(model, "0")
    data = torch.randn(8, 2, 5)

    def no_hashing(*_args, **_kwargs):
        raise AssertionError("inputs were hashed inside handle.samples(...)")

    monkeypatch.setattr(cache_key, "_row_digests", no_hashing)
    for epoch in range(2):
        for rows in torch.randperm(8, generator=torch.Generator().manual_seed(epoch)).split(4):
            with handle.samples(rows):
                torch.testing.assert_close(model(data[rows]), reference(data[rows]), rtol=0, atol=0)
    assert calls == [2 + CHECK] and {k: handle.stats()["0"][k] for k in ("hits", "misses")} == {"hits": 8, "misses": 8}
    with handle.samples(list(range(8))):  # same ids, other row shape: other inputs, so a miss, not a stale hit
        assert model(torch.randn(8, 2, 7)).shape == (8, 1, 7)
    assert calls == [3 + CHECK]

    before = handle.stats()["0"]
    with pytest.raises(CacheError, match=r"gave 3 ids, but the part at '0' received a batch of 4"):
        with handle.samples([0, 1, 2]):
            model(data[:4])
    with pytest.raises(CacheError, match=r"1-D integer tensor.*float32"):
        with handle.samples(torch.zeros(4)):
            pass
    assert {k: handle.stats()["0"][k] for k in ("hits", "misses", "entries")} == {
        k: before[k] for k in ("hits", "misses", "entries")
    }
    monkeypatch.undo()  # outside a block the inputs are the key again
    model(data[:4])
    assert calls == [4 + CHECK]  # content keys and id keys never meet
