"""The jax stack is here, ``frozen.jax`` imports without torch, and tests/jax skip or fail as promised.

This file imports no jax at the top: it is the one file collected when jax is missing,
and then reports the skip with its reason.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

MISSING = [name for name in ("jax", "equinox", "optax") if importlib.util.find_spec(name) is None]
for _name in ("jax", "equinox", "optax"):
    try:  # a package can be found and still fail to import
        importlib.import_module(_name)
    except ImportError as error:
        MISSING = MISSING or [f"{_name} ({error})"]
REASON = f"tests/jax need jax, equinox and optax; not importable here: {', '.join(MISSING)}"

ROOT = Path(__file__).resolve().parents[2]


def test_jax_stack_is_importable():
    if MISSING:
        pytest.skip(REASON)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_frozen_jax_imports_no_torch():
    if MISSING:
        pytest.skip(REASON)
    # Load frozen.jax under a bare parent package, so the check does not depend on how
    # frozen/__init__.py is written: the subpackage itself must not import torch.
    code = textwrap.dedent(f"""
        import sys, types
        parent = types.ModuleType("frozen")
        parent.__path__ = [{str(ROOT / "src" / "frozen")!r}]
        sys.modules["frozen"] = parent
        import frozen.jax as fj
        assert fj.freeze and fj.optim.sync
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
    """)
    done = _run(code)
    assert done.returncode == 0, done.stderr


def test_missing_jax_skips_the_directory_with_its_reason(tmp_path):
    if MISSING:
        pytest.skip(REASON)  # the run below hides jax; inside it, this test must not run again
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(_hide_jax(tmp_path))}
    args = [sys.executable, "-m", "pytest", "tests/jax", "-q", "-p", "no:cacheprovider", "-rs"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " skipped" in done.stdout and " passed" not in done.stdout, done.stdout
    assert "tests/jax need jax, equinox and optax" in done.stdout


def test_missing_jax_under_ci_fails_instead_of_skipping(tmp_path):
    if MISSING:
        pytest.skip(REASON)
    env = os.environ | {"PYTHONPATH": str(_hide_jax(tmp_path)), "CI": "true"}
    code = "import runpy; runpy.run_path('tests/jax/conftest.py')"  # what pytest does first with this directory
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "RuntimeError: CI is set, so tests/jax must run, not skip" in done.stderr


def _hide_jax(tmp_path: Path) -> Path:
    hidden = tmp_path / "jax"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('hidden by a test')\n")
    return tmp_path
