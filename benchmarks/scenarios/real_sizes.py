"""Beyond the ideal at the sizes people train: cached prefixes and a lean middle of real model sizes.

The models of ``scenarios/cache.py`` are tiny (hidden 128-256, 32x32 images): on a GPU every step
is launch-bound and says nothing about real fine-tunes. These scenarios use the sizes people
train, built from transformers configs with random weights (nothing is downloaded):

* ``gpu-probe-vit-b16``: a linear probe on a frozen ViT-B/16 at 224x224, batch 64;
* ``gpu-bert-base``: BERT-base, embeddings + layers 0-7 of 12 frozen and cached (sequence 128);
* ``gpu-gpt2-small``: GPT-2 small (124M), blocks 0-5 of 12 frozen and cached (sequence 128);
* ``gpu-resnet50-lean``: ResNet-50 at 224 with a frozen conv-BN middle (stages 1-2) that
  gradients cross, ``frozen.lean``.

Variants as in ``scenarios/cache.py`` (ideal, its A/A control, ``freeze``, ``cache (fill)`` = epoch 1,
``cache`` = epochs 2+, ``cache (ids)``, ``replay (bound)``), plus ``features (floor)`` for the
probe: the backbone's features computed once, the head trained on them -- no cache can beat it.
A cached transformer prefix is one part per run of layers (``"encoder.layer.0-7"``): only the
run's last output is stored. Every scenario has a tiny mode (CPU smoke test); the real sizes
run on a GPU only (``devices``), through ``benchmarks/gpu.sh``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from frozen import lean

from ..harness import Bar, Epochs, Scenario, Setup, Workload, apply_variant, frozen_keys, models
from .cache import IDS, REPLAY, cache_variant, cached_epochs, frozen_on_epochs

__all__ = ["FLOOR", "SCENARIOS"]

FLOOR = "features (floor)"
CACHED = ("ideal", "freeze", "cache (fill)", "cache", IDS)


class Probe(nn.Module):
    """A ViT backbone from a config and a linear head on the CLS token."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        if tiny:
            config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64)  # fmt: skip
        else:  # ViT-B/16 at 224
            config = ViTConfig(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                               num_attention_heads=12, intermediate_size=3072)  # fmt: skip
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
        self.backbone = ViTModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x).last_hidden_state[:, 0])


class Classifier(nn.Module):
    """BERT with a 2-class head on the first token."""

    def __init__(self, tiny: bool) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        size: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
        if not tiny:  # BERT-base
            size = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        config = BertConfig(vocab_size=30522, max_position_embeddings=512, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, **size)  # fmt: skip
        self.bert = BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])


def _probe_data(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    torch.manual_seed(0)
    batch, side = (4, 16) if setup.tiny else (64, 224)
    n = 2 * batch if setup.tiny else 4 * batch
    return Probe(setup.tiny), (torch.randn(n, 3, side, side), torch.randint(0, 1000, (n,))), batch


def _bert_data(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    torch.manual_seed(0)
    batch, length = (2, 16) if setup.tiny else (32, 128)
    n = 4 * batch
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, length * 3 // 4 :] = 0  # some padded sequences (fixed length: keys stay the same per sample)
    return Classifier(setup.tiny), (torch.randint(0, 30522, (n, length)), mask, torch.randint(0, 2, (n,))), batch


def _gpt2_data(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, ...], int]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    batch, length = (2, 16) if setup.tiny else (16, 128)
    size: dict[str, Any] = (
        dict(n_embd=32, n_layer=2, n_head=2) if setup.tiny else dict(n_embd=768, n_layer=12, n_head=12)
    )
    config = GPT2Config(vocab_size=50257, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True, use_cache=False, **size)  # fmt: skip
    model = GPT2LMHeadModel(config)
    return model, (torch.randint(0, config.vocab_size, (4 * batch, length)),), batch


def _classify(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    *inputs, labels = batch
    return F.cross_entropy(model(*inputs), labels)


_POSITIONS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _language_model(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    # position_ids passed as one tensor object every step (in every variant): with sample ids the cache keys a
    # tensor that is not split by sample by its identity, so a fresh one per step would cost a copy to the host.
    ids = batch[0]
    key = (ids.shape[1], ids.device)
    if key not in _POSITIONS:
        _POSITIONS[key] = torch.arange(ids.shape[1], device=ids.device)[None]
    return model(input_ids=ids, labels=ids, position_ids=_POSITIONS[key]).loss


def _builder(
    make: Callable[[Setup], tuple[nn.Module, tuple[torch.Tensor, ...], int]],
    frozen_parts: Callable[[Setup], list[str]],
    cached: Callable[[Setup], list[str]],
    chain: Callable[[Setup], list[str]],
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
) -> Callable[[str, Setup], Workload]:
    """Train the rest with AdamW while ``frozen_parts`` are frozen; cache ``cached``; ``chain``: the replay's modules."""

    def build(variant: str, setup: Setup) -> Workload:
        model, epochs, params = frozen_on_epochs(make, setup, frozen_parts(setup), variant in ("ideal", FLOOR))
        if variant == FLOOR:
            return _floor(model, epochs, setup, frozen_parts(setup))
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        handle = cache_variant(model, variant, cached(setup), chain(setup), epochs, loss_fn, "16GB")
        keys = frozen_keys(model, frozen_parts(setup), variant)
        return cached_epochs(variant, model, epochs, optimizer, handle, loss_fn, loss_fn is _classify, keys)

    return build


def _floor(model: nn.Module, epochs: Epochs, setup: Setup, parts: list[str]) -> Workload:
    """The linear probe's floor: the backbone's CLS features computed once, the head trained on them."""
    model = cast(Probe, model)  # only the probe scenario has a floor
    features = []
    with torch.no_grad():
        for rows in torch.arange(len(epochs.data[0])).split(epochs.batch):
            features.append(model.backbone(pixel_values=epochs.data[0][rows.to(setup.device)]).last_hidden_state[:, 0])
    table = torch.cat(features)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-4, weight_decay=0.01)
    first = epochs.first_batch()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        epochs.next()
        F.cross_entropy(model.head(table[epochs.rows]), epochs.data[1][epochs.rows]).backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(*first[:-1])

    return Workload(step, model, optimizer, frozen_keys(model, parts, "ideal"), probe=probe)


def _lean_data(setup: Setup) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    if setup.tiny:
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic")
        batch, side = 2, 32
    else:  # ResNet-50
        config = ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                              layer_type="bottleneck")  # fmt: skip
        batch, side = 32, 224
    config.num_labels = 1000
    model = ResNetForImageClassification(config)
    models.as_if_pretrained(model)
    return model, (torch.randn(batch, 3, side, side), torch.randint(0, 1000, (batch,)))


_MIDDLE = ["resnet.encoder.stages.1", "resnet.encoder.stages.2"]  # stem and stage 0 train before it, 3 after


def _build_lean(variant: str, setup: Setup) -> Workload:
    model, batch = _lean_data(setup)
    model.to(setup.device)
    batch = (batch[0].to(setup.device), batch[1].to(setup.device))
    params, _ = apply_variant(model, _MIDDLE, "ideal" if variant == "ideal" else "freeze")
    if variant == "lean":
        lean(model, *_MIDDLE)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch[0]).logits, batch[1]).backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(batch[0]).logits

    def figures() -> dict[str, float | int | str]:
        return {"middle saved MB": round(_middle_saved_bytes(model, batch[0]) / 2**20, 2)}

    return Workload(step, model, optimizer, frozen_keys(model, _MIDDLE, variant), probe=probe, figures=figures)


def _middle_saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes the frozen stages alone save for backward when a gradient crosses them (each storage once).

    The whole step's figure includes the trainable stem, stage 0 and stage 3, which lean never
    touches (54 % of the ideal's bytes at ResNet-50): this is the part lean is about.
    """
    resnet: Any = model.resnet  # transformers ResNetModel: its stages are attributes torch types loosely
    with torch.no_grad():
        hidden = resnet.encoder.stages[0](resnet.embedder(images))
    hidden.requires_grad_(True)
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), hidden]}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in own:
            seen[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = resnet.encoder.stages[2](resnet.encoder.stages[1](hidden))
    out.sum().backward()
    return sum(seen.values())


def _vit_parts(setup: Setup) -> list[str]:
    return ["backbone"]


def _bert_frozen(setup: Setup) -> list[str]:
    lower = 2 if setup.tiny else 8
    return ["bert.embeddings", *(f"bert.encoder.layer.{i}" for i in range(lower))]


def _bert_cached(setup: Setup) -> list[str]:
    return ["bert.embeddings", f"bert.encoder.layer.0-{1 if setup.tiny else 7}"]


def _gpt2_frozen(setup: Setup) -> list[str]:
    lower = 1 if setup.tiny else 6
    return ["transformer.wte", "transformer.wpe", *(f"transformer.h.{i}" for i in range(lower))]


def _gpt2_cached(setup: Setup) -> list[str]:
    return ["transformer.h.0"] if setup.tiny else ["transformer.h.0-5"]


_FILL = Bar("first (filling) epoch step time / ideal", "cache (fill)", "ideal", 1.05)
_ABOUT = (
    " Variants: `cache (fill)` = epoch 1 (store emptied before each step), `cache` = epochs 2+ (every sample hits), "
    "`cache (ids)` = keyed by the dataset rows (`handle.samples(rows)`), `replay (bound)` = the cached chain's output "
    "recorded per dataset row and replayed by index (the best any cache can do). Store on the device; float32."
)


def _prefix(key: str, title: str, about: str, build: Callable[[str, Setup], Workload]) -> Scenario:
    return Scenario(
        key=key,
        title=title,
        about=about + _ABOUT,
        build=build,
        variants=(*CACHED, REPLAY),
        bars=(_FILL, Bar("cached prefix step time / replay bound (the cache's own cost)", "cache", REPLAY, 1.05)),
        inner=2,
        rss=False,
        devices=("cuda",),
    )


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="gpu-probe-vit-b16",
        title="ViT-B/16 linear probe at 224, batch 64, frozen backbone cached",
        about="ViT-B/16 (12 layers, hidden 768, 224x224 images) from a config, frozen; a 1000-class linear head on "
        "the CLS token trains with AdamW; 256 random images reshuffled each epoch. `features (floor)` = the "
        "CLS features computed once, the head trained on them." + _ABOUT,
        build=_builder(_probe_data, _vit_parts, _vit_parts, _vit_parts, _classify),
        variants=(*CACHED, FLOOR),
        bars=(
            Bar("cached epochs 2+ step time / ideal", "cache", "ideal", 0.05),
            Bar("cached epochs 2+ step time / precomputed features", "cache", FLOOR, 1.1),
            _FILL,
        ),
        inner=2,
        rss=False,
        devices=("cuda",),
    ),
    _prefix(
        "gpu-bert-base",
        "BERT-base, embeddings + layers 0-7 of 12 frozen and cached, sequence 128",
        "BERT-base (hidden 768) + 2-class head; embeddings and layers 0-7 frozen and cached as two parts (the "
        "embeddings, and the run `bert.encoder.layer.0-7` storing layer 7's output only), layers 8-11 and the "
        "head train; 128 sequences of 128 tokens (a third padded), batch 32.",
        _builder(_bert_data, _bert_frozen, _bert_cached, _bert_frozen, _classify),
    ),
    _prefix(
        "gpu-gpt2-small",
        "GPT-2 small (124M), blocks 0-5 of 12 frozen and cached, sequence 128",
        "GPT-2 small (12 blocks, hidden 768, vocabulary 50257, wte tied with lm_head); wte, wpe and blocks 0-5 "
        "frozen (lm_head too, tied), the run `transformer.h.0-5` cached (block 5's output stored), blocks 6-11 "
        "and ln_f train; 64 sequences of 128 tokens, batch 16; `position_ids` passed as one tensor.",
        _builder(_gpt2_data, _gpt2_frozen, _gpt2_cached, lambda s: _gpt2_frozen(s)[2:], _language_model),
    ),
    Scenario(
        key="gpu-resnet50-lean",
        title="ResNet-50 at 224, batch 32, frozen conv-BN middle (stages 1-2), lean backward",
        about="ResNet-50 from transformers' `ResNetConfig`; stem, stage 0, stage 3 and the classifier train, stages "
        "1-2 are frozen (eval-mode BatchNorm with non-trivial statistics) and gradients cross them. `lean` = "
        "frozen.freeze + frozen.lean: input-gradient-only convolutions (transformers' conv layers are no "
        "`nn.Sequential`, so nothing is folded).",
        build=_build_lean,
        variants=("ideal", "freeze", "lean"),
        bars=(
            Bar("frozen stages' saved bytes / ideal", "lean", "ideal", 0.5, "<=", "middle saved MB"),
            Bar("step time / ideal", "lean", "ideal", 1.0),
        ),
        inner=2,
        rss=False,
        devices=("cuda",),
    ),
)
