"""What the Lightning tests share: the warning filters for tiny CPU runs, data, a quiet Trainer."""

from __future__ import annotations

import lightning
import pytest
import torch
from torch import nn

# Lightning's own advice for tiny CPU runs, not about frozen: keep them out of the error filter.
QUIET = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*tensorboardX.*:UserWarning"),
    # lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*ddp_spawn.*:UserWarning"),
]


def loader(samples: int = 32) -> torch.utils.data.DataLoader:
    """Seeded 4-feature, 2-class samples in batches of 8."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(samples, 4, generator=g), torch.randint(0, 2, (samples,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


def trainer(callbacks: list, epochs: int, **options: object) -> lightning.Trainer:
    """A CPU Trainer with no logger, checkpoints, progress bar or model summary."""
    return lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **options,
    )


class Classifier(lightning.LightningModule):
    """``head(backbone(x))`` trained with cross-entropy on ``loader()`` batches; subclasses build both."""

    backbone: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)
