"""Arguments every sample of a call shares: ``frozen.cache(..., shared=("mask",))``.

A tensor argument whose dimension 0 equals the batch size is taken as per-sample. A
causal mask over a sequence as long as the batch (``nn.TransformerEncoder``, batch 8,
length 8) is not: split, it keyed each sample by the mask row at its *position* (a
shuffled epoch almost never hit) and a batch mixing seen and new samples ran the part on
a slice of the mask, which failed. Named in ``shared``, it is hashed whole.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen
from frozen._cache.api import CacheError, cache, cache_stats
from frozen._cache.part import Part

TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # as in tests/helpers/cached_models.py: replayed rows against a fresh forward
LENGTH = BATCH = 8


class Tagger(nn.Module):
    """A frozen causal ``nn.TransformerEncoder`` (batch first) under a trained per-token head."""

    def __init__(self, positional: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)
        self.positional = positional
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(LENGTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(x, self.mask) if self.positional else self.encoder(x, mask=self.mask)
        return self.head(hidden)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, LENGTH, 16, generator=g), torch.randint(0, 3, (16, LENGTH), generator=g)


def _train(
    shared: tuple[str, ...] | None, positional: bool = False, compiled: bool = False
) -> tuple[list[float], Tagger]:
    model = frozen.freeze(Tagger(positional), "encoder")
    if shared is not None:
        cache(model, "encoder", shared=shared)
    run = torch.compile(model, backend="eager") if compiled else model
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    x, y = _data()
    losses = []
    for epoch in range(3):
        for rows in torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).split(BATCH):
            loss = nn.functional.cross_entropy(run(x[rows]).flatten(0, 1), y[rows].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())
    return losses, model


@pytest.mark.parametrize(
    "positional, compiled", [(False, False), (True, False), (False, True)], ids=["keyword", "positional", "compiled"]
)
def test_a_shared_mask_hits_in_any_order_and_trains_the_head_as_uncached(positional: bool, compiled: bool) -> None:
    # Compiled, the cached encoder is a graph break on each side: the same keys, hits and losses.
    plain_losses, plain = _train(None, positional)
    losses, model = _train(("mask",), positional, compiled)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain_losses), **TOL)
    torch.testing.assert_close(model.head.weight, plain.head.weight, **TOL)
    stats = cache_stats(model)["encoder"]
    # 16 samples: epoch 1 misses each once, shuffled epochs 2-3 hit all 32 (passed by position too)
    assert (stats["misses"], stats["hits"], stats["forwards"]) == (16, 32, 2)


def test_a_batch_of_seen_and_new_samples_runs_the_new_ones_with_the_whole_mask() -> None:
    model = frozen.freeze(Tagger(), "encoder")
    cache(model, "encoder", shared=("mask",))
    x, _ = _data()
    model(x[:8])
    mixed = x[torch.tensor([5, 3, 12, 0, 9, 15, 1, 10])]
    with torch.no_grad():
        plain = model.head(type(model.encoder).forward(model.encoder, mixed, mask=model.mask))
    torch.testing.assert_close(model(mixed), plain, **TOL)
    assert cache_stats(model)["encoder"]["hits"] == 4
    # Another mask is another input: recomputed, never answered from the causal mask's entries
    model.mask = torch.zeros(LENGTH, LENGTH)
    with torch.no_grad():
        unmasked = model.head(type(model.encoder).forward(model.encoder, mixed, mask=model.mask))
    torch.testing.assert_close(model(mixed), unmasked, **TOL)
    assert cache_stats(model)["encoder"]["misses"] == 8 + 4 + 8


def test_unnamed_the_mask_is_split_and_a_mixed_batch_says_to_name_it() -> None:
    # The default takes the (8, 8) mask as per-sample: a sample hits only at the same position
    # in its batch, and a run on the new samples alone gets 4 rows of the mask and fails. The
    # failure keeps torch's error and adds how to fix it.
    model = frozen.freeze(Tagger(), "encoder")
    cache(model, "encoder")
    x, _ = _data()
    model(x[:8])
    model(x[torch.tensor([7, 6, 5, 4, 3, 2, 1, 0])])
    assert cache_stats(model)["encoder"]["hits"] == 0
    with pytest.raises(RuntimeError) as info:
        model(x[torch.tensor([0, 1, 2, 3, 12, 13, 14, 15])])
    assert "frozen.cache(model, 'encoder', shared=('mask',))" in "".join(getattr(info.value, "__notes__", []))


def test_shared_must_name_parameters_of_a_cached_forward_and_a_refusal_changes_nothing() -> None:
    model = frozen.freeze(Tagger(), "encoder")
    with pytest.raises(CacheError, match=r"shared='mask'.*expected a tuple of the parts' forward parameter names"):
        cache(model, "encoder", shared="mask")
    with pytest.raises(CacheError, match=r"no cached part's forward has a parameter 'maks'.*'mask'.*'src'"):
        cache(model, "encoder", shared=("maks",))
    assert cache_stats(model) == {}
    assert not isinstance(model.encoder.__dict__.get("forward"), Part)
