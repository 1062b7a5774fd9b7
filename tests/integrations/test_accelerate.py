"""A plain accelerate loop: freeze, ``prepare``, thaw + ``frozen.optim.sync`` mid-run, ``save_state``,
then ``load_state`` in a fresh process — bit for bit the straight run, through
``frozen.integrations.accelerate.register``. Each run is a fresh Python process (accelerate's
state is process-wide)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from fresh_process import run_loop

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    from accelerate import Accelerator
    import frozen
    from frozen.integrations.accelerate import register

    mode, folder = sys.argv[1], sys.argv[2]
    STEPS, SAVE_AT, THAW_AT = 6, 4, 2

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    frozen.freeze(model, "0-2")
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-2, weight_decay=0.01))
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)
    if mode != "plain":
        register(accelerator, model)

    start = 0
    if mode in ("resume", "plain"):
        accelerator.load_state(folder)
        start = SAVE_AT
    for step in range(start, STEPS):
        if step == THAW_AT:
            frozen.thaw(model, "2")
            frozen.optim.sync(optimizer, model, new_group={"lr": 5e-3, "name": "thawed"})  # the optimizer grows a group
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        optimizer.zero_grad()
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()
        if mode == "first" and step + 1 == SAVE_AT:
            accelerator.save_state(folder)
            break
    torch.save(model.state_dict(), folder + "-" + mode + ".pt")
    """
)


def run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return run_loop(tmp_path, SCRIPT, mode)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The straight run, and the first run saved after its thaw (both in fresh processes)."""
    folder = tmp_path_factory.mktemp("accelerate")
    for mode in ("straight", "first"):
        done = run(folder, mode)
        assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_an_accelerate_loop_resumed_after_a_thaw_in_a_fresh_process_is_bit_identical(saved):
    done = run(saved, "resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (saved / "ckpt" / "frozen_state.pt").exists()
    straight = torch.load(saved / "ckpt-straight.pt")
    resumed = torch.load(saved / "ckpt-resume.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), [
        k for k in straight if not torch.equal(straight[k], resumed[k])
    ]
    first = torch.load(saved / "ckpt-first.pt")
    assert torch.equal(first["0.weight"], resumed["0.weight"])  # frozen all along
    assert not torch.equal(first["2.weight"], resumed["2.weight"])  # thawed, and trained on after the resume


def test_without_it_load_state_fails_loudly_not_silently(saved):
    """A fresh run whose optimizer frozen never touched: not torch's group count, a FrozenError naming the helper."""
    done = run(saved, "plain")
    assert done.returncode != 0 and "parameter group" in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("frozen._errors.FrozenError: AdamW.load_state_dict(saved)"), done.stderr[-3000:]
    assert "saved has 2 parameter group(s) of sizes [2, 2]" in error and "this optimizer has 1 of sizes [2]" in error
    assert "frozen.integrations.accelerate.register(accelerator, model)" in error
