"""frozen inside a real Hugging Face Trainer run (tiny BERT built from a config, CPU)."""

from __future__ import annotations

import logging

import pytest
import torch
from counting import count_runs
from hf_trainers import make_trainer
from tiny_models import tiny_bert
from transformers import Trainer, TrainerCallback

import frozen
from frozen.integrations.hf import FreezeCallback


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


# -- resume, decay rule, rates, steps, logging ----------------------------------------------------


def two_stage_callback(unit: str = "epoch", at: tuple[int, int] = (1, 2)) -> FreezeCallback:
    return FreezeCallback(
        "bert.encoder",
        unit=unit,
        unfreeze=[
            frozen.schedule.Stage(at[0], ("bert.encoder.layer.1",), lr_ratio=0.1, name="layer1"),
            frozen.schedule.Stage(at[1], ("bert.encoder.layer.0",)),  # back to the Trainer's groups
        ],
    )


RUN = {"epochs": 3, "weight_decay": 0.05, "save_strategy": "steps", "save_steps": 2, "seed": 7}


def layout(trainer: Trainer) -> list[tuple]:
    return [(g.get("name"), g["lr"], g["weight_decay"], len(g["params"])) for g in trainer.optimizer.param_groups]


def test_resume_from_any_checkpoint_before_or_after_a_stage_is_bit_identical(tmp_path):
    straight = tiny_bert()
    reference = make_trainer(straight, tmp_path, [two_stage_callback()], **RUN)
    reference.train()  # 4 steps per epoch: layer 1 thaws at step 4, layer 0 at step 8
    expected = straight.state_dict()
    for step in (4, 6, 10):  # before stage 1 (end of epoch 0), after stage 1 (mid-epoch), after stage 2
        resumed = tiny_bert()
        trainer = make_trainer(resumed, tmp_path / f"resume-{step}", [two_stage_callback()], **RUN)
        trainer.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{step}"))
        assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in expected.items()), step
        assert layout(trainer) == layout(reference)
        assert optimizer_ids(trainer) == {id(p) for p in frozen.trainable(resumed)}


def test_a_cached_run_resumed_before_or_after_a_thaw_inside_the_cache_matches_the_straight_one(tmp_path):
    # The cache recipe with a schedule that thaws the cached layers one by one, resumed as users resume: a
    # fresh model and cache, the Trainer loads the checkpoint and FreezeCallback replays the stages.
    def callback() -> FreezeCallback:
        return FreezeCallback(
            "bert.embeddings", "bert.encoder",
            unfreeze=[frozen.schedule.Stage(1, ("bert.encoder.layer.1",)), frozen.schedule.Stage(2, ("bert.encoder.layer.0",))],
        )  # fmt: skip

    def run(where, resume_from=None) -> tuple:
        model = tiny_bert()
        trainer = make_trainer(model, where, [callback()], **RUN)
        handle = frozen.cache(trainer.model, "bert.encoder.layer.0", "bert.encoder.layer.1")
        embeddings = snapshot(model, "bert.embeddings")
        trainer.train(resume_from_checkpoint=resume_from)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in embeddings.items())
        return model, handle.stats()

    straight, stats = run(tmp_path)  # 4 steps per epoch: layer 1 thaws at step 4, layer 0 at step 8
    assert stats["bert.encoder.layer.0"]["hits"] == 16 and stats["bert.encoder.layer.1"]["hits"] == 0  # epoch 2
    plain = tiny_bert()
    make_trainer(plain, tmp_path / "plain", [callback()], **RUN).train()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(straight.state_dict()[name], value, rtol=1.3e-6, atol=1e-5)
    for step in (4, 6, 10):  # before stage 1, after stage 1 (mid-epoch), after stage 2
        resumed, stats = run(tmp_path / f"resume-{step}", str(tmp_path / f"checkpoint-{step}"))
        for name, value in straight.state_dict().items():
            torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1.3e-6, atol=1e-5, msg=f"{step} {name}")
        if step == 10:  # both layers train after the resume: nothing was taken from the cache
            assert stats["bert.encoder.layer.0"]["hits"] == 0 and stats["bert.encoder.layer.0"]["bypassed"] == 2


def test_thawed_parameters_follow_the_trainers_decay_rule_and_arguments(tmp_path):
    model = tiny_bert()
    trainer = make_trainer(model, tmp_path, [two_stage_callback()], epochs=3, weight_decay=0.05)
    trainer.train()
    decay = set(trainer.get_decay_parameter_names(model))
    path_of = {id(p): n for n, p in model.named_parameters()}
    groups = {g.get("name"): g for g in trainer.optimizer.param_groups}
    assert set(groups) == {None, "layer1", "layer1/no_decay"}
    for group in trainer.optimizer.param_groups:
        names = [path_of[id(p)] for p in group["params"]]
        assert all((n in decay) == (group["weight_decay"] == 0.05) for n in names), group.get("name")
        assert group["weight_decay"] in (0.05, 0.0) and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    layer0 = [n for n in path_of.values() if n.startswith("bert.encoder.layer.0.")]
    home = [path_of[id(p)] for g in trainer.optimizer.param_groups[:2] for p in g["params"]]
    assert set(layer0) <= set(home)  # returned to the Trainer's own two groups
    assert groups["layer1"]["initial_lr"] == pytest.approx(0.1 * 1e-2)


class Rates(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.steps.append({g.get("name"): g["lr"] for g in optimizer.param_groups})


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "constant_with_warmup"])
def test_lr_ratio_is_applied_exactly_once_under_every_trainer_scheduler(tmp_path, kind):
    rates = Rates()
    model = tiny_bert()
    callbacks = [two_stage_callback(), rates]
    make_trainer(model, tmp_path, callbacks, epochs=3, lr_scheduler_type=kind, warmup_steps=2).train()
    after = [step for step in rates.steps if "layer1" in step]
    assert len(after) == 8 and len(rates.steps) == 12  # thawed at the start of epoch 1
    for step in after:
        assert step["layer1"] == pytest.approx(0.1 * step[None], rel=1e-12, abs=1e-18)
        assert step["layer1/no_decay"] == step["layer1"]


def test_stages_counted_in_steps_for_max_steps_runs_and_one_log_line_per_thaw(tmp_path, caplog):
    model = tiny_bert()
    layer0, layer1 = snapshot(model, "bert.encoder.layer.0."), snapshot(model, "bert.encoder.layer.1.")
    trainer = make_trainer(model, tmp_path, [two_stage_callback("step", at=(3, 100))], max_steps=6)
    with caplog.at_level(logging.INFO, logger="frozen"):
        trainer.train()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in layer0.items())
    assert not all(torch.equal(v, after[k]) for k, v in layer1.items())
    lines = [r.getMessage() for r in caplog.records if r.name == "frozen"]
    count = sum(p.numel() for p in frozen.trainable(model))
    assert lines == [f"frozen: thawed bert.encoder.layer.1 at step 3 (global step 3); {count:,} trainable parameters"]


def test_growth_is_refused_with_the_trainer():
    with pytest.raises(frozen.FrozenError, match="growth is not supported"):
        FreezeCallback("bert", unfreeze=[frozen.schedule.Stage(1, ("bert",), lr_ratio=0.1, growth=2.0)])


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_the_cache_recipe_inside_the_trainer_replays_the_frozen_prefix(tmp_path, checkpointing):
    # docs/cache.md's recipe, run as users run it: FreezeCallback freezes when the Trainer is built,
    # frozen.cache(trainer.model, ...) before train(), the Trainer's own shuffling over 3 epochs. With
    # activation checkpointing the Trainer's enable_input_require_grads makes the embeddings' output (not
    # cached here: the layer after them is) require grad, which the cached layer refused; and frozen keeps
    # the layer's own training flag for Hugging Face's checkpointing, which the cache took for training.
    frozen_parts, cached_parts = ("bert.embeddings", "bert.encoder.layer.0"), ("bert.encoder.layer.0",)
    runs = {}
    for cached in (False, True):
        model = tiny_bert()
        trainer = make_trainer(
            model, tmp_path / str(cached), [FreezeCallback(*frozen_parts)], epochs=3,
            activation_checkpointing=checkpointing,
        )  # fmt: skip
        runs_of_prefix = count_runs(model.bert.encoder.layer[0].attention)
        if cached:
            frozen.cache(trainer.model, *cached_parts)
        before = {k: v.clone() for k, v in model.bert.encoder.layer[0].state_dict().items()}
        trainer.train()
        assert all(torch.equal(v, before[k]) for k, v in model.bert.encoder.layer[0].state_dict().items())
        runs[cached] = (model, runs_of_prefix[0])
    (plain, plain_runs), (cached_model, cached_runs) = runs[False], runs[True]
    # 16 samples in batches of 4 over 3 epochs; checkpointed, the uncached layer runs again in backward
    # cached: epoch 1 only, plus the row-separability check's one run on half of the first filling batch
    assert plain_runs == 12 * (2 if checkpointing else 1) and cached_runs == 4 + 1
    for name, value in plain.classifier.state_dict().items():
        torch.testing.assert_close(cached_model.classifier.state_dict()[name], value, rtol=1.3e-6, atol=1e-5)
    stats = frozen.cache_stats(cached_model)["bert.encoder.layer.0"]
    assert (stats["misses"], stats["hits"]) == (16, 32)
    assert not getattr(cached_model, "_require_grads_hooks", None)  # removed by FreezeCallback, with checkpointing


def test_frozen_rows_in_the_trainer_with_weight_decay_resume_bit_identically(tmp_path):
    # Rows (new-token fine-tuning) inside the Trainer's callback order, its AdamW with weight decay, and its
    # checkpoints: the frozen rows stay bit-identical, and a run resumed anywhere ends where the straight one did.
    embeddings = "bert.embeddings.word_embeddings.weight"

    def run(where, resume_from=None):
        model = tiny_bert()
        start = model.state_dict()[embeddings].clone()
        callback = FreezeCallback(frozen.Rows(embeddings, trainable=range(40, 50)))
        make_trainer(model, where, [callback], **RUN).train(resume_from_checkpoint=resume_from)
        end = model.state_dict()[embeddings]
        assert torch.equal(end[:40], start[:40]) and not torch.equal(end[40:], start[40:])
        return model.state_dict()

    straight = run(tmp_path)
    for step in (4, 6, 10):
        resumed = run(tmp_path / f"resume-{step}", str(tmp_path / f"checkpoint-{step}"))
        assert all(torch.equal(v, resumed[k]) for k, v in straight.items()), step
