"""Exact resume: freeze -> train -> thaw -> checkpoint -> resume in a fresh process, bit for bit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import frozen

# The training run, as a script: the test runs it uninterrupted in this process and
# resumes it from a checkpoint in a fresh Python process.
RUN = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    import frozen
    from frozen.schedule import GradualUnfreezing, Stage

    EPOCHS = 8

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        frozen.freeze(model, "0-3")
        groups = frozen.optim.param_groups(model, parts=["0", "2"], lr=1e-2, lr_decay=0.5, weight_decay=0.01)
        optimizer = torch.optim.AdamW(groups)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        plan = GradualUnfreezing(model, optimizer, [
            Stage(1, ("2",)),                                                # back to its own group
            Stage(2, ("0",), lr_ratio=0.1, name="bottom", growth=2.0),      # a new group, Lightning style
        ])
        return model, optimizer, scheduler, plan

    def run_epoch(model, optimizer, scheduler, plan, epoch):
        if epoch == 3:   # the user freezes and thaws by hand too
            frozen.freeze(model, "4")
            frozen.optim.sync(optimizer, model)
        if epoch == 4:
            frozen.thaw(model, "4")
            frozen.optim.sync(optimizer, model)
        g = torch.Generator().manual_seed(100 + epoch)
        x, y = torch.randn(15, 4, generator=g), torch.randn(15, 2, generator=g)
        for i in range(3):
            optimizer.zero_grad(set_to_none=False)
            nn.functional.mse_loss(model(x[5 * i:5 * i + 5]), y[5 * i:5 * i + 5]).backward()
            optimizer.step()
        scheduler.step()
        plan.step()

    def checkpoint(model, optimizer, scheduler, plan):
        return {
            "model": model.state_dict(),
            "freeze": frozen.state(model),
            "optimizer": frozen.optim.state_dict(optimizer, model),
            "scheduler": scheduler.state_dict(),
            "plan": plan.state_dict(),
        }

    def resume(saved):
        model, optimizer, scheduler, plan = build()   # the initial freeze state and groups
        model.load_state_dict(saved["model"])
        frozen.load_state(model, saved["freeze"])
        frozen.optim.load_state_dict(optimizer, model, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        plan.load_state_dict(saved["plan"])
        return model, optimizer, scheduler, plan

    if __name__ == "__main__":
        checkpoint_path, start, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        parts = resume(torch.load(checkpoint_path, weights_only=True))
        for epoch in range(start, EPOCHS):
            run_epoch(*parts, epoch)
        torch.save(checkpoint(*parts), out_path)
    """
)


def load_script(tmp_path: Path) -> dict:
    script = tmp_path / "run.py"
    script.write_text(RUN)
    namespace: dict = {"__name__": "resume_run"}
    exec(compile(RUN, str(script), "exec"), namespace)
    return namespace


def assert_same(a: object, b: object, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("stop_after", [pytest.param(5, id="after-freeze-and-thaw")])
def test_resume_in_a_fresh_process_is_bit_identical(tmp_path, stop_after):
    run = load_script(tmp_path)
    parts = run["build"]()
    for epoch in range(stop_after):
        run["run_epoch"](*parts, epoch)
    torch.save(run["checkpoint"](*parts), tmp_path / "mid.pt")
    for epoch in range(stop_after, run["EPOCHS"]):
        run["run_epoch"](*parts, epoch)
    uninterrupted = run["checkpoint"](*parts)
    # The layout really depends on the history: layer 4 was re-appended to its group.
    assert uninterrupted["optimizer"]["frozen_param_paths"][-2] == ["4.weight", "4.bias"]
    assert [g["name"] for g in parts[1].param_groups] == ["0", "2", "rest", "bottom"]

    result = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "mid.pt"), str(stop_after), str(tmp_path / "end.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    resumed = torch.load(tmp_path / "end.pt", weights_only=True)
    assert_same(uninterrupted, resumed)


def test_loading_a_plain_optimizer_state_dict_or_before_the_freeze_state_raises(tmp_path):
    run = load_script(tmp_path)
    parts = run["build"]()
    for epoch in range(3):
        run["run_epoch"](*parts, epoch)
    saved = run["checkpoint"](*parts)
    model, optimizer, _, _ = run["build"]()  # freeze state not restored: "0-3" still frozen
    before = [(dict(g, params=[id(p) for p in g["params"]])) for g in optimizer.param_groups]
    with pytest.raises(frozen.FrozenError, match=r"holds '2.weight', which is frozen.*frozen.load_state"):
        frozen.optim.load_state_dict(optimizer, model, saved["optimizer"])
    with pytest.raises(frozen.FrozenError, match=r"expected saved to come from frozen.optim.state_dict"):
        frozen.optim.load_state_dict(optimizer, model, optimizer.state_dict())
    assert before == [(dict(g, params=[id(p) for p in g["params"]])) for g in optimizer.param_groups]
