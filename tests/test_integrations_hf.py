"""frozen inside a real Hugging Face Trainer run (tiny BERT built from a config, CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import frozen
from frozen.integrations.hf import FreezeCallback


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 8), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def make_trainer(model, tmp_path, callbacks=(), epochs: float = 1) -> Trainer:
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=epochs,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    return Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=list(callbacks))


def optimizer_ids(trainer: Trainer) -> set[int]:
    return {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}


def snapshot(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


@pytest.mark.parametrize("how", ["freeze before Trainer", "FreezeCallback"])
def test_trainer_keeps_frozen_weights_bit_identical_and_optimizer_holds_only_trainable(tmp_path, how):
    model = tiny_bert()
    targets = ("bert.embeddings", "bert.encoder.layer.0")
    if how == "freeze before Trainer":
        frozen.freeze(model, *targets)
        trainer = make_trainer(model, tmp_path)
    else:
        trainer = make_trainer(model, tmp_path, [FreezeCallback(*targets)])
    frozen_before = {**snapshot(model, "bert.embeddings"), **snapshot(model, "bert.encoder.layer.0.")}
    trained_before = snapshot(model, "classifier")
    trainer.train()
    assert optimizer_ids(trainer) == {id(p) for p in frozen.trainable(model)}
    assert not any(name.startswith(targets) for name, _ in frozen.named_trainable(model))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen_before.items())
    assert not all(torch.equal(v, after[k]) for k, v in trained_before.items())


def test_callback_thaws_on_plan_and_adds_parameters_to_the_optimizer(tmp_path):
    model = tiny_bert()
    stage = frozen.schedule.Stage(1, ("bert.encoder.layer.1",), lr=1e-3, name="layer1")
    trainer = make_trainer(model, tmp_path, [FreezeCallback("bert.encoder", unfreeze=[stage])], epochs=2)
    layer0 = snapshot(model, "bert.encoder.layer.0.")
    layer1 = snapshot(model, "bert.encoder.layer.1.")
    trainer.train()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in layer0.items())
    assert not all(torch.equal(v, after[k]) for k, v in layer1.items())
    assert optimizer_ids(trainer) == {id(p) for p in frozen.trainable(model)}
    # The new group follows the Trainer's linear decay, from its own rate.
    assert [g["initial_lr"] for g in trainer.optimizer.param_groups if g.get("name") == "layer1"] == [1e-3]


def test_callback_rejects_bad_arguments_when_created():
    with pytest.raises(TypeError, match="frozen.schedule.Stage"):
        FreezeCallback("bert", unfreeze=[("bert", 1)])
    with pytest.raises(frozen.InvalidModeError, match="mode="):
        FreezeCallback("bert", mode="train")
