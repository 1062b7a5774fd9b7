"""frozen.optim.sync: separate groups for unnamed thaws, and the optimizer-state policy (drop / keep)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import frozen


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))


def batch(step: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(step))


def test_two_unnamed_thaws_get_their_own_groups_and_rates():
    model = frozen.freeze(make_model(), "0", "2")
    optimizer = torch.optim.Adam(frozen.trainable(model), lr=1e-2)
    frozen.thaw(model, "2")
    frozen.optim.sync(optimizer, model, new_group={"lr": 1e-3})
    frozen.thaw(model, "0")
    frozen.optim.sync(optimizer, model, new_group={"lr": 1e-4})
    groups = optimizer.param_groups
    assert [(g.get("name"), g["lr"]) for g in groups] == [(None, 1e-2), ("thawed", 1e-3), ("thawed-2", 1e-4)]
    assert [p for p in groups[1]["params"]] == list(model[2].parameters())
    assert [p for p in groups[2]["params"]] == list(model[0].parameters())


def test_plain_sync_of_parameters_never_held_gets_a_fresh_group_each_time():
    model = frozen.freeze(make_model(), "0", "2")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    frozen.thaw(model, "2")
    frozen.optim.sync(optimizer, model)
    frozen.optim.sync(optimizer, model)  # nothing new: no empty group appears
    frozen.thaw(model, "0")
    frozen.optim.sync(optimizer, model)
    assert [g.get("name") for g in optimizer.param_groups] == [None, "thawed", "thawed-2"]


def test_a_named_request_joins_the_existing_group_of_that_name():
    model = frozen.freeze(make_model(), "0", "2")
    optimizer = torch.optim.SGD(frozen.trainable(model), lr=0.1)
    frozen.thaw(model, "2")
    frozen.optim.sync(optimizer, model, new_group={"name": "backbone", "lr": 0.01})
    frozen.thaw(model, "0")
    frozen.optim.sync(optimizer, model, new_group={"name": "backbone", "lr": 0.01})
    assert [(g.get("name"), len(g["params"])) for g in optimizer.param_groups] == [(None, 2), ("backbone", 4)]


def loss_of(model: nn.Module, step: int) -> torch.Tensor:
    return model(batch(step)).square().mean()


def run_with_freeze(policy: str, freeze_from: int, thaw_at: int, steps: int) -> nn.Sequential:
    """Run A: one Adam over everything; layer 0 frozen for steps [freeze_from, thaw_at), synced with ``policy``."""
    model = make_model()
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=1e-2), lr=1e-2, foreach=False)
    for step in range(steps):
        if step == freeze_from:
            frozen.optim.sync(optimizer, frozen.freeze(model, "0"), state=policy)
        if step == thaw_at:
            frozen.optim.sync(optimizer, frozen.thaw(model, "0"), state=policy)
        optimizer.zero_grad()
        loss_of(model, step).backward()
        optimizer.step()
    return model


def run_reference(policy: str, freeze_from: int, thaw_at: int, steps: int) -> nn.Sequential:
    """Run B: nothing is frozen. Layer 0 has its own Adam, which simply does not step during
    [freeze_from, thaw_at) (its gradient is thrown away); with ``"drop"`` it is rebuilt fresh at
    ``thaw_at``. Adam's update is per parameter, so A must equal B bit for bit."""
    model = make_model()
    rest = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("0.")], lr=1e-2, foreach=False)
    first = torch.optim.Adam(model[0].parameters(), lr=1e-2, foreach=False)
    for step in range(steps):
        if step == thaw_at and policy == "drop":
            first = torch.optim.Adam(model[0].parameters(), lr=1e-2, foreach=False)
        rest.zero_grad()
        first.zero_grad()
        loss_of(model, step).backward()
        rest.step()
        if not freeze_from <= step < thaw_at:
            first.step()
    return model


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_thaw_continues_exactly_like_a_run_that_never_froze_apart_from_the_frozen_steps(policy):
    a = run_with_freeze(policy, freeze_from=3, thaw_at=6, steps=10)
    b = run_reference(policy, freeze_from=3, thaw_at=6, steps=10)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_keep_and_drop_differ_and_kept_state_survives_a_path_keyed_checkpoint():
    kept, dropped = run_with_freeze("keep", 3, 6, 10), run_with_freeze("drop", 3, 6, 10)
    assert not torch.equal(kept[0].weight, dropped[0].weight)

    model = make_model()
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=1e-2), lr=1e-2)
    loss_of(model, 0).backward()
    optimizer.step()
    moments = optimizer.state[model[0].weight]["exp_avg"].clone()
    frozen.optim.sync(optimizer, frozen.freeze(model, "0"), state="keep")
    assert model[0].weight not in optimizer.state
    assert torch.equal(optimizer.param_groups[0]["frozen_state"]["0.weight"]["exp_avg"], moments)
    assert frozen.optim.state_nbytes(optimizer) == sum(p.numel() * 8 + 4 for p in model.parameters())

    saved = frozen.optim.state_dict(optimizer, model)
    fresh = torch.optim.Adam(frozen.optim.param_groups(model, lr=1e-2), lr=1e-2)
    frozen.optim.load_state_dict(fresh, model, saved)
    frozen.optim.sync(fresh, frozen.thaw(model, "0"), state="keep")
    assert torch.equal(fresh.state[model[0].weight]["exp_avg"], moments)
    assert "frozen_state" not in fresh.param_groups[0]


def test_drop_frees_the_state_and_a_bad_policy_changes_nothing():
    model = make_model()
    optimizer = torch.optim.Adam(frozen.optim.param_groups(model, lr=1e-2), lr=1e-2)
    loss_of(model, 0).backward()
    optimizer.step()
    full = frozen.optim.state_nbytes(optimizer)
    frozen.freeze(model, "0")
    with pytest.raises(frozen.FrozenError, match=r"state='forget'.*'drop', 'keep'"):
        frozen.optim.sync(optimizer, model, state="forget")
    assert frozen.optim.state_nbytes(optimizer) == full and len(optimizer.param_groups[0]["params"]) == 6
    frozen.optim.sync(optimizer, model)
    assert frozen.optim.state_nbytes(optimizer) == full - (16 + 4) * 8 - 2 * 4
