"""How long ``import frozen`` takes after ``import torch``, in fresh processes.

``import frozen`` should cost next to nothing on top of torch: no ``torch._dynamo``
(about 900 modules, sympy included) and no optional stack (transformers, lightning,
jax) until a feature needs it. Each measurement starts a new interpreter, imports
torch, then times ``import frozen`` alone; the figure is the minimum over the
processes (the least disturbed run on a shared machine).

Run it alone: ``python benchmarks/import_time.py [tiny|full]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["HEAVY", "measure"]

# Modules whose presence after `import frozen` means something heavy was loaded eagerly.
HEAVY = ("torch._dynamo", "sympy", "transformers", "lightning", "jax")

_SRC = Path(__file__).resolve().parents[1] / "src"

_PROBE = """
import json, sys, time
import torch
before = len(sys.modules)
start = time.perf_counter()
import frozen
seconds = time.perf_counter() - start
heavy = [name for name in json.loads(sys.argv[1]) if name in sys.modules]
print(json.dumps({"seconds": seconds, "modules": len(sys.modules) - before, "heavy": heavy}))
"""


def _one_process() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(size: str = "full") -> dict[str, Any]:
    """Time ``import frozen`` after ``import torch``: the minimum over 5 fresh processes (1 in tiny mode).

    Returns ``{"seconds": min, "runs": [...], "processes": n, "modules": modules frozen's
    import added, "heavy": heavy modules loaded by it}``.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"measure(size={size!r}): expected 'tiny' or 'full'.")
    runs = [_one_process() for _ in range(1 if size == "tiny" else 5)]
    return {
        "seconds": min(run["seconds"] for run in runs),
        "runs": [run["seconds"] for run in runs],
        "processes": len(runs),
        "modules": runs[0]["modules"],
        "heavy": sorted({name for run in runs for name in run["heavy"]}),
    }


if __name__ == "__main__":
    result = measure(sys.argv[1] if len(sys.argv) > 1 else "full")
    print(
        f"import frozen after import torch: {result['seconds'] * 1000:.0f} ms (min of {result['processes']}), "
        f"{result['modules']} modules added, heavy modules loaded: {', '.join(result['heavy']) or 'none'}"
    )
