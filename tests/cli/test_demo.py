"""`frozen demo --quick`: a real (short) transfer-learning run, deterministic per seed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from frozen._cli.demo import DemoResult, Thaw, draw_curves, run_demo

# `frozen demo --quick` through the command line runs in tests/cli/test_readme_commands.py.


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[DemoResult, str]:
    """One quick run (seed 0) shared by the tests that only read it, and what it printed."""
    console = quiet_console()
    result = run_demo(quick=True, seed=0, out=tmp_path_factory.mktemp("demo") / "curves.png", console=console)
    return result, console.file.getvalue()


def test_quick_demo_compares_four_variants_and_keeps_the_backbone_bit_identical(quick):
    result, text = quick
    names = [v.name for v in result.variants]
    assert names == ["from scratch", "full fine-tune", "frozen backbone", "gradual unfreezing"]
    assert result.frozen_bit_identical and result.frozen_tensors_checked == 21
    by_name = {v.name: v for v in result.variants}
    frozen_backbone, full = by_name["frozen backbone"], by_name["full fine-tune"]
    assert frozen_backbone.trainable_params < full.trainable_params / 10
    assert frozen_backbone.optimizer_bytes < full.optimizer_bytes / 10
    assert by_name["gradual unfreezing"].trainable_at_start == frozen_backbone.trainable_params
    assert by_name["gradual unfreezing"].trainable_params == full.trainable_params
    # Quick run: 4 epochs; the last block thaws after epoch 1, the whole backbone after epoch 2,
    # and each time the optimizer gains the thawed parameters.
    assert by_name["gradual unfreezing"].thaws == [
        Thaw(1, "backbone.3", frozen_backbone.trainable_params + 9_312),
        Thaw(2, "backbone", full.trainable_params),
    ]
    assert all(not v.thaws for v in result.variants[:3])
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bit-identical" in text and str(result.plot) in text and "optimizer state" in text


def test_same_seed_same_numbers(quick):
    again = run_demo(quick=True, seed=0, out=None, console=quiet_console())
    assert [v.curve.accuracy for v in again.variants] == [v.curve.accuracy for v in quick[0].variants]
    assert [v.curve.loss for v in again.variants] == [v.curve.loss for v in quick[0].variants]


def test_the_plot_marks_each_thaw_with_a_labelled_line(quick):
    result = quick[0]
    figure = draw_curves(result.variants)
    gradual = result.variants[-1]
    for ax in figure.axes:
        curve = next(line for line in ax.get_lines() if line.get_label() == "gradual unfreezing")
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert [line.get_xdata()[0] for line in dashed] == [1.5, 2.5]  # between the epochs
        assert {line.get_color() for line in dashed} == {curve.get_color()}
    accuracy_panel, loss_panel = figure.axes
    labels = [f"thaw {t.part}\n({t.trainable:,} trainable)" for t in gradual.thaws]
    assert [t.get_text() for t in accuracy_panel.texts] == labels and len(loss_panel.texts) == 0
