"""frozen's Lightning callback inside a real lightning.Trainer run on CPU."""

from __future__ import annotations

import lightning
import pytest
import torch
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback

# Lightning's own advice for tiny CPU runs, not about frozen: keep them out of the error filter.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*number of training batches.*is smaller than the logging interval:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*GPU available but not used:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*tensorboardX.*:UserWarning"),
    # lightning 2.6 calls a torch.utils._pytree API that torch 2.13 deprecates.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]


class Net(lightning.LightningModule):
    def __init__(self, use_all_parameters: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.use_all_parameters = use_all_parameters

    def forward(self, x):
        return self.head(self.backbone(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        params = self.parameters() if self.use_all_parameters else frozen.optim.param_groups(self, lr=0.05)
        return torch.optim.Adam(params, lr=0.05)


def loader():
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=8)


def fit(model, callback, epochs=2):
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(model, loader())
    return trainer


def optimizer_ids(trainer) -> set[int]:
    return {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("use_all_parameters", [False, True], ids=["param_groups", "self.parameters()"])
def test_frozen_backbone_bit_identical_and_optimizer_holds_only_trainable(use_all_parameters):
    model = Net(use_all_parameters)
    backbone, head = snapshot(model.backbone), snapshot(model.head)
    trainer = fit(model, FreezeCallback("backbone"))
    assert same(backbone, model.backbone)  # weights and BatchNorm statistics
    assert not same(head, model.head)
    assert optimizer_ids(trainer) == {id(p) for p in model.head.parameters()}


def test_gradual_unfreezing_keeps_optimizer_in_sync():
    model = Net()
    stage = frozen.schedule.Stage(1, ("backbone.3",), lr_ratio=0.1, name="backbone.3")
    first = snapshot(model.backbone[0])
    later = snapshot(model.backbone[3])
    trainer = fit(model, FreezeCallback("backbone", unfreeze=[stage]), epochs=2)
    assert same(first, model.backbone[0])
    assert not same(later, model.backbone[3])
    assert optimizer_ids(trainer) == {id(p) for p in frozen.trainable(model)}
    assert [g["lr"] for g in trainer.optimizers[0].param_groups if g["name"] == "backbone.3"] == [pytest.approx(0.005)]


def test_train_norms_keeps_batchnorm_training_inside_a_frozen_backbone():
    model = Net()
    linear, norm = snapshot(model.backbone[0]), snapshot(model.backbone[1])
    trainer = fit(model, FreezeCallback("backbone", train_norms=True), epochs=1)
    assert same(linear, model.backbone[0])
    assert not same(norm, model.backbone[1])  # affine weights and running statistics move
    assert optimizer_ids(trainer) == {id(p) for p in [*model.backbone[1].parameters(), *model.head.parameters()]}


def test_callback_rejects_bad_arguments_when_created():
    with pytest.raises(TypeError, match="frozen.schedule.Stage"):
        FreezeCallback("backbone", unfreeze=[2])
    with pytest.raises(frozen.InvalidModeError, match="mode="):
        FreezeCallback("backbone", mode="frozen")


def test_resume_from_a_checkpoint_after_a_thaw_continues_exactly(tmp_path):
    def stage():
        return frozen.schedule.Stage(1, ("backbone.3",), lr_ratio=0.1, name="backbone.3")

    def trainer(epochs, callback):
        return lightning.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[callback],
        )

    straight = Net()
    trainer(3, FreezeCallback("backbone", unfreeze=[stage()])).fit(straight, loader())

    first = Net()
    run = trainer(2, FreezeCallback("backbone", unfreeze=[stage()]))
    run.fit(first, loader())
    run.save_checkpoint(tmp_path / "after-thaw.ckpt")

    resumed = Net()  # a fresh model and callback, as in a new process
    again = trainer(3, FreezeCallback("backbone", unfreeze=[stage()]))
    again.fit(resumed, loader(), ckpt_path=tmp_path / "after-thaw.ckpt")
    assert frozen.is_frozen(resumed, "backbone.0") and not frozen.is_frozen(resumed, "backbone.3")
    assert optimizer_ids(again) == {id(p) for p in frozen.trainable(resumed)}
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
