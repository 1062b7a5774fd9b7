"""Scenarios users run that the first five lack: partial freezing, tied weights, a BatchNorm
frozen middle, and ``torch.compile`` of a frozen backbone."""

from __future__ import annotations

import time
import types

import torch
from torch.nn import functional as F

import frozen

from . import _models
from ._harness import Workload
from ._registry import Bar, Scenario, Setup
from ._scenarios import settled_bars
from ._variants import apply_variant, fine_tune, frozen_keys

__all__ = ["SCENARIOS"]

BASE = ("unfrozen", "optimizer-side", "grad-masking", "ideal", "Frozen+settle", "freeze")


def _classify(model, batch) -> torch.Tensor:
    *inputs, labels = batch
    return F.cross_entropy(model(*inputs), labels)


def _bert_partial(setup: Setup):
    return _models.text_classifier(2, 16, 64, 2) if setup.tiny else _models.text_classifier()


def _bert_parts(setup: Setup) -> list[str]:
    """Embeddings and the lower half of the encoder layers (2 of 4; 1 of 2 when tiny)."""
    lower = 1 if setup.tiny else 2
    return ["backbone.embeddings", *(f"backbone.encoder.layer.{i}" for i in range(lower))]


def _build_bert_partial(variant: str, setup: Setup) -> Workload:
    return fine_tune(_bert_partial, _bert_parts(setup), _classify)(variant, setup)


def _convbn(setup: Setup):
    return _models.convbn_middle(2, 8, 8, 2) if setup.tiny else _models.convbn_middle()


# ----- tied weights: GPT-2, embeddings frozen, wte still trained through lm_head -----

_TIED_PARTS = ["transformer.wte", "transformer.wpe"]


def _detached_embedding(module: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    # The hand-written white box of the frozen use: the lookup reads a detached weight.
    return F.embedding(ids, module.weight.detach(), module.padding_idx)


def _gpt2_variant(model, variant: str) -> list[torch.nn.Parameter]:
    wte, wpe = model.transformer.wte, model.transformer.wpe
    if variant == "unfrozen":
        return list(model.parameters())
    if variant == "ideal":
        wpe.requires_grad_(False)
        wte.forward = types.MethodType(_detached_embedding, wte)
        wte.eval(), wpe.eval()
        return [p for p in model.parameters() if p.requires_grad]
    if variant == "freeze":
        frozen.freeze(model, *_TIED_PARTS, tied="train")
    else:  # Frozen+settle
        apply_variant(model, _TIED_PARTS, "Frozen+settle", tied="train")
    return frozen.trainable(model)


def _build_gpt2(variant: str, setup: Setup) -> Workload:
    sizes = (2, 16, 64, 1) if setup.tiny else (4, 64, 128, 2)
    model, (ids,) = _models.gpt2_lm(*sizes)
    model.to(setup.device)
    ids = ids.to(setup.device)
    optimizer = torch.optim.AdamW(_gpt2_variant(model, variant), lr=1e-3, weight_decay=0.01)
    model.train()
    if variant == "ideal":
        model.transformer.wte.eval(), model.transformer.wpe.eval()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits

    def check() -> tuple[bool | None, str]:
        if variant == "unfrozen":
            return None, "trains everything"
        wpe_same = torch.equal(snapshot["wpe"], model.transformer.wpe.weight)
        # S4/S9: the tied weight's gradient is lm_head's share only, as in the hand-written ideal.
        reference = _build_gpt2("ideal", setup).model
        reference.load_state_dict(model.state_dict())
        grads = []
        for m in (model, reference):
            m.zero_grad(set_to_none=True)
            m(input_ids=ids, labels=ids).loss.backward()
            grads.append(m.lm_head.weight.grad)
        same = torch.equal(*grads)
        return wpe_same and same, (
            f"wpe {'bit-identical' if wpe_same else 'CHANGED'}; tied wte/lm_head gradient "
            f"{'bit-identical to' if same else 'differs from'} the hand-written detach's"
        )

    snapshot = {"wpe": model.transformer.wpe.weight.detach().clone()}
    return Workload(step, model, optimizer, frozen_keys(model, ["transformer.wpe"], variant), check, probe)


# ----- torch.compile of a frozen backbone -----


def _build_compiled(variant: str, setup: Setup) -> Workload:
    model, batch = _models.mlp_classifier(8, 32, 2) if setup.tiny else _models.mlp_classifier()
    model.to(setup.device)
    batch = tuple(t.to(setup.device) for t in batch)
    params, _ = apply_variant(model, ["backbone"], variant)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    # Tiny mode (the smoke test) traces with dynamo only; inductor takes ~30 s per build on 2 cores.
    compiled = torch.compile(model, backend="eager" if setup.tiny else "inductor")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _classify(compiled, batch).backward()
        optimizer.step()

    start = time.perf_counter()
    step()  # compiles forward and backward
    first = time.perf_counter() - start

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return compiled(batch[0])

    figures = {"first step incl. compile (s)": round(first, 2)}
    return Workload(step, model, optimizer, frozen_keys(model, ["backbone"], variant), None, probe, lambda: figures)


SCENARIOS = (
    Scenario(
        "bert-partial",
        "5. Partial freezing of a transformer: embeddings + lower half of the layers",
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
    ),
    Scenario(
        "gpt2-tied",
        "6. Tied weights: GPT-2 embeddings frozen, `wte` still trained through `lm_head`",
        "2-layer GPT-2 LM (`GPT2Config`, n_embd 128, vocab 2000, dropout 0, `wte` tied with `lm_head`); "
        "batch 4 x 64 tokens; one step = LM loss, `backward()`, AdamW. Frozen: `transformer.wte` and "
        '`transformer.wpe` with `tied="train"` (S9): the embedding lookup is a white box, the tied '
        "weight keeps training through `lm_head`. Ideal, hand-written: `wpe.requires_grad_(False)` and "
        "the lookup done with `wte.weight.detach()`. Correct: `wpe` bit-identical and the tied weight's "
        "gradient bit-identical to the ideal's on the same weights.",
        _build_gpt2,
        ("unfrozen", "ideal", "Frozen+settle", "freeze"),
        {
            "optimizer-side": "the frozen use's weight is lm_head's: leaving it out of the optimizer stops lm_head too",
            "grad-masking": "the tied weight's gradient sums both uses; no mask removes only the embedding's share",
        },
        bars=settled_bars(),
        inner=2,
        rounds=(6, 16),
        rss=False,
    ),
    Scenario(
        "convbn-middle",
        "7. Frozen conv-BatchNorm-ReLU middle (gradients pass through)",
        "A trainable stem conv (3 -> 32), a middle of 6 x conv3x3-BN-ReLU (32 channels, BN with "
        "non-trivial running statistics), a trainable pooled linear head; batch 8 x 3 x 32 x 32; "
        "AdamW. Frozen: `middle` (eval-mode BN: running statistics must stay bit-identical); the stem "
        "gets its gradient through it. The deterministic memory figure is the saved-activation bytes.",
        fine_tune(_convbn, ["middle"], _classify),
        BASE,
        bars=settled_bars()
        + (Bar("`freeze` saved-activation bytes / ideal's", "freeze", "ideal", 1.0, "<=", "saved"),),
        inner=2,
        rounds=(6, 16),
    ),
    Scenario(
        "compile",
        "8. `torch.compile` of a frozen-backbone model",
        "An MLP backbone (4 x Linear(256, 256)-ReLU) and a linear head, batch 64; frozen `backbone`; "
        "the whole model passed to `torch.compile` (inductor) *after* freezing; AdamW (eager). "
        "`ideal` = hand-written freeze + compile; `freeze` = `frozen.freeze` + compile. The first "
        "step (forward and backward compilation) is untimed and reported as a figure.",
        _build_compiled,
        ("ideal", "freeze"),
        bars=settled_bars(names=("freeze",)),
        inner=4,
        rounds=(6, 16),
        rss=False,
    ),
)
