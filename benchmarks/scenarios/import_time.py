"""``import frozen`` after ``import torch``, in fresh processes: the library's import must stay light.

Each measurement starts a new interpreter, imports torch, then times ``import frozen`` followed by
the first use of every public name (the root loads its names on first use, so this is what a script
that uses the library pays) and
records whether that import pulled in ``torch._dynamo`` (hundreds of modules, sympy included) --
which nothing should load until a feature needs it. The figure is the minimum over the processes
(the least disturbed run on a shared machine): 5 processes, 1 in tiny mode. The bar, 0.3 s, is an
absolute bound on the measured value, reported as met or missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..harness import Bar, Scenario, measured

__all__ = ["SCENARIOS", "measure"]

_SRC = Path(__file__).resolve().parents[2] / "src"  # this tree's frozen, installed or not

_PROBE = """
import json, sys, time
import torch
before = set(sys.modules)
start = time.perf_counter()
import frozen
names = [getattr(frozen, name) for name in frozen.__all__]  # the root loads names on first use: load them all
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "modules": len(set(sys.modules) - before),
                  "dynamo": "torch._dynamo" in sys.modules}))
"""


def _one_process() -> dict[str, Any]:
    path = os.pathsep.join(filter(None, [str(_SRC), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"`import torch; import frozen` failed in a fresh process:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(size: str = "full") -> dict[str, Any]:
    """The minimum over 5 fresh processes (1 when ``size == "tiny"``) of ``import frozen``'s time."""
    runs = [_one_process() for _ in range(1 if size == "tiny" else 5)]
    return {
        "seconds": round(min(run["seconds"] for run in runs), 4),
        "processes": len(runs),
        "modules added": min(run["modules"] for run in runs),
        "torch._dynamo imported": "yes" if any(run["dynamo"] for run in runs) else "no",
    }


SCENARIOS = (
    Scenario(
        key="import-time",
        title="`import frozen` after `import torch`",
        about="A fresh interpreter per measurement: `import torch`, then `import frozen` timed alone "
        "(`time.perf_counter`), this tree's `src/` first on the path. Figures: the minimum over 5 "
        "processes (1 in tiny mode), the modules frozen's import added, and whether it imported "
        "`torch._dynamo`. Bar: at most 0.3 s, an absolute bound on the measured minimum.",
        build=measured(measure, "nothing frozen: measured in fresh processes"),
        variants=("import frozen",),
        bars=(
            Bar(
                "`import frozen` after `import torch` (s, min over processes)",
                "import frozen",
                None,
                0.3,
                "<=",
                "seconds",
            ),
        ),
        reference=None,
        rss=False,
        timed=False,
    ),
)
