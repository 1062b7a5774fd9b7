"""The benchmark suite runs: every registered scenario in tiny mode, structure and correctness only.

No timing is asserted anywhere (timings live in benchmarks/, as ratios in one run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# `python -m pytest` puts the repository root on sys.path; a bare `pytest` does not.
ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    AA,
    FAMILIES,
    VERDICTS,
    Bar,
    Settings,
    judge,
    median_interval,
    missing,
    report,
    run_scenario,
    scenarios,
)

TINY = Settings(
    full=False,
    warmup=1,
    inner_scale=0.01,
    rounds_scale=0.0,  # 2 rounds: too few for a verdict, enough to exercise every path
    memory_steps=0,
    threads=torch.get_num_threads(),
    device=torch.device("cpu"),
    size="tiny",
)
# Variants that freeze (by hand or through the library) and must leave the frozen tensors bit-identical.
MUST_HOLD = ("ideal", "Frozen", "Frozen+settle", "freeze", "Frozen+settle bf16", "freeze bf16", "ideal+eval")
SCENARIOS = {s.key: s for s in scenarios()}


# Baselines that leave BatchNorm in training mode normalise with batch statistics: other outputs, by design.
TRAINING_MODE_BASELINES = ("unfrozen", "optimizer-side", "grad-masking")


def _assert_computes_what_the_reference_computes(name: str, difference: float | None) -> None:
    """A timing is only comparable if the variant computes the same function on the same batch."""
    if difference is None or name in TRAINING_MODE_BASELINES:
        return
    bound = 2e-2 if "bf16" in name else 1e-5  # bf16 weights: ~3 significant digits; else float rounding
    assert difference <= bound, f"{name}: output differs from the reference's by {difference:.3g} (relative)"


@pytest.mark.parametrize("key", list(SCENARIOS))
def test_every_scenario_runs_with_every_variant_and_an_aa_row(key, tmp_path, capsys):
    scenario = SCENARIOS[key]
    if gone := missing(scenario):  # an optional stack is not installed: asking for it is refused, naming it
        assert main(["--quick", "--scenario", key, "--out", str(tmp_path)]) == 2
        assert gone[0] in capsys.readouterr().err and not list(tmp_path.iterdir())
        return
    result = run_scenario(scenario, TINY)
    assert not result.skipped, result.skipped
    rows = {row.variant: row for row in result.rows}
    expected = {v for v in scenario.variants if v not in scenario.not_applicable}
    if scenario.reference is not None:
        expected.add(scenario.reference + AA)
    assert set(rows) == expected
    for name, row in rows.items():
        if scenario.timed:
            assert row.timing.samples and all(t > 0 for t in row.timing.samples)
        else:  # measured once: its figures are the result, and no step was timed
            assert not row.timing.samples and row.figures, name
        assert row.saved_bytes is None or row.saved_bytes > 0, name
        if name.removesuffix(AA) in MUST_HOLD:
            assert row.correct is True, (name, row.correct_note)
        _assert_computes_what_the_reference_computes(name, row.output_difference)
    assert len(result.verdicts) == len(scenario.bars)
    for verdict in result.verdicts:
        assert verdict.verdict in VERDICTS
        if verdict.bar.measure == "time":  # 2 rounds never give a time verdict
            assert verdict.verdict == "inconclusive", verdict
    text = report.scenario_markdown(result, "test machine", "pytest")
    assert f"| {scenario.reference}{AA} |" in text or scenario.reference is None
    assert report.summary_markdown([result], "test machine", "pytest", [])


def test_baselines_that_leave_batchnorm_training_move_its_statistics():
    result = run_scenario(SCENARIOS["resnet"], TINY, only=["optimizer-side", "grad-masking", "ideal", "freeze"])
    rows = {row.variant: row for row in result.rows}
    assert rows["ideal"].correct is True and rows["freeze"].correct is True
    assert rows["optimizer-side"].correct is False and "running_mean" in rows["optimizer-side"].correct_note
    # The fair mask (`p.grad = None`) keeps AdamW off the frozen weights: only BN statistics move.
    assert rows["grad-masking"].correct is False and "running_" in rows["grad-masking"].correct_note
    # ... and AdamW creates no state for a parameter whose .grad is None.
    assert rows["freeze"].optimizer_bytes == rows["ideal"].optimizer_bytes == rows["grad-masking"].optimizer_bytes
    assert rows["freeze"].saved_bytes < rows["optimizer-side"].saved_bytes  # a frozen prefix saves nothing


def test_verdict_rule_uses_the_aa_spread():
    bar = Bar("x", "a", "ideal", 1.03)
    ideal = [1.0] * 10
    tight = {"ideal": ideal, "a": [1.0 + 0.001 * i for i in range(10)]}
    assert judge(bar, tight, {}, 0.01).verdict == "met"
    assert judge(bar, tight, {}, 0.05).verdict == "inconclusive"  # a wide A/A spread: no claim either way
    slow = {"ideal": ideal, "a": [1.2] * 10}
    assert judge(bar, slow, {}, 0.05).verdict == "missed"
    assert judge(bar, {"ideal": ideal[:5], "a": [1.0] * 5}, {}, 0.0).verdict == "inconclusive"  # < 6 rounds
    saved = Bar("s", "a", "ideal", 0.5, "<=", "saved")
    assert judge(saved, {}, {"a": {"saved": 40}, "ideal": {"saved": 100}}, None).verdict == "met"
    assert judge(saved, {}, {"a": {"saved": 60}, "ideal": {"saved": 100}}, None).verdict == "missed"
    assert median_interval(list(range(1, 21))) == (6, 15)


def test_the_gpu_check_script_passes_its_dry_run_on_cpu():
    # CI has no card; the dry run keeps the script that gpu.sh runs first from rotting between lent GPUs.
    import os
    import subprocess

    env = {**os.environ, "GPU_CHECK_DEVICE": "cpu"}
    done = subprocess.run(
        [sys.executable, str(Path(ROOT) / "benchmarks" / "gpu_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    passed = done.stdout.count("\n  ok   ")
    assert passed >= 7 and f"{passed} of {passed} checks passed" in done.stdout, done.stdout


def test_every_family_is_a_module_that_declares_scenarios():
    # One registry, no optional families: a family that fails to import fails here, not silently later.
    import importlib

    declared = {
        s.key for family in FAMILIES for s in importlib.import_module(f"benchmarks.scenarios.{family}").SCENARIOS
    }
    assert declared == set(SCENARIOS)
    family_files = {p.stem for p in (Path(ROOT) / "benchmarks" / "scenarios").glob("*.py") if p.stem != "__init__"}
    assert family_files == set(FAMILIES)


def test_a_scenario_whose_requirement_is_missing_is_left_out_of_a_full_run_and_refused_by_key(
    tmp_path, capsys, monkeypatch
):
    import dataclasses

    import benchmarks.__main__ as entry

    seed = dataclasses.replace(SCENARIOS["seed"], requires=("no_such_module_for_frozen",))
    assert missing(seed) == ["no_such_module_for_frozen"]
    monkeypatch.setattr(entry, "scenarios", lambda: [seed])
    assert main(["--quick", "--scenario", "seed", "--out", str(tmp_path / "by-key")]) == 2
    assert "no_such_module_for_frozen" in capsys.readouterr().err
    assert main(["--quick", "--no-profile", "--out", str(tmp_path / "all")]) == 0
    summary = (tmp_path / "all" / "summary.md").read_text()
    assert "`seed` was left out: it requires no_such_module_for_frozen" in summary
    assert not (tmp_path / "all" / "seed.md").exists()


def test_import_time_reports_seconds_and_whether_dynamo_was_imported():
    result = run_scenario(SCENARIOS["import-time"], TINY)
    (row,) = result.rows
    assert row.figures["processes"] == 1 and row.figures["seconds"] > 0
    assert row.figures["torch._dynamo imported"] in ("yes", "no")
    (verdict,) = result.verdicts
    assert verdict.verdict == ("met" if row.figures["seconds"] <= 0.3 else "missed")
