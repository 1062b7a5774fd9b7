"""A lean frozen middle inside Lightning's loop: FreezeCallback freezes at set-up, the module makes it lean at fit start.

Run the way users run it -- Lightning's own train/eval switching, a validation loop
(sanity check included) inside ``fit``, then ``trainer.validate`` (``torch.inference_mode``),
in float32 and in ``bf16-mixed`` (autocast) -- once plain and once lean: the trained
layers must end equal to the plain run's (float32: within the fold's rounding, the TOL of
tests/lean/test_lean.py), the frozen middle bit-identical, validation losses equal.
"""

from __future__ import annotations

import pytest
import torch
from lightning_runs import QUIET, Classifier, trainer
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback

pytestmark = QUIET
TOL = {"rtol": 1e-5, "atol": 1e-5}


class Perceptual(Classifier):
    """A trained stem, a conv-BN-ReLU middle gradients cross (frozen by the callback), a trained head."""

    def __init__(self, make_lean: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        blocks = []
        for stride in (1, 2):
            norm = nn.BatchNorm2d(8)
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            blocks += [nn.Conv2d(8, 8, 3, stride=stride, padding=1), norm, nn.ReLU()]
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sequential(*blocks))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
        self.make_lean = make_lean
        self.validation_losses: list[float] = []

    def on_fit_start(self) -> None:  # after FreezeCallback.setup froze the middle
        if self.make_lean:
            frozen.lean(self, "backbone.1")

    def validation_step(self, batch: list[torch.Tensor], _index: int) -> None:
        x, y = batch
        self.validation_losses.append(nn.functional.cross_entropy(self(x), y).item())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(frozen.trainable(self), lr=1e-2)


def _images() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 2, (16,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_lean_middle_in_lightning_trains_and_validates_like_the_plain_one(precision: str) -> None:
    models = []
    for make_lean in (False, True):
        model = Perceptual(make_lean)
        middle = {k: v.clone() for k, v in model.backbone[1].state_dict().items()}
        run = trainer([FreezeCallback("backbone.1")], 2, precision=precision)
        run.fit(model, _images(), _images())
        run.validate(model, _images(), verbose=False)  # torch.inference_mode
        assert all(torch.equal(v, middle[k]) for k, v in model.backbone[1].state_dict().items())
        assert model.backbone[1][0].weight.grad is None  # never a gradient for the frozen middle
        models.append(model)
    plain, leaned = models
    assert isinstance(leaned.backbone[1][0].__dict__.get("forward"), frozen._lean.api.LeanConv)
    if precision == "32-true":
        torch.testing.assert_close(leaned.validation_losses, plain.validation_losses, **TOL)
        for name, value in plain.state_dict().items():
            torch.testing.assert_close(leaned.state_dict()[name], value, **TOL)
    else:  # bf16 rounding differs between the folded and the unfolded middle: the runs stay close
        for name in ("backbone.0.weight", "head.1.weight"):
            gap = (leaned.state_dict()[name] - plain.state_dict()[name]).norm() / plain.state_dict()[name].norm()
            assert gap < 5e-2, (name, gap)
    assert not torch.equal(leaned.head[1].weight, Perceptual(True).head[1].weight)  # it trained
