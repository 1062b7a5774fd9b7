"""Run a training script in a fresh Python process, as a user's resumed run starts: nothing of this one carried over.

``run_loop(folder, script, mode)`` writes ``script`` to ``folder/loop.py`` and runs it with
``mode`` and a checkpoint path ``folder/ckpt`` as its arguments, with this checkout's
``src`` on the path, warnings silenced and one torch thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["run_loop"]

ROOT = Path(__file__).resolve().parents[2]


def run_loop(folder: Path, script: str, mode: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as ``python folder/loop.py MODE folder/ckpt``; return the finished process."""
    path = folder / "loop.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(path), mode, str(folder / "ckpt")], capture_output=True, text=True, env=env, timeout=300
    )
