"""`import frozen` and the README's Quickstart need only torch: numpy (declared for the disk cache
store and byte-wise hashing) is never imported on that path. Run in a fresh interpreter where the
import system cannot find numpy, as in a clean venv that has torch alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK_NUMPY = '''
import sys

HIDDEN = {"numpy"}

class HideNumpy:
    """Every finder answers "no such module" for numpy, as in a venv without it."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.inner, name)

sys.meta_path[:] = [HideNumpy(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
'''


def quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", BLOCK_NUMPY + code], capture_output=True, text=True, env=env, timeout=120
    )


def test_the_hook_really_refuses_numpy():
    done = run_blocked("import numpy")
    assert done.returncode != 0 and "No module named 'numpy'" in done.stderr


def test_import_frozen_and_the_quickstart_run_without_numpy():
    code = (
        quickstart() + "\nimport sys\nassert 'numpy' not in sys.modules, 'numpy was imported'\nprint('quickstart ok')\n"
    )
    done = run_blocked("import frozen, frozen.optim, frozen.distributed, frozen.schedule\n" + code)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "quickstart ok" in done.stdout


OPTIONAL = (
    "numpy",
    "rich",
    "matplotlib",
    "sklearn",
    "tqdm",
    "transformers",
    "lightning",
    "accelerate",
    "peft",
    "deepspeed",
)


def test_the_command_line_report_runs_with_torch_alone():
    hide_all = f"HIDDEN.update({OPTIONAL!r})\n"
    code = hide_all + "import runpy\nsys.argv = ['frozen', 'report', 'torch.nn:Identity']\n"
    done = run_blocked(code + "runpy.run_module('frozen', run_name='__main__')\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trainable: 0 params" in done.stdout
