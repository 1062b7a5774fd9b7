"""``./run tests --torch 2.10``: the suite on the declared torch floor, in a venv of its own.

Run with a stand-in Python that records what it is asked to do (nothing is installed): the
floor venv is ``.venv-torch2.10``, pip gets the project's pins with torch replaced by the
requested release, and the development ``.venv`` is left alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$RUN_LOG"
case "$1 ${2:-}" in
  "-c "*) exit 0 ;;
  "--version ") echo "Python 3.11.9" ;;
  "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python" ;;
  "-m pip") for a in "$@"; do case "$a" in *constraints.txt) cp "$a" "$RUN_LOG.pins" ;; esac; done ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    for name in ("run", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, tmp_path / name)
    python = tmp_path / "python3.11"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def run_script(checkout: Path, *args: str) -> tuple[int, list[str], str]:
    log = checkout / "calls.log"
    log.write_text("")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(checkout / "python3.11"), "RUN_LOG": str(log)}
    done = subprocess.run([str(checkout / "run"), *args], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, log.read_text().splitlines(), done.stderr


def test_the_floor_run_uses_its_own_venv_and_pins_the_requested_torch(checkout):
    status, calls, err = run_script(checkout, "tests", "--torch", "2.10", "-x")
    assert status == 0, err
    assert "-m venv .venv-torch2.10" in calls and not (checkout / ".venv").exists()
    install = [c for c in calls if c.startswith("-m pip install")]
    assert install == ["-m pip install --disable-pip-version-check -c .venv-torch2.10/constraints.txt -e .[dev]"]
    pins = (checkout / "calls.log.pins").read_text().splitlines()
    assert "torch==2.10.*" in pins and not [p for p in pins if re.match(r"torch==2\.13", p)]
    assert calls[-1] == "-m pytest -n 2 --dist loadfile -v --durations=15 -x"
    assert "torch 2.10" in err
    status, calls, _ = run_script(checkout, "tests", "--torch", "2.10")  # installed once
    assert status == 0 and not [c for c in calls if c.startswith("-m pip install")]


def test_the_declared_floor_is_the_one_the_run_script_documents():
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"torch>=([0-9.]+)"', pyproject).group(1)
    assert f"--torch {floor}" in (ROOT / "run").read_text()
    assert f"./run tests --torch {floor}" in (ROOT / "README.md").read_text()
