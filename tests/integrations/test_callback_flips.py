"""A FreezeCallback step notices a flag switched on inside a frozen part (Hugging Face and Lightning).

Mid-run, other code switches ``requires_grad`` back on for a weight the callback froze. At its next
step the callback turns it off again (``frozen.settle``) and says so with one ``ForeignFlagWarning``:
before every optimizer step, what gets a gradient is exactly what ``frozen.trainable`` lists and
what the optimizer holds, and the frozen weight stays bit-identical.
"""

from __future__ import annotations

import pytest
import torch
from hf_trainers import make_trainer
from lightning.pytorch.callbacks import Callback
from lightning_runs import QUIET, Classifier, loader, trainer
from tiny_models import tiny_bert
from torch import nn
from transformers import TrainerCallback

import frozen
from frozen.integrations.hf import FreezeCallback as HFFreezeCallback
from frozen.integrations.lightning import FreezeCallback as LightningFreezeCallback

pytestmark = QUIET  # Lightning's advice for tiny CPU runs; nothing the Hugging Face run warns about

QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def held(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class FlipAfterFirstStep(TrainerCallback):
    """Switches the frozen query weight on after step 1; before each step, records what has a gradient."""

    def __init__(self) -> None:
        self.seen: list[tuple[set[int], set[int], set[int]]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            model.get_parameter(QUERY).requires_grad_(True)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        graded = {id(p) for p in model.parameters() if p.grad is not None}
        self.seen.append((graded, {id(p) for p in frozen.trainable(model)}, held(optimizer)))


@pytest.mark.parametrize("when", ["after step 1", "before train()"])
def test_hf_freeze_callback_turns_a_flipped_flag_off_at_the_next_step(tmp_path, when):
    model = tiny_bert()
    flipper = FlipAfterFirstStep()
    run = make_trainer(model, tmp_path, [HFFreezeCallback("bert.embeddings", "bert.encoder.layer.0"), flipper])
    before = model.get_parameter(QUERY).detach().clone()
    if when == "before train()":
        flipper.on_step_end = lambda *args, **kwargs: None
        model.get_parameter(QUERY).requires_grad_(True)  # after the callback froze it at Trainer(...)
    by = r"FreezeCallback\.on_step_begin" if when == "after step 1" else r"FreezeCallback \(training start\)"
    with pytest.warns(frozen.ForeignFlagWarning, match=by + r": set requires_grad=False again.*'" + QUERY + "'"):
        run.train()
    assert len(flipper.seen) == 4  # 16 samples, batches of 4
    for graded, listed, in_optimizer in flipper.seen:
        assert graded == listed == in_optimizer
    weight = model.get_parameter(QUERY)
    assert not weight.requires_grad and torch.equal(weight, before)


class Net(Classifier):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def configure_optimizers(self):
        return torch.optim.SGD(frozen.trainable(self), lr=0.1, momentum=0.9)


class Flip(Callback):
    """Switches the frozen backbone weight on after the first batch; records gradients before each step."""

    def __init__(self) -> None:
        self.seen: list[tuple[set[int], set[int], set[int]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0 and trainer.current_epoch == 0:
            pl_module.backbone[0].weight.requires_grad_(True)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        graded = {id(p) for p in pl_module.parameters() if p.grad is not None}
        self.seen.append((graded, {id(p) for p in frozen.trainable(pl_module)}, held(optimizer)))


def test_lightning_freeze_callback_turns_a_flipped_flag_off_at_the_next_batch():
    model, flip = Net(), Flip()
    before = model.backbone[0].weight.detach().clone()
    fit = trainer([LightningFreezeCallback("backbone"), flip], epochs=1)
    with pytest.warns(frozen.ForeignFlagWarning, match=r"FreezeCallback\.on_train_batch_start:.*'backbone\.0\.weight'"):
        fit.fit(model, loader())
    assert len(flip.seen) == 4  # 32 samples, batches of 8
    for graded, listed, in_optimizer in flip.seen:
        assert graded == listed == in_optimizer
    assert not model.backbone[0].weight.requires_grad and torch.equal(model.backbone[0].weight, before)
