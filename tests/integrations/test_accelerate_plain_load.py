"""``accelerator.load_state`` without ``frozen.integrations.accelerate.register``, after a thaw mid-run.

A checkpoint with other parameter groups than the optimizer ``frozen.optim.sync`` reshaped is
refused with a ``FrozenError`` naming the helper (not torch's "different number of parameter
groups"), and nothing in the optimizer changes; a fresh run that loads with nothing restored, its
optimizer never touched by ``frozen``, is refused the same way (``test_accelerate.py``).
Restoring the freeze state and re-syncing with the same options by hand before ``load_state``
resumes bit for bit. Each run is a fresh Python process (accelerate's state is process-wide),
as users run them.
"""

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

    mode, folder = sys.argv[1], sys.argv[2]
    STEPS, SAVE_AT, THAW_AT = 6, 4, 2
    NEW_GROUP = {"lr": 5e-3, "name": "thawed"}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    frozen.freeze(model, "0-2")
    optimizer = torch.optim.AdamW(frozen.optim.param_groups(model, lr=1e-2, weight_decay=0.01))
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, optimizer)


    def step(i):
        g = torch.Generator().manual_seed(i)
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 2, generator=g)
        optimizer.zero_grad()
        accelerator.backward(nn.functional.mse_loss(model(x), y))
        optimizer.step()


    def optimizer_snapshot():
        groups = [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])} for g in optimizer.param_groups]
        state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
        return groups, state


    def same(a, b):
        return a[0] == b[0] and a[1].keys() == b[1].keys() and all(
            torch.equal(a[1][k][n], b[1][k][n]) for k in a[1] for n in a[1][k]
        )


    def refused(load):
        before = optimizer_snapshot()
        try:
            load()
        except frozen.FrozenError as error:
            print("REFUSED", str(error).replace(chr(10), " "))
            print("OPTIMIZER UNCHANGED", same(before, optimizer_snapshot()))
            sys.exit(0)
        print("LOADED")
        sys.exit(0)


    start = 0
    if mode == "rollback":  # one run: save before the thaw, thaw, then load the earlier checkpoint back
        for i in range(STEPS):
            if i == THAW_AT:
                frozen.thaw(model, "2")
                frozen.optim.sync(optimizer, model, new_group=NEW_GROUP)
            step(i)
            if i + 1 == THAW_AT:
                accelerator.save_state(folder + "-early")
        refused(lambda: accelerator.load_state(folder + "-early"))
    if mode in ("replay-same", "replay-other"):  # a fresh run restores the thaw by hand, then loads
        frozen.thaw(model, "2")
        frozen.optim.sync(optimizer, model, **({"new_group": NEW_GROUP} if mode == "replay-same" else {}))
        if mode == "replay-other":  # the thawed layer goes back to its home group: other groups than saved
            refused(lambda: accelerator.load_state(folder))
        accelerator.load_state(folder)
        start = SAVE_AT
    for i in range(start, STEPS):
        if i == THAW_AT:
            frozen.thaw(model, "2")
            frozen.optim.sync(optimizer, model, new_group=NEW_GROUP)
        step(i)
        if mode == "first" and i + 1 == SAVE_AT:
            accelerator.save_state(folder)
            break
    torch.save(model.state_dict(), folder + "-" + mode + ".pt")
    """
)


def run(folder: Path, mode: str) -> subprocess.CompletedProcess[str]:
    done = run_loop(folder, SCRIPT, mode)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The straight run and a first run saved after its thaw, neither with the helper (fresh processes)."""
    folder = tmp_path_factory.mktemp("accelerate_plain")
    for mode in ("straight", "first"):
        run(folder, mode)
    return folder


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("REFUSED "), done.stdout + done.stderr[-3000:]
    assert lines[1] == "OPTIMIZER UNCHANGED True"
    return lines[0]


def test_loading_a_checkpoint_saved_before_a_thaw_names_the_helper_not_the_group_count(saved):
    message = refusal(run(saved, "rollback"))
    assert "frozen.integrations.accelerate.register(accelerator, model)" in message
    assert "saved has 1 parameter group(s) of sizes [2]" in message and "this optimizer has 2" in message
    assert "frozen.load_state" in message and "frozen.optim.sync" in message


def test_a_fresh_run_that_restored_another_layout_by_hand_is_refused_naming_the_fix(saved):
    message = refusal(run(saved, "replay-other"))
    assert "frozen.integrations.accelerate.register(accelerator, model)" in message
    assert "names ['default', 'thawed']" in message  # what the checkpoint holds: the group the thaw added


def test_restoring_the_freeze_state_and_resyncing_by_hand_resumes_bit_identically(saved):
    run(saved, "replay-same")
    straight = torch.load(saved / "ckpt-straight.pt")
    resumed = torch.load(saved / "ckpt-replay-same.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    first = torch.load(saved / "ckpt-first.pt")
    assert torch.equal(first["0.weight"], resumed["0.weight"])  # frozen all along
    assert not torch.equal(first["2.weight"], resumed["2.weight"])  # thawed, trained on after the resume
