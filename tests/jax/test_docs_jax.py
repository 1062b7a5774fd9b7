"""Every ```python block of docs/jax.md runs, in order, in one namespace."""

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "jax.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def test_every_python_block_of_docs_jax_md_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 5
    namespace: dict = {"__name__": "docs_jax"}
    for number, block in enumerate(blocks, start=1):
        exec(compile(block, f"docs/jax.md (python block {number})", "exec"), namespace)


def test_every_public_name_is_documented():
    import frozen.jax as fj

    text = PAGE.read_text()
    missing = [name for name in fj.__all__ if f"fj.{name}" not in text]
    missing += [f"optim.{name}" for name in fj.optim.__all__ if f"fj.optim.{name}" not in text]
    assert missing == []
