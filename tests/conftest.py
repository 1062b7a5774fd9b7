"""Test-suite set-up: the shared helpers in ``tests/helpers`` import by plain name from every folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
