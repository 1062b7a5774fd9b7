"""One weight frozen in one use and trained in another: a tied Siamese encoder, GPT-2's wte / lm_head.

The contract's per-use semantics (S4, S9): the frozen use is a white box, and the weight's gradient
is the trained use's share only, bit-identical to the hand-written stop-gradient form.
"""

from __future__ import annotations

import types

import torch
from torch.nn import functional as F

import frozen

from ..harness import Scenario, Setup, Workload, apply_variant, frozen_keys, models, settled_bars

__all__ = ["SCENARIOS"]


def _build_siamese(variant: str, setup: Setup) -> Workload:
    device = setup.device
    encoder, (x1, x2) = models.siamese_encoder(8 if setup.tiny else 64)
    encoder.to(device)
    x1, x2 = x1.to(device), x2.to(device)

    def stop_gradient_target(x: torch.Tensor) -> torch.Tensor:
        # The hand-written white box: the encoder's function with detached weights.
        detached = {k: v.detach() for k, v in encoder.named_parameters()}
        return torch.func.functional_call(encoder, detached, (x,))

    def no_grad_target(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return encoder(x)

    if variant == "unfrozen":
        model = models.Siamese(encoder, target=encoder)
    elif variant == "ideal":
        model = models.Siamese(encoder, target_fn=stop_gradient_target)
    elif variant == "no_grad target":
        model = models.Siamese(encoder, target_fn=no_grad_target)
    elif variant in ("Frozen", "Frozen+settle"):
        model = models.Siamese(encoder, target=frozen.Frozen(encoder, tied="train"))
        if variant == "Frozen+settle":
            frozen.settle(model)
    else:
        raise ValueError(f"variant {variant!r} does not apply to the Siamese scenario")
    model.to(device).train()
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x1, x2).backward()
        optimizer.step()

    def check() -> tuple[bool | None, str]:
        # S4: the encoder's gradient is the one of the trainable branch only.
        if variant == "unfrozen":
            return None, "trains both branches"
        params = list(encoder.parameters())
        got = torch.autograd.grad(model(x1, x2), params)
        reference = models.Siamese(encoder, target_fn=stop_gradient_target)
        reference.predictor = model.predictor
        want = torch.autograd.grad(reference(x1, x2), params)
        same = all(torch.equal(a, b) for a, b in zip(got, want))
        return same, "encoder gradient " + ("bit-identical to" if same else "differs from") + " the stop-gradient one"

    return Workload(step, model, optimizer, dict, check)


# -- GPT-2: embeddings frozen, wte still trained through lm_head ------------------------------

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
    model, (ids,) = models.gpt2_lm(*sizes)
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
            grad = m.get_parameter("lm_head.weight").grad
            assert grad is not None, "lm_head's tied weight got no gradient"
            grads.append(grad)
        same = torch.equal(*grads)
        return wpe_same and same, (
            f"wpe {'bit-identical' if wpe_same else 'CHANGED'}; tied wte/lm_head gradient "
            f"{'bit-identical to' if same else 'differs from'} the hand-written detach's"
        )

    snapshot = {"wpe": model.transformer.wpe.weight.detach().clone()}
    return Workload(step, model, optimizer, frozen_keys(model, ["transformer.wpe"], variant), check, probe)


_SIAMESE_NA = {
    "optimizer-side": "the frozen branch's weights are the trainable branch's weights: leaving them out of the optimizer stops both branches",
    "grad-masking": "the gradient is one sum over both branches; no mask can remove only the frozen branch's share",
    "freeze": "freeze works per module, not per call: the encoder is one module used by both branches, so freezing it freezes the trainable branch too",
}

SCENARIOS = (
    Scenario(
        "siamese",
        "Tied Siamese: one encoder, trainable in one branch, frozen in the other",
        "SimSiam-style: `mse(predictor(encoder(x1)), target(x2))` where `target` is the same encoder "
        "(MLP 256-512-512-128, batch 64). The ideal is hand-written: `torch.func.functional_call(encoder, "
        "{name: p.detach()}, (x2,))` - the same white box as `Frozen` (gradients would still reach `x2`). "
        "`no_grad target` is a reference row: `with torch.no_grad(): encoder(x2)` is cheaper but not a "
        "white box (it also cuts gradients to `x2`). Correctness: the encoder's gradient is bit-identical "
        "to the hand-written stop-gradient gradient (contract S4).",
        _build_siamese,
        ("unfrozen", "ideal", "Frozen", "Frozen+settle", "no_grad target"),
        _SIAMESE_NA,
        bars=settled_bars(names=("Frozen+settle",)),
        inner=6,
        rounds=(6, 24),
        rss=False,
    ),
    Scenario(
        "gpt2-tied",
        "Tied weights: GPT-2 embeddings frozen, `wte` still trained through `lm_head`",
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
        requires=("transformers",),  # the model is built from a transformers config
    ),
)
