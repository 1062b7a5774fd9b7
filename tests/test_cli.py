"""The `frozen` command line: report (factories, patterns, files) and error exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import frozen
from frozen._cli import main

FACTORY_MODULE = """
import torch
from torch import nn

def build():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

not_a_model = 3
"""


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "cli_models.py").write_text(FACTORY_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cli_models:build"
    sys.modules.pop("cli_models", None)


def test_report_with_freeze_and_exclude_prints_the_table(factory, capsys):
    assert main(["report", factory, "--freeze", "0", "2", "--exclude", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[3] for line in lines[2:6]}
    assert rows == {"(model)": "mixed", "0": "frozen", "1": "-", "2": "trainable"}
    assert lines[-2].startswith("trainable: 18 params")


def test_report_json_and_depth(factory, capsys):
    assert main(["report", factory, "--freeze", "0", "--depth", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in data["rows"]] == [""] and data["totals"]["frozen_params"] == 40


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "cli_models:biuld"], "closest names: 'build'"),
        (["report", "cli_modles:build"], "no module named 'cli_modles'"),
        (["report", "cli_models:not_a_model"], "expected a zero-argument function"),
        (["report", "cli_models:build", "--freeze", "3"], "'3'"),
        (["report", "cli_models:build", "--exclude", "0"], "--exclude only narrows --freeze"),
        (["report", "cli_models", "--depth", "1"], "expected MODULE:FACTORY"),
    ],
    ids=["typo-factory", "typo-module", "not-callable", "unknown-pattern", "exclude-alone", "no-colon"],
)
def test_bad_input_exits_2_with_one_line(factory, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("frozen report: error:") and message in err


def test_state_dict_file_loads_weights_only(factory, tmp_path, capsys):
    from cli_models import build

    model = build()
    frozen.freeze(model, "0")  # state_dict keys are the plain model's
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert main(["report", factory, "--weights", "weights.pt", "--depth", "1"]) == 0
    assert main(["report", "weights.pt"]) == 2
    assert "holds a state_dict" in capsys.readouterr().err


def test_whole_model_pickle_needs_the_explicit_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = nn.Sequential(frozen.Frozen(nn.Linear(2, 2)), nn.Linear(2, 1))
    torch.save(model, tmp_path / "model.pt")
    assert main(["report", "model.pt"]) == 2
    assert "runs arbitrary code" in capsys.readouterr().err
    assert main(["report", "model.pt", "--unsafe-load-pickle", "--plain"]) == 0
    assert "forced eval" in capsys.readouterr().out


def test_python_dash_m_frozen_and_help_run():
    result = subprocess.run(
        [sys.executable, "-m", "frozen", "report", "--help"], capture_output=True, text=True, check=True
    )
    assert "--unsafe-load-pickle" in result.stdout and "ARBITRARY CODE" in result.stdout


def test_import_frozen_imports_no_framework_or_renderer():
    code = "import sys, frozen; print(sorted(m for m in ('transformers', 'lightning', 'rich', 'matplotlib', 'sklearn') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
