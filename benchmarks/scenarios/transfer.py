"""Frozen backbones fine-tuned, against optimizer-side freezing: BERT, a ResNet with BatchNorm, partial BERT.

The performance contract's ">= 2x faster than optimizer-side freezing" is measured here: a frozen
backbone costs no backward work, while optimizer-side freezing computes every gradient and skips
the update. Partial freezing (embeddings + the lower layers) shows how the gain shrinks when
backward still runs through trained layers above the frozen ones.
"""

from __future__ import annotations

from ..harness import (
    BASE,
    LOW_PRECISION,
    VARIANTS,
    Bar,
    Scenario,
    Setup,
    Workload,
    classify,
    fine_tune,
    models,
    settled_bars,
    speedup_bars,
)

__all__ = ["SCENARIOS"]


def _text(setup: Setup):
    return models.text_classifier(2, 16, 64, 2) if setup.tiny else models.text_classifier()


def _resnet(setup: Setup):
    return models.resnet_classifier(2, 16) if setup.tiny else models.resnet_classifier()


def _bert_parts(setup: Setup) -> list[str]:
    """Embeddings and the lower half of the encoder layers (2 of 4; 1 of 2 when tiny)."""
    lower = 1 if setup.tiny else 2
    return ["backbone.embeddings", *(f"backbone.encoder.layer.{i}" for i in range(lower))]


def _build_bert_partial(variant: str, setup: Setup) -> Workload:
    return fine_tune(_text, _bert_parts(setup), classify)(variant, setup)


SCENARIOS = (
    Scenario(
        "bert",
        "Frozen-backbone fine-tune: transformer encoder",
        "4-layer BERT (hidden 256, 4 heads, FFN 1024, dropout 0; built from `BertConfig`, no download) "
        "and a linear head on the first token; batch 8 x 64 tokens; one step = cross-entropy, "
        "`backward()`, AdamW(lr=1e-3, weight_decay=0.01). Frozen part: `backbone`.",
        fine_tune(_text, ["backbone"], classify),
        VARIANTS + LOW_PRECISION,
        bars=settled_bars() + speedup_bars(),
        inner=2,
        rounds=(6, 16),
        rss=False,
        requires=("transformers",),  # the model is built from a transformers config
    ),
    Scenario(
        "resnet",
        "Frozen-backbone fine-tune: CNN with BatchNorm",
        "A small ResNet (3 stages of conv-BN-ReLU and a residual block, 16/32/64 channels) and a "
        "linear head; batch 16 x 3 x 32 x 32; one step = cross-entropy, `backward()`, AdamW. "
        "Frozen part: `backbone` (its BatchNorm must keep its running statistics).",
        fine_tune(_resnet, ["backbone"], classify),
        VARIANTS + LOW_PRECISION,
        bars=settled_bars() + speedup_bars(),
        inner=2,
        rounds=(6, 16),
    ),
    Scenario(
        "bert-partial",
        "Partial freezing of a transformer: embeddings + lower half of the layers",
        "The `bert` scenario's model (4-layer BERT, hidden 256, dropout 0, linear head; batch 8 x 64), "
        "with `backbone.embeddings` and `backbone.encoder.layer.0-1` frozen; layers 2-3 and the head "
        "train (AdamW, weight_decay=0.01). Backward still runs through the upper layers, so the gain "
        "over optimizer-side freezing is smaller than with the whole backbone frozen.",
        _build_bert_partial,
        BASE,
        bars=settled_bars()
        + (
            Bar(
                "optimizer-side step time / `freeze` (the >= 2x claim, here on partial freezing)",
                "optimizer-side",
                "freeze",
                2.0,
                ">=",
            ),
        ),
        inner=2,
        rounds=(6, 16),
        rss=False,
        requires=("transformers",),  # the model is built from a transformers config
    ),
)
