"""The README's shell commands do what it says.

* Every line of a ```bash block that starts with ``frozen `` runs against a small
  factory this test provides (``mypkg.models:build`` becomes a tiny BERT built from a
  config); it exits 0, or the status its comment documents (``# exit 2: ...``).
* ``./run`` (the set-up script) runs with a stand-in Python that records what it is
  asked to do, so the set-up logic is checked without installing anything: ``demo``
  installs only ``frozen[demo]``, ``tests`` installs ``frozen[dev]``, each once, pinned
  by ``constraints.txt``, with pip's progress shown.
* The Quickstart's thaw gives the optimizer parameters it did not have.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frozen._cli.main import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
COMMANDS = [line.strip() for block in BASH_BLOCKS for line in block.splitlines() if line.startswith("frozen ")]

FACTORY = """
from transformers import BertConfig, BertForSequenceClassification

def build():
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    return BertForSequenceClassification(config)
"""


@pytest.fixture
def readme_factory(tmp_path, monkeypatch):
    """``readme_models:build`` importable from the working directory, as the CLI expects."""
    (tmp_path / "readme_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "readme_models:build"
    sys.modules.pop("readme_models", None)


def test_the_readme_shows_frozen_commands():
    assert len(COMMANDS) >= 5 and any("--exclude-type" in c for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS, ids=[c.split("#")[0].strip()[:60] for c in COMMANDS])
def test_readme_cli_example_runs(line, readme_factory, capsys):
    command, _, comment = line.partition("#")
    documented = re.match(r"\s*exit (\d+)", comment)
    argv = shlex.split(command.replace("mypkg.models:build", readme_factory))[1:]
    _make_files_it_names(argv, readme_factory)
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == (int(documented.group(1)) if documented else 0), err
    if documented:  # a documented failure: one line, and the advice the comment promises
        assert err.count("\n") == 1 and err.startswith("frozen report: error:")
        for advice in re.findall(r"`([^`]+)`", comment):
            assert advice in err, (advice, err)
    else:
        assert out and "error" not in err


def _make_files_it_names(argv: list[str], factory: str) -> None:
    """Write the checkpoint and pickled-model files a README line reads."""
    from readme_models import build

    for before, word in zip(["", *argv], argv):
        if word.endswith(".pt"):
            model = build()
            torch.save(model.state_dict() if before == "--weights" else model, word)


def test_a_suggested_form_works_where_the_readme_form_failed(readme_factory, capsys):
    base = ["report", readme_factory, "--freeze", "bert.encoder", "--json"]
    assert main([*base, "--exclude", "LayerNorm"]) == 2
    assert main([*base, "--exclude", "**.LayerNorm"]) == 0
    by_path = capsys.readouterr().out
    assert main([*base, "--exclude-type", "LayerNorm"]) == 0
    assert capsys.readouterr().out == by_path  # both forms free the same 13 LayerNorms


def test_every_relative_link_in_the_readme_exists():
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", README) if not t.startswith("http")]
    assert links and [t for t in links if not (ROOT / t).exists()] == []


def test_quickstart_thaw_adds_parameters_to_the_optimizer():
    quickstart = re.search(r"## Quickstart\n+```python\n(.*?)^```", README, re.DOTALL | re.MULTILINE).group(1)
    assert len(quickstart.splitlines()) <= 15
    before, after = quickstart.split("frozen.thaw(", 1)
    namespace: dict = {}
    exec(compile(before, "README Quickstart", "exec"), namespace)
    optimizer = namespace["optimizer"]
    counted = sum(len(group["params"]) for group in optimizer.param_groups)
    exec(compile("frozen.thaw(" + after, "README Quickstart", "exec"), namespace)
    grown = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert len(grown) > counted
    assert grown == {id(p) for p in namespace["model"].parameters() if p.requires_grad}


# ./run with a stand-in Python ------------------------------------------------------------

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$RUN_LOG"
case "$1 ${2:-}" in
  "-c "*) exit 0 ;;
  "--version ") echo "Python 3.11.9" ;;
  "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
  "-m pip") echo "Collecting torch==2.13.0"; echo "Installing collected packages: torch"; exit "${FAKE_PIP_STATUS:-0}" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of the set-up script and the files it hashes, with a stand-in Python."""
    for name in ("run", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    python = tmp_path / "python3.11"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def run_script(checkout: Path, *args: str, pip_status: int = 0) -> tuple[int, list[str], str]:
    """Run ``./run ARGS``; return its status, the Python commands it ran, and its stderr."""
    log = checkout / "calls.log"
    log.write_text("")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(checkout / "python3.11"), "RUN_LOG": str(log)}
    env["FAKE_PIP_STATUS"] = str(pip_status)
    done = subprocess.run([str(checkout / "run"), *args], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, log.read_text().splitlines(), done.stderr


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install")]


def test_run_demo_creates_the_venv_and_installs_only_the_demo_extra(checkout):
    status, calls, err = run_script(checkout, "demo", "--quick")
    assert status == 0 and "-m venv .venv" in calls
    assert installs(calls) == ["-m pip install --disable-pip-version-check -c constraints.txt -e .[demo]"]
    assert calls[-1] == "-m frozen demo --quick"
    # It says what it installs, how long it takes, and lets pip's progress through.
    assert "installing frozen[demo]" in err and "scikit-learn" in err and "minute" in err
    assert "Collecting torch==2.13.0" in err and "ready for 'demo'" in err
    status, calls, _ = run_script(checkout, "demo")
    assert status == 0 and installs(calls) == [] and calls[-1] == "-m frozen demo"


def test_run_tests_installs_the_dev_extra_once_and_then_demo_needs_nothing(checkout):
    run_script(checkout, "demo")
    status, calls, err = run_script(checkout, "tests", "-x")
    assert status == 0 and "-m venv .venv" not in calls
    assert installs(calls) == ["-m pip install --disable-pip-version-check -c constraints.txt -e .[dev]"]
    assert (
        calls[-1] == "-m pytest -n 2 --dist loadfile -v --durations=15 -x" and "pytest" in err
    )  # -v: each test's file as it runs
    assert installs(run_script(checkout, "tests")[1]) == []
    assert installs(run_script(checkout, "bench")[1]) == []
    assert installs(run_script(checkout, "frozen", "--version")[1]) == []  # dev includes demo


def test_run_reinstalls_when_the_pins_change_and_retries_after_a_failed_install(checkout):
    run_script(checkout, "demo")
    with (checkout / "constraints.txt").open("a") as pins:
        pins.write("numpy==2.4.6\n")
    status, calls, err = run_script(checkout, "demo", pip_status=1)
    assert status == 1 and "pip install failed" in err and calls[-1].startswith("-m pip install")
    status, calls, _ = run_script(checkout, "demo")
    assert status == 0 and len(installs(calls)) == 1 and calls[-1] == "-m frozen demo"


def test_run_refuses_an_old_python_and_an_unknown_command(checkout):
    old = checkout / "python3.9"
    old.write_text("#!/usr/bin/env bash\ncase \"$1\" in -c) exit 1 ;; --version) echo 'Python 3.9.2' ;; esac\n")
    old.chmod(0o755)
    done = subprocess.run(
        [str(checkout / "run"), "demo"],
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(old)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Python >= 3.11" in done.stderr and "3.9.2" in done.stderr
    status, calls, err = run_script(checkout, "tset")
    assert status == 2 and "usage: ./run demo | tests" in err and installs(calls) == []
