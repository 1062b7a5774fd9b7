"""The benchmark harness runs: one scenario, very few steps, correctness columns True.

No timing is asserted anywhere (design.md §3: timings live in benchmarks/, as ratios).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# `python -m pytest` puts the repository root on sys.path; a bare `pytest` does not.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._report import scenario_markdown, targets  # noqa: E402
from benchmarks._run import Settings, run_scenario  # noqa: E402
from benchmarks._scenarios import SCENARIOS  # noqa: E402

TINY = Settings(
    full=False,
    warmup=1,
    inner_scale=0.05,
    rounds_scale=0.0,
    memory_steps=0,
    threads=torch.get_num_threads(),
    device=torch.device("cpu"),
)


def scenario(key: str):
    return next(s for s in SCENARIOS if s.key == key)


def test_seed_scenario_runs_and_frozen_weights_stay_bit_identical():
    result = run_scenario(scenario("seed"), TINY)
    rows = {row.variant: row for row in result.rows}
    assert {"unfrozen", "ideal", "Frozen", "Frozen+settle"} <= set(rows)
    for name, row in rows.items():
        assert row.timing.samples and all(t > 0 for t in row.timing.samples)
        if name != "unfrozen":
            assert row.correct is True, (name, row.correct_note)
            assert row.gradient_bytes == rows["ideal"].gradient_bytes, name  # only the trained layer
    assert rows["unfrozen"].gradient_bytes > rows["ideal"].gradient_bytes
    # the white box: same output as the hand-written ideal, exactly (bf16 rows differ by design)
    assert all(row.output_difference == 0 for name, row in rows.items() if "bf16" not in name)
    text = scenario_markdown(result, "test machine", "pytest")
    assert "| Frozen+settle |" in text and "n/a" in text  # optimizer-side does not apply here
    assert targets(result)


def test_fine_tune_scenario_catches_the_alternatives_that_move_frozen_weights():
    result = run_scenario(scenario("resnet"), TINY, only=["optimizer-side", "grad-masking", "ideal", "Frozen+settle"])
    rows = {row.variant: row for row in result.rows}
    assert rows["ideal"].correct is True and rows["Frozen+settle"].correct is True
    assert rows["grad-masking"].correct is False  # AdamW weight decay moves zero-gradient weights
    assert rows["optimizer-side"].correct is False  # BatchNorm statistics move in training mode
    assert rows["Frozen+settle"].optimizer_bytes == rows["ideal"].optimizer_bytes < rows["grad-masking"].optimizer_bytes


def test_siamese_gradient_matches_the_hand_written_stop_gradient():
    result = run_scenario(scenario("siamese"), TINY, only=["ideal", "Frozen", "Frozen+settle"])
    assert all(row.correct is True for row in result.rows), [(r.variant, r.correct_note) for r in result.rows]
