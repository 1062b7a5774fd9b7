"""The cache recipe inside Lightning's loop: FreezeCallback freezes at set-up, the module caches at fit start.

Run the way users run it -- shuffled DataLoader, several epochs, Lightning's own train/eval
switching -- once uncached, once with content keys and once with sample ids from the
dataset's indices; the head must train the same and the backbone run in the first epoch only.
"""

from __future__ import annotations

import lightning
import pytest
import torch
from lightning_runs import QUIET, trainer
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback

pytestmark = QUIET
TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # the cache's stated bound (docs/cache.md)
SAMPLES, BATCH, EPOCHS = 48, 8, 3


class Probe(lightning.LightningModule):
    def __init__(self, keys: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.2))
        self.head = nn.Linear(16, 3)
        self.keys = keys  # None: no cache; "content" or "ids"
        self.handle: frozen.CacheHandle | None = None
        self.backbone_runs = 0
        self.backbone[0].register_forward_hook(lambda *_: setattr(self, "backbone_runs", self.backbone_runs + 1))

    def on_fit_start(self) -> None:  # after FreezeCallback.setup froze the backbone
        if self.keys is not None:
            self.handle = frozen.cache(self, "backbone", budget="1MB")

    def on_fit_end(self) -> None:
        if self.handle is not None:
            frozen.uncache(self)

    def training_step(self, batch: list[torch.Tensor], _index: int) -> torch.Tensor:
        rows, x, y = batch
        if self.keys == "ids":
            assert self.handle is not None
            with self.handle.samples(rows):
                features = self.backbone(x)
        else:
            features = self.backbone(x)
        return nn.functional.cross_entropy(self.head(features), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(frozen.trainable(self), lr=0.05)


def _fit(keys: str | None) -> Probe:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)
    data = torch.utils.data.TensorDataset(torch.arange(SAMPLES), x, y)
    loader = torch.utils.data.DataLoader(
        data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    model = Probe(keys)
    trainer([FreezeCallback("backbone")], EPOCHS).fit(model, loader)
    return model


@pytest.mark.parametrize("keys", ["content", "ids"])
def test_cached_backbone_in_lightning_trains_the_head_as_uncached_and_runs_once(keys: str) -> None:
    plain, cached = _fit(None), _fit(keys)
    assert plain.backbone_runs == EPOCHS * SAMPLES // BATCH
    assert cached.backbone_runs == SAMPLES // BATCH  # epoch 1 only: shuffled epochs 2+ hit every sample
    for name, value in plain.backbone.state_dict().items():
        assert torch.equal(cached.backbone.state_dict()[name], value)  # frozen: bit-identical
    for name, value in plain.head.state_dict().items():
        torch.testing.assert_close(cached.head.state_dict()[name], value, **TOL)
    assert not torch.equal(plain.head.weight, Probe(None).head.weight)  # the head did train
    assert frozen.cache_stats(cached) == {}  # uncached at fit end
