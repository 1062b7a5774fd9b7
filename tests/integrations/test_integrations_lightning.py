"""frozen's Lightning callback inside a real lightning.Trainer run on CPU."""

from __future__ import annotations

import lightning
import pytest
import torch
from lightning_runs import QUIET, Classifier, loader, trainer
from torch import nn

import frozen
from frozen.integrations.lightning import FreezeCallback

pytestmark = QUIET


class Net(Classifier):
    def __init__(self, use_all_parameters: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)
        self.use_all_parameters = use_all_parameters

    def configure_optimizers(self):
        params = self.parameters() if self.use_all_parameters else frozen.optim.param_groups(self, lr=0.05)
        return torch.optim.Adam(params, lr=0.05)


def fit(model, callback, epochs=2):
    return fit_with(model, [callback], epochs)


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

    straight = Net()
    trainer([FreezeCallback("backbone", unfreeze=[stage()])], 3).fit(straight, loader())

    first = Net()
    run = trainer([FreezeCallback("backbone", unfreeze=[stage()])], 2)
    run.fit(first, loader())
    run.save_checkpoint(tmp_path / "after-thaw.ckpt")

    resumed = Net()  # a fresh model and callback, as in a new process
    again = trainer([FreezeCallback("backbone", unfreeze=[stage()])], 3)
    again.fit(resumed, loader(), ckpt_path=tmp_path / "after-thaw.ckpt")
    assert frozen.is_frozen(resumed, "backbone.0") and not frozen.is_frozen(resumed, "backbone.3")
    assert optimizer_ids(again) == {id(p) for p in frozen.trainable(resumed)}
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())


# -- Lightning parity --------------------------------------------------------------------------


class Recorder(lightning.Callback):
    """Learning rate of every group, as the first batch of each epoch trains with it."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.rates.append([g["lr"] for g in trainer.optimizers[0].param_groups])


class HeadOnly(Net):
    """Lightning's BackboneFinetuning test model: the optimizer gets the head only, with a scheduler."""

    def __init__(self, scheduler: str = "step", norm: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        norm_layer = nn.BatchNorm1d(8) if norm else nn.Identity()
        self.backbone = nn.Sequential(nn.Linear(4, 8), norm_layer, nn.ReLU(), nn.Linear(8, 8), nn.ReLU())
        self.scheduler = scheduler

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9)
        steps = self.trainer.estimated_stepping_batches
        make = {
            "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7),
            "lambda": lambda: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step),
            "onecycle": lambda: torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=steps),
            "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps),
            "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=0),
        }
        interval = "epoch" if self.scheduler in ("step", "plateau") else "step"
        config = {"scheduler": make[self.scheduler](), "interval": interval, "monitor": "train_loss"}
        return {"optimizer": optimizer, "lr_scheduler": config}


def fit_with(model, callbacks, epochs, **kwargs):
    run = trainer(callbacks, epochs, **kwargs)
    run.fit(model, loader())
    return run


def test_backbone_finetuning_preset_gives_lightnings_rates_epoch_for_epoch():
    # Lightning's test_finetuning_callback: StepLR(gamma=0.7), backbone thawed at epoch 3, 8 epochs.
    from lightning.pytorch.callbacks import BackboneFinetuning

    theirs, ours = Recorder(), Recorder()
    fit_with(HeadOnly(), [BackboneFinetuning(unfreeze_backbone_at_epoch=3, verbose=False), theirs], epochs=8)
    model = HeadOnly()
    fit_with(model, [FreezeCallback.backbone_finetuning(unfreeze_at=3), ours], epochs=8)
    assert ours.rates == theirs.rates  # same rate per group per epoch, bit for bit
    assert [len(r) for r in ours.rates] == [1, 1, 1, 2, 2, 2, 2, 2]
    head, backbone = zip(*ours.rates[3:])
    assert backbone[0] == pytest.approx(0.1 * head[0])  # lr_ratio applied once, to this epoch's rate
    assert all(b <= h for h, b in zip(head, backbone)) and backbone[-1] == head[-1]  # grows x2, capped
    assert not frozen.is_frozen(model, "backbone")


def test_translated_lightning_one_layer_per_epoch_gets_its_own_group():
    # Lightning's test_base_finetuning_internal_optimizer_metadata: one more layer per epoch.
    model = Net()
    stages = [frozen.schedule.Stage(1, ("backbone.0",), lr=0.01), frozen.schedule.Stage(2, ("backbone.3",), lr=0.01)]
    trainer = fit(model, FreezeCallback("backbone", unfreeze=stages), epochs=3)
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["default", "backbone.0", "backbone.3"]
    assert [[id(p) for p in g["params"]] for g in groups[1:]] == [
        [id(p) for p in model.backbone[0].parameters()],
        [id(p) for p in model.backbone[3].parameters()],
    ]


@pytest.mark.parametrize("scheduler", ["lambda", "onecycle", "plateau", "cosine"])
def test_train_norms_with_a_head_only_optimizer_works_under_any_scheduler(scheduler):
    model = HeadOnly(scheduler, norm=True)
    linear = snapshot(model.backbone[0])
    trainer = fit_with(model, [FreezeCallback("backbone", train_norms=True)], epochs=2)
    assert same(linear, model.backbone[0])
    assert optimizer_ids(trainer) == {id(p) for p in [*model.head.parameters(), *model.backbone[1].parameters()]}
    head, norms = trainer.optimizers[0].param_groups
    if scheduler == "lambda":  # the norms follow the head's schedule, from their own base rate
        assert norms["lr"] == pytest.approx(head["lr"]) and head["lr"] == pytest.approx(0.1 * 0.9**8)


def test_one_callback_serves_two_fits_each_with_its_own_optimizer():
    callback = FreezeCallback("backbone", unfreeze=[frozen.schedule.Stage(1, ("backbone.3",), lr=0.01)])
    fit(Net(), callback, epochs=2)
    second = Net()
    layer = snapshot(second.backbone[3])
    trainer = fit(second, callback, epochs=2)
    assert not same(layer, second.backbone[3])  # thawed into the second fit's optimizer, and trained
    assert optimizer_ids(trainer) == {id(p) for p in frozen.trainable(second)}


class LateBackbone(Net):
    """The backbone exists only once Lightning calls configure_model (after setup)."""

    def __init__(self) -> None:
        super().__init__()
        del self.backbone

    def configure_model(self):
        if not hasattr(self, "backbone"):
            torch.manual_seed(1)
            self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def test_modules_made_in_configure_model_can_be_targeted():
    model = LateBackbone()
    run = trainer([FreezeCallback("backbone")], 1)
    model.configure_model()
    before = snapshot(model.backbone)
    del model.backbone
    run.fit(model, loader())
    assert same(before, model.backbone)
    assert optimizer_ids(run) == {id(p) for p in model.head.parameters()}


def test_a_missing_target_still_fails_clearly_without_configure_model():
    with pytest.raises(frozen.SelectorError, match="nothing_here"):
        fit(Net(), FreezeCallback("nothing_here"), epochs=1)


class Tokens(lightning.LightningModule):
    """An embedding whose rows 0-11 are frozen by the callback (12-15 are new tokens) under a trained head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(16, 4)
        self.head = nn.Linear(3 * 4, 2)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        ids, labels = batch
        return nn.functional.cross_entropy(self.head(self.embedding(ids).flatten(1)), labels)

    def configure_optimizers(self):
        return torch.optim.AdamW(frozen.trainable(self), lr=0.05, weight_decay=0.1)


def token_loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 16, (32, 3), generator=g), torch.randint(0, 2, (32,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ids, labels), batch_size=8)


def test_frozen_rows_through_the_callback_resume_bit_identically(tmp_path):
    # Rows inside Lightning's callback order, AdamW with weight decay, and a checkpoint: the frozen rows stay
    # bit-identical, the new ones train, and a fresh process resumed from the checkpoint ends where one run did.
    def callback() -> FreezeCallback:
        return FreezeCallback(frozen.Rows("embedding.weight", trainable=range(12, 16)))

    straight = Tokens()
    start = straight.embedding.weight.detach().clone()
    trainer([callback()], 3).fit(straight, token_loader())
    end = straight.embedding.weight.detach()
    assert torch.equal(end[:12], start[:12]) and not torch.equal(end[12:], start[12:])
    first = Tokens()
    run = trainer([callback()], 2)
    run.fit(first, token_loader())
    run.save_checkpoint(tmp_path / "rows.ckpt")
    resumed = Tokens()
    trainer([callback()], 3).fit(resumed, token_loader(), ckpt_path=tmp_path / "rows.ckpt")
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
