"""A plain ``optimizer.load_state_dict`` of a checkpoint saved at another freeze state names the fix.

The optimizer that meets such a checkpoint is usually one ``frozen`` never touched: a fresh run
freezes the model as at the start, builds ``AdamW(frozen.trainable(model))`` and loads the
checkpoint a run saved after a thaw (``frozen.optim.sync`` added a group). torch says only
"loaded state dict has a different number of parameter groups"; here the error is a
``FrozenError`` (still a ``ValueError``) naming the group sizes and the fixes, and the optimizer
is unchanged. Loads torch accepts, and torch's other errors, are untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fresh_process import ROOT
from torch import nn

import frozen


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()


def saved_after_a_thaw() -> dict:
    """The optimizer checkpoint of a run that froze ``0-2``, trained, thawed ``2`` (a group added), trained."""
    model = make_model()
    frozen.freeze(model, "0-2")
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    train(model, optimizer, range(2))
    frozen.thaw(model, "2")
    frozen.optim.sync(optimizer, model)
    train(model, optimizer, range(2, 4))
    return optimizer.state_dict()


def fresh_optimizer() -> torch.optim.AdamW:
    """What a resumed run builds before it loads: the model frozen as at the start, an optimizer frozen never saw."""
    model = make_model()
    frozen.freeze(model, "0-2")
    return torch.optim.AdamW(frozen.trainable(model), lr=1e-2)


def test_an_optimizer_frozen_never_saw_refuses_a_post_thaw_checkpoint_naming_the_fix_and_stays_unchanged():
    saved = saved_after_a_thaw()
    optimizer = fresh_optimizer()
    groups_before = [{k: v for k, v in g.items()} for g in optimizer.param_groups]
    with pytest.raises(frozen.FrozenError) as refused:
        optimizer.load_state_dict(saved)
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)  # code that caught torch's ValueError still catches it
    assert "saved has 2 parameter group(s) of sizes [2, 2]" in message
    assert "this optimizer has 1 of sizes [2]" in message
    assert "frozen.load_state(model, saved_freeze_state)" in message and "frozen.optim.sync" in message
    assert "frozen.integrations.accelerate.register(accelerator, model)" in message
    assert "different number of parameter groups" in str(refused.value.__cause__)  # torch's own words, chained
    assert len(optimizer.state) == 0
    assert [{k: v for k, v in g.items()} for g in optimizer.param_groups] == groups_before


def test_restoring_the_freeze_state_and_resyncing_first_loads_the_same_checkpoint():
    saved = saved_after_a_thaw()
    model = make_model()
    frozen.freeze(model, "0-2")
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    frozen.thaw(model, "2")
    frozen.optim.sync(optimizer, model)
    optimizer.load_state_dict(saved)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]
    assert all(int(s["step"]) == n for s, n in zip(optimizer.state.values(), [4, 4, 2, 2], strict=True))


def test_a_group_of_another_size_is_refused_too():
    saved = saved_after_a_thaw()
    optimizer = fresh_optimizer()
    optimizer.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})  # two groups, the second of size 1
    with pytest.raises(frozen.FrozenError, match=r"this optimizer has 2 of sizes \[2, 1\]"):
        optimizer.load_state_dict(saved)


def test_torchs_other_errors_pass_through_untouched():
    optimizer = fresh_optimizer()
    with pytest.raises(KeyError, match="param_groups") as refused:
        optimizer.load_state_dict({"state": {}})
    assert not isinstance(refused.value, frozen.FrozenError)


def test_a_process_where_frozen_governs_nothing_keeps_torchs_own_error():
    """The translation is installed when frozen first governs a module, not by ``import frozen``."""
    script = textwrap.dedent(
        """
        import torch
        from torch import nn
        import frozen, frozen.optim
        a, b = nn.Linear(2, 2), nn.Linear(2, 2)
        saved = torch.optim.SGD([{"params": [a.weight]}, {"params": [a.bias]}], lr=0.1).state_dict()
        try:
            torch.optim.SGD(b.parameters(), lr=0.1).load_state_dict(saved)
        except ValueError as error:
            print(type(error).__name__, error)
        frozen.freeze(b, "weight")
        try:
            torch.optim.SGD(b.parameters(), lr=0.1).load_state_dict(saved)
        except ValueError as error:
            print(type(error).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "ValueError loaded state dict has a different number of parameter groups",
        "FrozenError",
    ]
