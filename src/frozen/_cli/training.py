"""The demo's ingredients: the digits data, a small CNN, and one training loop.

Kept apart from ``_demo.py`` (which decides what to compare and how to show it) so
that each piece can be read on one screen. Needs the ``demo`` extra (scikit-learn);
nothing is downloaded: ``load_digits`` ships with scikit-learn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["Split", "digits_splits", "DigitNet", "Curve", "train", "accuracy"]


@dataclass
class Split:
    """Images (N, 1, 8, 8) in [0, 1] and labels 0..4 (the group's digits renumbered)."""

    x: torch.Tensor
    y: torch.Tensor


def digits_splits(*, seed: int, shots: int) -> tuple[Split, Split, Split]:
    """Return (source, target_train, target_test).

    The source task is digits 0-4 (every image); the target task is digits 5-9 with
    only ``shots`` labelled images per class for training and the rest for testing.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise SystemExit("frozen demo needs scikit-learn: pip install 'frozen[demo]'") from None
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    source = Split(x[y < 5], y[y < 5])
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for digit in range(5, 10):
        idx = torch.nonzero(y == digit).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        train_idx.append(idx[:shots])
        test_idx.append(idx[shots:])
    tr, te = torch.cat(train_idx), torch.cat(test_idx)
    return source, Split(x[tr], y[tr] - 5), Split(x[te], y[te] - 5)


class DigitNet(nn.Module):
    """A small CNN: ``backbone`` (three conv blocks with BatchNorm) and a linear ``head``."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.backbone: nn.Module = nn.Sequential(  # nn.Module: the demo swaps in a Frozen wrapper
            block(1, 16), block(16, 32), nn.MaxPool2d(2), block(32, 32), nn.MaxPool2d(2), nn.Flatten()
        )
        self.head = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class Curve:
    """What one training run produced, epoch by epoch."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy of ``model`` on ``split`` in eval mode (restores the mode after)."""
    was_training = model.training
    model.eval()
    correct = (model(split.x).argmax(1) == split.y).sum().item()
    model.train(was_training)
    return correct / len(split.y)


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    test: Split | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, Curve], None] | None = None,
) -> Curve:
    """Train with cross-entropy; time only the training steps, evaluate after each epoch."""
    generator = torch.Generator().manual_seed(seed)
    curve = Curve()
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        order = torch.randperm(len(data.y), generator=generator)
        start, total = time.perf_counter(), 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(data.x[batch]), data.y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        curve.epoch_seconds.append(time.perf_counter() - start)
        curve.loss.append(total / len(order))
        curve.accuracy.append(accuracy(model, test if test is not None else data))
        if on_epoch_end is not None:
            on_epoch_end(epoch, curve)
    return curve
