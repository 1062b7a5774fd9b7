"""The JAX side: the same MLP freezing in JAX (Equinox + optax), as ``benchmarks/jax_mlp.py`` measures it.

``benchmarks/jax_mlp.py`` is a standalone script whose ``measure(size) -> dict`` ("tiny" or "full")
returns its own figures; this family shows them in the suite's tables, measured once (no step of
the suite's timer), with no bar of its own. It requires jax and that file: a run of every scenario
leaves it out when either is missing and says so; ``--scenario jax-mlp`` then fails, naming it.
"""

from __future__ import annotations

from typing import Any

from ..harness import Scenario, measured

__all__ = ["SCENARIOS"]


def _measure(size: str) -> dict[str, Any]:
    from benchmarks.jax_mlp import measure  # imported only when the family runs: it imports jax

    return measure(size)


SCENARIOS = (
    Scenario(
        key="jax-mlp",
        title="JAX: freezing an MLP with Equinox + optax",
        about="The figures of `benchmarks/jax_mlp.py` (`measure(size)`), shown as they are returned; "
        "see that file for the model, the variants and the method.",
        build=measured(_measure, "checked by benchmarks/jax_mlp.py itself"),
        variants=("jax",),
        reference=None,
        rss=False,
        timed=False,
        requires=("jax", "benchmarks.jax_mlp"),
    ),
)
