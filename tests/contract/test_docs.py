"""Every ```python block in README.md and docs/**/*.md runs.

The blocks of one file run in order in one namespace, so a page can build on its
earlier blocks. Blocks not meant to run are fenced ```text or ```bash. Also checks
that the README's API reference names every public name of ``frozen``.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import frozen

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    # A registered module, as a script's __main__ is: dataclasses (and Equinox modules) look their
    # string annotations up in sys.modules[cls.__module__].
    module = types.ModuleType(f"docs_{page.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    for number, block in enumerate(BLOCK.findall(page.read_text()), start=1):
        code = compile(block, f"{page.relative_to(ROOT)} (python block {number})", "exec")
        exec(code, namespace)


def test_readme_api_reference_names_every_public_name():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in frozen.__all__ if f"`{name}" not in readme and f"{name}(" not in readme]
    assert missing == []


def test_readme_first_screen_keeps_the_two_set_up_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:15])
    assert "./run demo" in first_screen and "./run tests" in first_screen
