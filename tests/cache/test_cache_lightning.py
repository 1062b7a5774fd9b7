"""The cache recipe inside Lightning's loop: FreezeCallback freezes at set-up, the module caches at fit start.

Run the way users run it -- shuffled DataLoader, several epochs, Lightning's own train/eval
switching, a validation loop (sanity check included; ``torch.no_grad`` inside ``fit``) on
samples the training also sees -- once uncached, once with content keys and once with
sample ids from the dataset's indices; the head must train and validate the same and the
backbone run in the first epoch only. Then ``trainer.validate`` (``torch.inference_mode``,
where the cache stores inference tensors) twice on a cached module.
"""

from __future__ import annotations

import lightning
import pytest
import torch
from counting import count_runs
from lightning_runs import QUIET, trainer
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback

pytestmark = QUIET
TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # the cache's stated bound (docs/cache.md)
SAMPLES, BATCH, EPOCHS = 48, 8, 3
VALIDATION = 24  # the first 24 training samples, in order


class Probe(lightning.LightningModule):
    def __init__(self, keys: str | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.2))
        self.head = nn.Linear(16, 3)
        self.keys = keys  # None: no cache; "content" or "ids"
        self.handle: frozen.CacheHandle | None = None
        self.validation_losses: list[float] = []
        self.runs_after_validation: list[int] = []  # sanity check, then each epoch
        self.runs = count_runs(self.backbone[0])

    def on_fit_start(self) -> None:  # after FreezeCallback.setup froze the backbone
        if self.keys is not None:
            self.handle = frozen.cache(self, "backbone", budget="1MB")

    def on_fit_end(self) -> None:
        if self.handle is not None:
            frozen.uncache(self)

    def _loss(self, batch: list[torch.Tensor]) -> torch.Tensor:
        rows, x, y = batch
        if self.keys == "ids":
            assert self.handle is not None
            with self.handle.samples(rows):
                features = self.backbone(x)
        else:
            features = self.backbone(x)
        return nn.functional.cross_entropy(self.head(features), y)

    def training_step(self, batch: list[torch.Tensor], _index: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: list[torch.Tensor], _index: int) -> None:
        self.validation_losses.append(self._loss(batch).item())

    def on_validation_epoch_end(self) -> None:
        self.runs_after_validation.append(self.runs[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(frozen.trainable(self), lr=0.05)


def _fit(keys: str | None) -> tuple[Probe, lightning.Trainer, torch.utils.data.DataLoader]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(SAMPLES, 6, generator=g), torch.randint(0, 3, (SAMPLES,), generator=g)
    data = torch.utils.data.TensorDataset(torch.arange(SAMPLES), x, y)
    loader = torch.utils.data.DataLoader(
        data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    validation = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(VALIDATION)), batch_size=BATCH)
    model, run = Probe(keys), trainer([FreezeCallback("backbone")], EPOCHS)
    run.fit(model, loader, validation)
    return model, run, validation


@pytest.mark.parametrize("keys", ["content", "ids"])
def test_cached_backbone_in_lightning_trains_the_head_as_uncached_and_runs_once(keys: str) -> None:
    (plain, plain_run, validation), (cached, cached_run, _) = _fit(None), _fit(keys)
    sanity = 2  # Lightning's sanity check: two validation batches before training
    assert plain.runs[0] == sanity + EPOCHS * (SAMPLES + VALIDATION) // BATCH
    # Epoch 1 computes what the sanity check did not store; from then on every sample hits.
    check = 1  # the first filling call runs the backbone once more on half its batch (row-separability check)
    assert 0 < cached.runs_after_validation[1] <= sanity + SAMPLES // BATCH + check
    assert cached.runs_after_validation[1:] == [cached.runs_after_validation[1]] * EPOCHS
    torch.testing.assert_close(torch.tensor(cached.validation_losses), torch.tensor(plain.validation_losses), **TOL)
    for name, value in plain.backbone.state_dict().items():
        assert torch.equal(cached.backbone.state_dict()[name], value)  # frozen: bit-identical
    for name, value in plain.head.state_dict().items():
        torch.testing.assert_close(cached.head.state_dict()[name], value, **TOL)
    assert not torch.equal(plain.head.weight, Probe(None).head.weight)  # the head did train
    assert frozen.cache_stats(cached) == {}  # uncached at fit end
    # trainer.validate runs under torch.inference_mode: what it stores are inference tensors.
    plain_run.validate(plain, validation, verbose=False)
    handle = frozen.cache(cached, "backbone", budget="1MB")
    cached.keys, cached.handle, runs = keys, handle, cached.runs[0]
    for _ in range(2):
        cached_run.validate(cached, validation, verbose=False)
    assert cached.runs[0] == runs + VALIDATION // BATCH + check  # the first validate only
    want = plain.validation_losses[-VALIDATION // BATCH :]
    got = cached.validation_losses[-2 * VALIDATION // BATCH :]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want * 2), **TOL)
