"""What the cache tests share: a ViT linear probe trained over shuffled epochs, a cached two-layer prefix.

``TOL``: outputs replayed from the cache were computed at another batch size / composition than the
uncached call; on CPU they are bit-identical here, the stated bound is float32's torch.testing default
(rtol 1.3e-6, atol 1e-5), which covers batch-size-dependent kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from counting import count_runs
from torch import nn
from transformers import ViTConfig, ViTModel

import frozen

TOL = {"rtol": 1.3e-6, "atol": 1e-5}
# The first filling call of a cached part runs it once more, on the first half of its batch (the
# row-separability check: row i of the output must depend on row i of the inputs only).
CHECK = 1


class Probe(nn.Module):
    """A ViT backbone (frozen) and a linear head on the CLS token (trained)."""

    def __init__(self) -> None:
        super().__init__()
        config = ViTConfig(
            image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
        )  # fmt: skip
        self.backbone = ViTModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x).last_hidden_state[:, 0])


def count_forwards(module: nn.Module) -> list[int]:
    """Count the real runs of ``module``'s computation (its first child runs only then)."""
    return count_runs(next(iter(module.children())))


def train_probe(use_cache: bool, epochs: int = 3, compiler: Any = None) -> tuple[list[float], Probe, list[int], dict]:
    """Train the probe's head over shuffled epochs (through ``torch.compile(model, backend=compiler)`` if given)."""
    torch.manual_seed(0)
    model = frozen.freeze(Probe(), "backbone")
    runner = model if compiler is None else torch.compile(model, backend=compiler)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    calls = count_forwards(model.backbone)
    if use_cache:
        frozen.cache(model, "backbone", budget="4MB")
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    data, labels = torch.randn(24, 3, 16, 16), torch.randint(0, 3, (24,))
    losses, per_epoch = [], []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(24, generator=torch.Generator().manual_seed(epoch))
        start = calls[0]
        for batch in order.split(8):
            loss = nn.functional.cross_entropy(runner(data[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        per_epoch.append(calls[0] - start)
    assert all(torch.equal(v, before[k]) for k, v in model.backbone.state_dict().items())
    return losses, model, per_epoch, frozen.cache_stats(model)


def cached_linear() -> tuple[nn.Sequential, list[int], torch.Tensor]:
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 1)), "0")
    calls = count_forwards(model[0])
    frozen.cache(model, "0")
    x = torch.randn(5, 4)
    model(x)
    model(x)
    assert calls == [1 + CHECK]
    return model, calls, x


def plain_chain(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in (model[0][0], model[0][1], model[1]):
        x = nn.functional.linear(x, layer.weight, layer.bias)
    return x
