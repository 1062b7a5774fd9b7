"""frozen.schedule: gradual unfreezing that keeps the optimizer in sync."""

from __future__ import annotations

import pytest
import torch
from tiny_models import two_layers
from torch import nn

import frozen
from frozen.schedule import GradualUnfreezing, Stage


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)
    )


def epoch(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    for _ in range(2):
        optimizer.zero_grad(set_to_none=False)
        model(torch.randn(6, 3)).pow(2).mean().backward()
        optimizer.step()


def test_ulmfit_thaws_last_part_first_into_discriminative_groups():
    model = make_model()
    parts = ["0", "2", "4"]
    frozen.freeze(model, *parts)
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, parts=parts, lr=1.0, lr_decay=1 / 2.6))
    plan = GradualUnfreezing.ulmfit(model, optimizer, parts)
    trainable_counts = []
    for _ in range(4):
        bottom = model[0].weight.detach().clone()
        epoch(model, optimizer)
        if frozen.is_frozen(model, "0"):
            assert torch.equal(bottom, model[0].weight)  # untouched while frozen
        plan.step()
        trainable_counts.append([len(g["params"]) for g in optimizer.param_groups])
    assert trainable_counts == [[0, 0, 2, 2], [0, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.6**-3, 2.6**-2, 2.6**-1, 1.0])
    assert {id(p) for p in optimizer.state} == {id(p) for p in frozen.trainable(model)}


def test_backbone_finetuning_new_group_ratio_growth_and_alignment():
    model = make_model()
    frozen.freeze(model, "0-3")
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=0.1), lr=0.1)
    plan = GradualUnfreezing.backbone_finetuning(model, optimizer, "0-3", unfreeze_at=2, lr_ratio=0.1, growth=2.0)
    rates = []
    for _ in range(7):
        epoch(model, optimizer)
        plan.step()
        rates.append([round(g["lr"], 6) for g in optimizer.param_groups])
    assert [g["name"] for g in optimizer.param_groups] == ["default", "backbone"]
    assert rates == [[0.1], [0.1, 0.01], [0.1, 0.02], [0.1, 0.04], [0.1, 0.08], [0.1, 0.1], [0.1, 0.1]]
    assert optimizer.param_groups[0]["frozen_params"] == []  # the backbone lives in one group only
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == [id(p) for p in model[:4].parameters()]


def test_fine_tune_trains_head_then_everything():
    model = make_model()
    frozen.freeze(model, "0-4")
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, parts=["0-4"], lr=slice(1e-4, 1e-2)))
    plan = GradualUnfreezing.fine_tune(model, optimizer, "0-4", freeze_epochs=1)
    body = model[2].weight.detach().clone()
    epoch(model, optimizer)
    assert torch.equal(body, model[2].weight)
    assert [s.targets for s in plan.step()] == [("0-4",)]  # one string is one target
    epoch(model, optimizer)
    assert not torch.equal(body, model[2].weight)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-2])


def test_composes_with_an_lr_scheduler_when_groups_exist_from_the_start():
    model = make_model()
    frozen.freeze(model, "0")
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, parts=["0"], lr=1.0, lr_decay=0.5), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    plan = GradualUnfreezing(model, optimizer, [Stage(1, ("0",))])
    for _ in range(3):
        epoch(model, optimizer)
        scheduler.step()
        plan.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5 / 8, 1 / 8])
    assert len(optimizer.param_groups[0]["params"]) == 2


def test_state_dict_round_trip_and_bad_input():
    model = make_model()
    frozen.freeze(model, "0")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    plan = GradualUnfreezing(model, optimizer, [Stage(1, "0", lr=0.01)])
    plan.step()
    assert optimizer.param_groups[-1]["name"] == "0" and optimizer.param_groups[-1]["lr"] == 0.01
    other = GradualUnfreezing(model, optimizer, [Stage(1, ("0",), lr=0.01)])
    other.load_state_dict(plan.state_dict())
    assert other.state_dict() == {"count": 1, "applied": [0], "rates": {}} and other.step() == []
    with pytest.raises(frozen.FrozenError, match=r"names stages this plan does not have"):
        other.load_state_dict({"count": 1, "applied": [3]})
    with pytest.raises(frozen.FrozenError, match=r"at >= 1"):
        GradualUnfreezing(model, optimizer, [Stage(0, ("0",))])
    with pytest.raises(frozen.FrozenError, match=r"reference_group='head'.*no such optimizer group"):
        GradualUnfreezing(model, optimizer, [], reference_group="head")
    with pytest.raises(TypeError, match=r"expected frozen.schedule.Stage"):
        GradualUnfreezing(model, optimizer, [(1, "0")])


def test_advance_is_idempotent_and_lr_ratio_takes_the_schedulers_factor_once():
    model = make_model()
    frozen.freeze(model, "0")
    optimizer = torch.optim.SGD(frozen.optim.param_groups(model, lr=1.0), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    plan = GradualUnfreezing(model, optimizer, [Stage(2, "0", lr_ratio=0.1, name="first")])
    for epoch_index in range(2):
        assert optimizer.param_groups[0]["lr"] == 0.5**epoch_index
        epoch(model, optimizer)
        scheduler.step()
    assert [s.name for s in plan.advance(2)] == ["first"] and plan.advance(2) == [] and plan.count == 2
    from frozen.integrations._schedulers import extend_scheduler

    extend_scheduler(scheduler)
    for _ in range(3):
        head, first = optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]
        assert first == pytest.approx(0.1 * head, rel=1e-12)  # not 0.1 * head * 0.25: the factor once
        epoch(model, optimizer)
        scheduler.step()


def test_the_schedule_passes_its_state_policy_to_sync():
    model = make_model()
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=1e-2))
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    moments = optimizer.state[model[0].weight]["exp_avg"].clone()
    frozen.optim.sync(optimizer, frozen.freeze(model, "0"), state="keep")
    plan = GradualUnfreezing(model, optimizer, [Stage(1, "0")], state="keep")
    plan.step()
    assert torch.equal(optimizer.state[model[0].weight]["exp_avg"], moments)
    with pytest.raises(frozen.FrozenError, match=r"state='never'"):
        GradualUnfreezing(model, optimizer, [], state="never")


def test_stages_given_a_single_stage_raises_naming_stages():
    model = frozen.freeze(two_layers(), "0")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    with pytest.raises(TypeError, match="stages"):
        GradualUnfreezing(model, optimizer, stages=Stage(1, ("0",)))


def test_stage_target_typo_is_reported_when_the_plan_is_built():
    model = frozen.freeze(two_layers(), "0")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    with pytest.raises(frozen.SelectorError, match="nope"):
        GradualUnfreezing(model, optimizer, [Stage(5, ("nope",))])
