"""The `frozen` command line: report (factories, patterns, files) and error exits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import frozen
from frozen._cli.main import main

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
        (["report", "cli_models:build", "--exclude", "0"], "--exclude only narrows or tunes --freeze"),
        (["report", "cli_models:build", "--train-norms"], "--train-norms only narrows or tunes --freeze"),
        (["report", "cli_models:build", "--freeze", "0", "--freeze-type", "Lineer"], "closest: 'Linear'"),
        (["report", "cli_models:build", "--freeze-type", "Conv2d"], "Module types present: "),
        (["report", "cli_models", "--depth", "1"], "expected MODULE:FACTORY"),
        (["report", "cli_models:build", "--tied", "fre"], "invalid choice: 'fre'"),
        (["report", "cli_models:build", "--freez", "0"], "ambiguous option: --freez could match"),
        (["report", "cli_models:build", "--exclud-typo", "x"], "closest options: '--exclude-type'"),
        (["report", "cli_models:build", "--depth", "two"], "invalid int value: 'two'"),
    ],
    ids=[
        "typo-factory",
        "typo-module",
        "not-callable",
        "unknown-pattern",
        "exclude-alone",
        "train-norms-alone",
        "typo-type",
        "absent-type",
        "no-colon",
        "bad-choice",
        "ambiguous-option",
        "unknown-option",
        "not-an-int",
    ],
)
def test_bad_input_exits_2_with_one_line(factory, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(("frozen report: error:", "frozen: error:")), err
    assert message in err and "Traceback" not in err and "usage:" not in err


NESTED_MODULE = """
import torch
from torch import nn

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)

    def forward(self, x):
        return self.norm(self.proj(x))

class LayerNorm(nn.Module):  # the model's own class, named like torch.nn's (not a subclass)
    def __init__(self, width):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.scale

def build():
    return nn.Sequential(Block(), Block(), LayerNorm(4), nn.Linear(4, 2))

def tied():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
    model[2].weight = model[0].weight
    return model
"""


@pytest.fixture
def nested(tmp_path, monkeypatch):
    (tmp_path / "cli_nested.py").write_text(NESTED_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "cli_nested"
    sys.modules.pop("cli_nested", None)


def frozen_rows(capsys) -> dict[str, str]:
    return {row["path"]: row["state"] for row in json.loads(capsys.readouterr().out)["rows"]}


def test_types_by_class_name_cover_the_models_own_classes_and_torch_nn(nested, capsys):
    # LayerNorm names both torch.nn.LayerNorm and the model's own LayerNorm class.
    assert main(["report", "cli_nested:build", "--freeze", "**", "--exclude-type", "LayerNorm", "--json"]) == 0
    rows = frozen_rows(capsys)
    assert [p for p, state in rows.items() if state == "trainable"] == ["0.norm", "1.norm", "2"]
    assert (
        main(["report", "cli_nested:build", "--freeze-type", "Block", "--exclude-type", "torch.nn.Linear", "--json"])
        == 0
    )
    rows = frozen_rows(capsys)
    assert [p for p, state in rows.items() if state == "frozen"] == ["0.norm", "1.norm"]
    assert rows["0"] == rows["1"] == "mixed" and rows["0.proj"] == rows["3"] == "trainable"


def test_train_norms_and_mode_reach_freeze(nested, capsys):
    assert main(["report", "cli_nested:build", "--freeze", "**", "--train-norms", "--json"]) == 0
    # torch's norm layers and the model's own LayerNorm class (named *Norm, no parameter below it)
    assert [p for p, state in frozen_rows(capsys).items() if state == "trainable"] == ["0.norm", "1.norm", "2"]
    assert main(["report", "cli_nested:build", "--freeze", "0", "--mode", "inherit", "--plain"]) == 0
    assert "forced eval" not in capsys.readouterr().out
    assert main(["report", "cli_nested:build", "--freeze", "0", "--plain"]) == 0
    assert "forced eval" in capsys.readouterr().out


def test_an_unmatched_name_suggests_the_forms_that_work(nested, capsys):
    assert main(["report", "cli_nested:build", "--freeze", "**", "--exclude", "norm"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--exclude '**.norm'" in err and "--exclude-type" not in err
    assert main(["report", "cli_nested:build", "--freeze", "Block"]) == 2
    err = capsys.readouterr().err
    assert "--freeze-type Block" in err and "'**.Block'" not in err


def test_tied_warning_is_one_readable_line_and_the_policy_is_an_option(nested, capsys):
    assert main(["report", "cli_nested:tied", "--freeze", "0", "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout stays pure JSON
    assert captured.err.count("\n") == 1 and captured.err.startswith("frozen report: warning: ")
    assert "'0.weight'" in captured.err and "--tied train" in captured.err
    assert "TiedParameterWarning" not in captured.err and ".py:" not in captured.err
    assert main(["report", "cli_nested:tied", "--freeze", "0", "--tied", "train", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and frozen_rows_from(captured.out)["2"] == "trainable"
    assert main(["report", "cli_nested:tied", "--freeze", "0", "--tied", "error"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tied freeze" in err and "tied=" not in err


def frozen_rows_from(out: str) -> dict[str, str]:
    return {row["path"]: row["state"] for row in json.loads(out)["rows"]}


def test_warnings_from_the_console_script_are_one_line(nested):
    command = [sys.executable, "-m", "frozen", "report", "cli_nested:tied", "--freeze", "0", "--plain"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("frozen report: warning: shared between")


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
