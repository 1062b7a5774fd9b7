"""``import frozen`` is light: nothing heavy is loaded until a feature needs it.

Checked in a fresh interpreter (this test process has long imported everything), as
behaviour, not timing: after ``import torch; import frozen``, none of the heavy or
optional stacks is in ``sys.modules``. ``torch._dynamo`` alone is about 900 modules
with sympy, over a second on a loaded machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")

# What `import torch` does not load by itself and `import frozen` must not load either.
HEAVY = ("torch._dynamo", "sympy", "transformers", "lightning", "pytorch_lightning", "jax", "rich", "scipy")


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_torch_alone_loads_none_of_them():
    # The baseline the next test relies on: otherwise it would prove nothing about frozen.
    assert _loaded_after("import torch") == []


@pytest.mark.parametrize(
    "code", ["import torch; import frozen", "import frozen", "import frozen.optim, frozen.schedule"]
)
def test_import_frozen_loads_no_heavy_or_optional_stack(code):
    assert _loaded_after(code) == []


def test_a_feature_that_needs_dynamo_still_gets_it():
    # The cache applies torch.compiler.disable when its first part is built, not at import.
    code = (
        "import torch, frozen\n"
        "net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))\n"
        "frozen.freeze(net, '0')\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "handle = frozen.cache(net, '0')\n"
        "assert 'torch._dynamo' in sys.modules\n"
        "x = torch.randn(4, 2)\n"
        "assert torch.equal(net(x), net(x)) and frozen.cache_stats(net)['0']['hits'] == 4\n"
    )
    assert "torch._dynamo" in _loaded_after(code)


def test_import_frozen_jax_never_imports_torch():
    # The package root loads its names on first use, so the JAX backend's users never pay for torch.
    probe = "import sys, frozen.jax\nprint('torch' in sys.modules, 'frozen._core' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_names_load_on_first_use_and_unknown_names_still_raise():
    code = (
        "import frozen\n"
        "assert 'frozen._core' not in sys.modules\n"
        "assert frozen.freeze.__module__ == 'frozen._freeze.freeze' and 'frozen._core' in sys.modules\n"
        "assert frozen.optim.sync is frozen.optim._sync.sync and callable(frozen._core.trainable_ids)\n"
        "assert sorted(frozen.__all__) == sorted(n for n in dir(frozen) if n in frozen.__all__)\n"
        "try:\n    frozen.not_a_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    assert _loaded_after(code) == []
