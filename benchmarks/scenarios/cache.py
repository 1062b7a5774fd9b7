"""Cached frozen prefixes over shuffled epochs: a ViT linear probe, BERT and GPT-2 prefixes.

* ``probe-vit``: a linear probe on a frozen ViT over several shuffled epochs. ``cache (fill)``
  is the first epoch (every sample missed and stored: the store is emptied before each
  step), ``cache`` is epochs 2+ (the store was filled by one pass over the dataset at build
  time, so every sample hits and the backbone never runs).
* ``cache-bert`` / ``cache-gpt2``: partial freeze of a transformer, the embeddings and the
  lower layers frozen and cached as a chain, the upper layers trained.

Every variant trains the same parts with AdamW on the same shuffled batches of one fixed
dataset; ``ideal`` is ``requires_grad_(False)`` + ``eval()`` on the frozen parts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

import frozen
from frozen import cache, cache_stats

from ..harness import Bar, Epochs, Scenario, Setup, Workload, apply_variant, classify, frozen_keys, models, replay

__all__ = ["IDS", "REPLAY", "SCENARIOS", "cache_figures", "cache_variant", "cached_epochs", "frozen_on_epochs"]

CACHED = ("ideal", "freeze", "cache (fill)", "cache")
REPLAY = "replay (bound)"
IDS = "cache (ids)"  # keyed by dataset row ids (handle.samples), not by hashing the inputs


class _Probe(nn.Module):
    """A ViT backbone from a config (nothing downloaded) and a linear head on the CLS token."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        size: dict[str, Any] = dict(
            image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2
        )
        if not tiny:
            size = dict(image_size=32, patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=4)
        config = ViTConfig(**size, intermediate_size=4 * size["hidden_size"])
        self.backbone = ViTModel(config, add_pooling_layer=False)
        self.head = nn.Linear(size["hidden_size"], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x).last_hidden_state[:, 0])


def _vit(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    torch.manual_seed(0)
    batch = 4 if setup.tiny else 32
    side = 16 if setup.tiny else 32
    n = 2 * batch if setup.tiny else 4 * batch
    return _Probe(setup.tiny), (torch.randn(n, 3, side, side), torch.randint(0, 10, (n,))), batch


def _bert(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    batch = 2 if setup.tiny else 8
    model, data = models.text_classifier(4 * batch, 16, 64, 2) if setup.tiny else models.text_classifier(4 * batch)
    return model, data, batch


def _gpt2(setup: Setup, layers: int = 4) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    batch = 2 if setup.tiny else 8
    model, (ids,) = models.gpt2_lm(4 * batch, 16, 32, 2) if setup.tiny else models.gpt2_lm(4 * batch, layers=layers)
    model.config.use_cache = False  # a KV cache object is not a per-sample output
    return model, (ids,), batch


def _language_model(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(input_ids=batch[0], labels=batch[0]).loss


def cache_figures(model: nn.Module) -> Callable[[], dict[str, float | int | str]]:
    def figures() -> dict[str, float | int | str]:
        stats = cache_stats(model)
        if not stats:
            return {}
        first = next(iter(stats.values()))
        total = {k: sum(s[k] for s in stats.values()) for k in ("hits", "misses", "forwards")}
        return {**total, "cache MB": round(first["bytes"] / 2**20, 2)}

    return figures


def frozen_on_epochs(
    make: Callable[[Setup], tuple[nn.Module, tuple[torch.Tensor, ...], int]],
    setup: Setup,
    parts: list[str],
    ideal: bool,
) -> tuple[nn.Module, Epochs, list]:
    """The model on the device with ``parts`` frozen (by hand if ``ideal``, else by frozen), its epochs, what trains."""
    model, data, batch = make(setup)
    model.to(setup.device)
    epochs = Epochs(tuple(t.to(setup.device) for t in data), batch)
    with warnings.catch_warnings():  # GPT-2: freezing wte freezes the tied lm_head too, as the ideal does
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        params, _ = apply_variant(model, parts, "ideal" if ideal else "freeze")
    return model, epochs, params


def cache_variant(
    model: nn.Module,
    variant: str,
    cached: list[str],
    chain: list[str],
    epochs: Epochs,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    budget: str,
) -> Any:
    """The cache handle of a ``cache*`` variant (on the device); for ``replay (bound)``, ``chain`` replayed."""
    handle = cache(model, *cached, budget=budget, store="device") if variant.startswith("cache") else None
    if variant == REPLAY:
        replay(model, [model.get_submodule(p) for p in chain], epochs, loss_fn)
    return handle


def cached_epochs(
    variant: str,
    model: nn.Module,
    epochs: Epochs,
    optimizer: torch.optim.Optimizer,
    handle: Any,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    classifies: bool,
    keys: Callable[[], dict[str, torch.Tensor]],
) -> Workload:
    """The step every cached-prefix scenario times (here and in ``real_sizes.py``), for one variant.

    ``cache`` and ``cache (ids)`` time epochs 2+ (one pass over the dataset filled the store
    first), ``cache (fill)`` the first epoch (the store emptied before each step); ``cache
    (ids)`` keys samples by their dataset rows inside ``handle.samples``. ``classifies``: the
    model takes the batch's inputs and returns logits (else a language model's ``input_ids``).
    """
    first = epochs.first_batch()

    def keyed() -> AbstractContextManager:
        return handle.samples(epochs.host_rows) if variant == IDS and handle is not None else nullcontext()

    def fill(batch: tuple[torch.Tensor, ...]) -> None:
        with keyed():
            loss_fn(model, batch)

    if variant in ("cache", IDS):  # epochs 2+: one pass over the dataset (epoch 1's order) filled the store
        epochs.fill(fill)

    def step() -> None:
        if variant == "cache (fill)" and handle is not None:
            handle.store.drop()  # the first epoch: no sample seen before
        optimizer.zero_grad(set_to_none=True)
        batch = epochs.next()
        with keyed():
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(*first[:-1]) if classifies else model(input_ids=first[0]).logits

    return Workload(step, model, optimizer, keys, probe=probe, figures=cache_figures(model))


def _cached_builder(
    make: Callable[[Setup], tuple[nn.Module, tuple[torch.Tensor, ...], int]],
    parts: Callable[[Setup], list[str]],
    cached: Callable[[Setup], list[str]],
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
) -> Callable[[str, Setup], Workload]:
    """Builder: train the rest with AdamW while ``parts`` are frozen; cache variants cache ``cached``."""

    def build(variant: str, setup: Setup) -> Workload:
        model, epochs, params = frozen_on_epochs(make, setup, parts(setup), variant == "ideal")
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        handle = cache_variant(model, variant, cached(setup), cached(setup), epochs, loss_fn, "4GB")
        keys = frozen_keys(model, parts(setup), variant)
        return cached_epochs(variant, model, epochs, optimizer, handle, loss_fn, loss_fn is classify, keys)

    return build


def _bert_parts(setup: Setup) -> list[str]:
    lower = 1 if setup.tiny else 2
    return ["backbone.embeddings", *(f"backbone.encoder.layer.{i}" for i in range(lower))]


def _gpt2_parts(setup: Setup, lower: int = 2) -> list[str]:
    lower = 1 if setup.tiny else lower
    return ["transformer.wte", "transformer.wpe", *(f"transformer.h.{i}" for i in range(lower))]


def _fill_bar() -> Bar:
    return Bar("first (filling) epoch step time / ideal", "cache (fill)", "ideal", 1.05)


_ABOUT_CACHE = (
    "Variants: `cache (fill)` = epoch 1 (store emptied before each step: every sample is hashed, computed, "
    "stored); `cache` = epochs 2+ (store filled by one pass at build time: every sample hits); `cache (ids)` = "
    "the same, keyed by the batch's dataset rows (`handle.samples(rows)`) instead of hashing inputs. Store on the device."
)
_ABOUT_REPLAY = (
    " `replay (bound)` = the ideal with the cached chain's output recorded per dataset row and replayed by "
    "index (no hashing, no store): the best any cache of these parts can do, so `cache / replay` is the "
    "cache's own overhead and `replay / ideal` what this split allows."
)


def _prefix_scenario(key: str, title: str, about: str, build: Callable[[str, Setup], Workload]) -> Scenario:
    """A partially frozen transformer whose frozen prefix is cached, with the cache, ids and replay variants."""
    bars = (
        Bar("cached prefix step time / ideal", "cache", "ideal", 0.8),
        _fill_bar(),
        Bar("cached prefix step time / replay bound (the cache's own cost)", "cache", REPLAY, 1.05),
    )
    return Scenario(
        key=key,
        title=title,
        about=f"{about} {_ABOUT_CACHE}{_ABOUT_REPLAY}",
        build=build,
        variants=(*CACHED, IDS, REPLAY),
        bars=bars,
        inner=2,
        rss=False,
        requires=("transformers",),  # the model is built from a transformers config
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="probe-vit",
        title="ViT linear probe over shuffled epochs, frozen backbone cached",
        about="ViT (6 layers, hidden 192, 32x32 images, patch 4) from a config, frozen; a linear head on the CLS "
        "token trains with AdamW; 128 synthetic images, batch 32, reshuffled each epoch. " + _ABOUT_CACHE,
        build=_cached_builder(_vit, lambda s: ["backbone"], lambda s: ["backbone"], classify),
        variants=(*CACHED, IDS),
        bars=(Bar("cached epochs 2+ step time / ideal", "cache", "ideal", 0.05), _fill_bar()),
        inner=2,
        rounds=(6, 30),
        rss=False,
        requires=("transformers",),  # the model is built from a transformers config
    ),
    _prefix_scenario(
        "cache-bert",
        "BERT partial freeze, embeddings + lower layers cached",
        "4-layer BERT (hidden 256, sequences of 64) + 2-class head; embeddings and layers 0-1 frozen and "
        "cached as a chain, layers 2-3 and the head train; 32 sequences, batch 8.",
        _cached_builder(_bert, _bert_parts, _bert_parts, classify),
    ),
    _prefix_scenario(
        "cache-gpt2",
        "GPT-2 partial freeze, lower blocks cached",
        "4-block GPT-2 LM (hidden 128, sequences of 64, wte tied with lm_head); wte, wpe and blocks 0-1 "
        "frozen (tied='freeze': lm_head too), blocks 0-1 cached, blocks 2-3 and ln_f train; 32 sequences, batch 8.",
        _cached_builder(_gpt2, _gpt2_parts, lambda s: _gpt2_parts(s)[2:], _language_model),
    ),
    _prefix_scenario(
        "cache-gpt2-deep",
        "GPT-2, a larger frozen share: lower 4 of 6 blocks cached",
        "Added after `cache-gpt2` missed its bar at its split, which stays as it was: the same GPT-2 with "
        "6 blocks, wte, wpe and blocks 0-3 frozen and blocks 0-3 cached, blocks 4-5 and ln_f train (by a count of "
        "multiply-adds the cached share is ~32 % of a step, against ~19 % in `cache-gpt2`).",
        _cached_builder(
            lambda s: _gpt2(s, layers=6), lambda s: _gpt2_parts(s, 4), lambda s: _gpt2_parts(s, 4)[2:], _language_model
        ),
    ),
)
