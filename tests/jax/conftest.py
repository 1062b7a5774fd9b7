"""Skip tests/jax cleanly when jax, equinox or optax is missing; under CI (``CI`` set), fail instead.

Without them, every test file here but ``test_jax_environment.py`` is left out of collection
(nothing imports jax), and ``test_jax_environment.py`` reports one skip with the reason. CI
installs ``frozen[dev]``, which includes the ``jax`` extra: there a missing package is a
broken environment, so loading this file raises and the run fails rather than skips.
"""

import importlib
import os
from pathlib import Path

MISSING: list[str] = []
for name in ("jax", "equinox", "optax"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        MISSING.append(f"{name} ({error})")

REASON = (
    f"tests/jax need jax, equinox and optax; not importable here: {', '.join(MISSING)}. "
    "Install them with: pip install -c constraints.txt -e '.[jax]'"
)

if MISSING and os.environ.get("CI"):
    raise RuntimeError(f"CI is set, so tests/jax must run, not skip: {REASON}")

_KEPT = {"conftest.py", "test_jax_environment.py", "__init__.py"}


def pytest_ignore_collect(collection_path: Path, config: object) -> bool | None:
    if MISSING and collection_path.suffix == ".py" and collection_path.name not in _KEPT:
        return True
    return None
