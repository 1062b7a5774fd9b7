"""Gradient checkpointing through frozen middle layers: recomputation and memory.

Hugging Face models checkpoint a layer only while ``self.training`` is true. Freezing a
middle layer that backward still passes through must not switch its checkpointing off.
This scenario counts the frozen layers' forward calls during one forward + backward (2
with checkpointing: the forward and the recomputation; 1 without) and the saved-activation
bytes, and reports what the library does today, whatever it is.
"""

from __future__ import annotations

import torch

import frozen

from ..harness import Bar, Scenario, Setup, Workload, frozen_keys

__all__ = ["SCENARIOS", "FORWARDS"]

FORWARDS = "forwards per frozen layer per step"
_SELECTOR = "bert.encoder.layer.1-2"
_PARTS = ["bert.encoder.layer.1", "bert.encoder.layer.2"]


REENTRANT = " (reentrant)"  # variant suffix: torch.utils.checkpoint's reentrant implementation


def _model(setup: Setup, reentrant: bool):
    from transformers import BertConfig, BertForSequenceClassification

    hidden, length, batch = (32, 8, 2) if setup.tiny else (128, 64, 8)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=hidden,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=length,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.num_labels = 2
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it (the old name warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    ids = torch.randint(0, config.vocab_size, (batch, length))
    return model, ids, torch.randint(0, 2, (batch,))


def _freeze(model, variant: str) -> list[torch.nn.Parameter]:
    if variant == "freeze":
        frozen.freeze(model, _SELECTOR)
        model.train()
        return frozen.trainable(model)
    model.train()
    if variant in ("ideal", "ideal+eval"):
        for path in _PARTS:
            model.get_submodule(path).requires_grad_(False)
            if variant == "ideal+eval":
                model.get_submodule(path).eval()
    return [p for p in model.parameters() if p.requires_grad]


def _build(variant: str, setup: Setup) -> Workload:
    reentrant = variant.endswith(REENTRANT)
    variant = variant.removesuffix(REENTRANT)
    model, ids, labels = _model(setup, reentrant)
    model.to(setup.device)
    ids, labels = ids.to(setup.device), labels.to(setup.device)
    optimizer = torch.optim.AdamW(_freeze(model, variant), lr=1e-3, weight_decay=0.01)
    calls = [0]
    for path in _PARTS:
        # Hooked one level down: the recomputation calls the layer's own forward, which calls this.
        model.get_submodule(path + ".attention").register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()

    def figures() -> dict[str, float | int | str]:
        calls[0] = 0
        step()
        return {FORWARDS: calls[0] / len(_PARTS)}

    def probe() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits

    return Workload(step, model, optimizer, frozen_keys(model, _PARTS, variant), probe=probe, figures=figures)


def _notes(result) -> list[str]:
    rows = {row.variant: row for row in result.rows}
    counts = ", ".join(f"`{name}` {row.figures.get(FORWARDS, '—')}" for name, row in rows.items())
    return [
        f"Forward calls of each frozen layer in one forward + backward: {counts}. 2 means the layer "
        "was recomputed in backward (checkpointing on); 1 means checkpointing was off for it, and "
        "its activations were saved instead (see the saved-activation column)."
    ]


SCENARIOS = (
    Scenario(
        "checkpointing",
        "Gradient checkpointing through frozen middle layers",
        "`BertForSequenceClassification` from a config (4 layers, hidden 128, dropout 0; batch 8 x 64) "
        "with non-reentrant checkpointing (`activation_checkpointing_enable`, formerly `gradient_checkpointing_enable`); frozen middle: "
        f'`frozen.freeze(model, "{_SELECTOR}")` (default `mode="eval"`); backward crosses the frozen layers '
        "to reach layer 0 and the embeddings. `ideal`: `requires_grad_(False)` on layers 1-2, left in "
        "training mode (dropout is 0), so Hugging Face keeps checkpointing them; `ideal+eval`: also "
        "`.eval()`, the hand-written form that switches their checkpointing off. Figure: forward calls "
        "of each frozen layer's attention block per step (2 = recomputed in backward). The ` (reentrant)` "
        "rows use `use_reentrant=True` instead; their saved-activation figure also counts what the "
        "recomputation saves during backward (held one layer at a time, summed here), so compare them "
        "with each other only.",
        _build,
        ("unfrozen", "ideal", "ideal+eval", "freeze", "unfrozen" + REENTRANT, "freeze" + REENTRANT),
        bars=(
            Bar(
                "`freeze` frozen-layer forwards / unfrozen's (checkpointing kept)",
                "freeze",
                "unfrozen",
                1.0,
                ">=",
                FORWARDS,
            ),
            Bar(
                "`freeze (reentrant)` frozen-layer forwards / unfrozen (reentrant)'s",
                "freeze" + REENTRANT,
                "unfrozen" + REENTRANT,
                1.0,
                ">=",
                FORWARDS,
            ),
            Bar("`freeze` saved-activation bytes / ideal's", "freeze", "ideal", 1.0, "<=", "saved"),
            Bar("`freeze` step time / ideal", "freeze", "ideal", 1.03),
        ),
        inner=2,
        rounds=(6, 12),
        rss=False,
        notes=_notes,
        requires=("transformers",),  # the model is built from a transformers config
    ),
)
