"""The house rules run with the tests: ruff (lint and format) and mypy, clean."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = {
    "ruff check": [sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks"],
    "ruff format": [sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "benchmarks"],
    "mypy": [sys.executable, "-m", "mypy", "--no-incremental"],  # files and options: pyproject.toml
}


@pytest.mark.parametrize("tool", list(TOOLS))
def test_tree_is_clean(tool):
    done = subprocess.run(TOOLS[tool], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{tool} found problems:\n{done.stdout}\n{done.stderr}"
