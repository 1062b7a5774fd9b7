"""`frozen demo --quick`: a real (short) transfer-learning run, deterministic per seed."""

from __future__ import annotations

import io

from rich.console import Console

from frozen._cli import main
from frozen._demo import run_demo


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_quick_demo_compares_four_variants_and_keeps_the_backbone_bit_identical(tmp_path):
    console = quiet_console()
    result = run_demo(quick=True, seed=0, out=tmp_path / "curves.png", console=console)
    names = [v.name for v in result.variants]
    assert names == ["from scratch", "full fine-tune", "frozen backbone", "gradual unfreezing"]
    assert result.frozen_bit_identical and result.frozen_tensors_checked == 21
    by_name = {v.name: v for v in result.variants}
    frozen_backbone, full = by_name["frozen backbone"], by_name["full fine-tune"]
    assert frozen_backbone.trainable_params < full.trainable_params / 10
    assert frozen_backbone.optimizer_bytes < full.optimizer_bytes / 10
    assert by_name["gradual unfreezing"].trainable_at_start == frozen_backbone.trainable_params
    assert by_name["gradual unfreezing"].trainable_params == full.trainable_params
    assert result.plot is not None and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = console.file.getvalue()
    assert "bit-identical" in text and str(result.plot) in text and "optimizer state" in text


def test_same_seed_same_numbers(tmp_path):
    first = run_demo(quick=True, seed=3, out=None, console=quiet_console())
    second = run_demo(quick=True, seed=3, out=None, console=quiet_console())
    assert [v.curve.accuracy for v in first.variants] == [v.curve.accuracy for v in second.variants]


def test_cli_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo.png")]) == 0
    assert (tmp_path / "demo.png").is_file()
    assert "bit-identical" in capsys.readouterr().out
