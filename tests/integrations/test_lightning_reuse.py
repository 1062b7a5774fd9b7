"""One Lightning ``FreezeCallback`` object used again: resumed with the same model, or on fresh models.

The first test translates Lightning's own ``test_callbacks_restore`` (``BaseFinetuning``): fit two
epochs with a checkpoint, then ``fit(model, ckpt_path=last)`` with the *same* callback object and
the *same* model for a third epoch; it must resume, and bit for bit as one straight three-epoch run.
"""

from __future__ import annotations

import gc

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning_runs import QUIET, loader
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback
from frozen.schedule import Stage

pytestmark = QUIET


class Layers(lightning.LightningModule):
    """Lightning's ``FinetuningBoringModel``: four linear layers, SGD over what requires grad."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1, momentum=0.9)


def callback() -> FreezeCallback:
    # Lightning's finetune_function: at epoch e >= 1, unfreeze layer[e - 1] into a new group
    stages = [Stage(1, ("layer.0",), lr_ratio=1.0, name="e1"), Stage(2, ("layer.1",), lr_ratio=1.0, name="e2")]
    return FreezeCallback("layer.0-2", unfreeze=stages)


def fit(model, callbacks, epochs, root, **options):
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        limit_val_batches=0,
    )
    trainer.fit(model, loader(16), **options)
    return trainer


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")  # resuming into it
def test_resume_with_the_same_callback_object_and_model_is_bit_identical_to_the_straight_run(tmp_path):
    straight = Layers()
    fit(straight, [callback()], 3, tmp_path / "straight")

    model, cb = Layers(), callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(model, [cb, checkpoint], 2, tmp_path / "first")
    trainer = fit(model, [cb, checkpoint], 3, tmp_path / "again", ckpt_path=checkpoint.last_model_path)

    assert len(trainer.optimizers[0].param_groups) == 3  # the first group, "e1", "e2"
    resumed, expected = weights(model), weights(straight)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected), [
        k for k in expected if not torch.equal(resumed[k], expected[k])
    ]
    assert not frozen.is_frozen(model, "layer.1") and frozen.is_frozen(model, "layer.2")


def test_a_reused_callback_freezes_every_fresh_model_even_one_at_a_freed_models_address():
    cb = FreezeCallback("layer.0-2")
    unfrozen, reused = 0, 0
    seen: set[int] = set()
    for _ in range(30):  # until the interpreter hands out freed models' addresses a few times
        model = Layers()
        reused += id(model) in seen
        seen.add(id(model))
        cb.setup(None, model, "fit")
        unfrozen += not frozen.is_frozen(model, "layer.0")
        del model
        gc.collect()
        if reused >= 3:
            break
    assert reused > 0  # a fresh model did get a freed model's id()
    assert unfrozen == 0


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.LayerNorm], ids=["batchnorm", "layernorm"])
def test_train_norms_keeps_every_norm_layer_training_and_train_bn_batchnorm_only(norm):
    # Lightning's train_bn=True keeps BatchNorm trainable; frozen's train_norms covers every
    # normalisation layer (LayerNorm, GroupNorm too); train_norms="batchnorm" is train_bn exactly.
    model = nn.Sequential(nn.Linear(4, 8), norm(8), nn.Linear(8, 2))
    FreezeCallback("0-1", train_norms=True).plan.freeze(model)
    assert not frozen.is_frozen(model, "1") and frozen.is_frozen(model, "0")
    model = nn.Sequential(nn.Linear(4, 8), norm(8), nn.Linear(8, 2))
    FreezeCallback("0-1", train_norms="batchnorm").plan.freeze(model)
    assert frozen.is_frozen(model, "1") == (norm is nn.LayerNorm) and frozen.is_frozen(model, "0")


def test_a_callback_pickles_after_freezing_a_model_and_its_copy_freezes_again():
    # Lightning's ddp_spawn pickles the callbacks; the copy freezes the copy of the model it gets.
    import pickle

    cb = FreezeCallback("layer.0-2")
    model = Layers()
    cb.setup(None, model, "fit")
    copy = pickle.loads(pickle.dumps(cb))
    fresh = Layers()
    copy.setup(None, fresh, "fit")
    assert frozen.is_frozen(fresh, "layer.0") and not copy.plan.froze(model)
