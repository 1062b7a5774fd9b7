"""Every scenario family of the suite, in the order of the results, and the scenarios they declare.

One family is one module of ``benchmarks/scenarios/``, named for what it measures. Adding a family
is one line in :data:`FAMILIES`. Every family is imported by :func:`scenarios`: a family that fails
to import is an error, never a silent gap in the results. A family whose scenarios need an optional
stack declares it in ``Scenario.requires`` instead (see :func:`missing`).
"""

from __future__ import annotations

import importlib
import importlib.util

from .declare import Scenario

__all__ = ["FAMILIES", "scenarios", "missing", "MissingRequirement"]

FAMILIES: dict[str, str] = {
    "seed": "the seed discussion's benchmark: a frozen chain's gradient, no optimizer",
    "transfer": "frozen backbones fine-tuned against optimizer-side freezing (BERT, ResNet, partial BERT)",
    "middles": "frozen middles that gradients cross (perceptual loss, conv-BN-ReLU)",
    "tied": "one weight frozen in one use and trained in another (Siamese, GPT-2 wte / lm_head)",
    "compiled": "torch.compile of a frozen backbone",
    "checkpointing": "gradient checkpointing kept through frozen middle layers",
    "selectors": "frozen.select at 1k / 5k / 20k modules",
    "cache": "cached frozen prefixes over shuffled epochs (ViT probe, BERT and GPT-2 prefixes)",
    "lean": "lean frozen middles (input-gradient-only convolutions, BatchNorm folded)",
    "cache_perceptual": "a perceptual loss whose targets' features are cached",
    "cache_host": "the host time a cached step with sample ids adds, batch 8 to 256",
    "real_sizes": "the cache and lean at the sizes people train (ViT-B/16, BERT-base, GPT-2 small, ResNet-50): GPU",
    "rows": "row freezing of a GPT-2-sized tied embedding",
    "import_time": "`import frozen` after `import torch`, in fresh processes",
    # The JAX family: benchmarks/jax_mlp.py (standalone, `measure(size) -> dict`) is wired in
    # scenarios/jax_mlp.py; its scenario requires jax and that file.
    "jax_mlp": "the same MLP freezing in JAX (Equinox + optax), measured by benchmarks/jax_mlp.py",
}


class MissingRequirement(RuntimeError):
    """A scenario was asked for by key, but a module it requires cannot be imported here."""


def scenarios() -> list[Scenario]:
    """Every scenario of every family, in :data:`FAMILIES` order; keys are unique."""
    found: list[Scenario] = []
    for family in FAMILIES:
        module = importlib.import_module(f"benchmarks.scenarios.{family}")
        declared = getattr(module, "SCENARIOS", None)
        if not declared:
            raise ValueError(
                f"benchmarks/scenarios/{family}.py declares no SCENARIOS; every family declares one or more"
            )
        found.extend(declared)
    keys = [s.key for s in found]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"benchmark scenario keys registered twice: {duplicated}; give each scenario its own key")
    return found


def missing(scenario: Scenario) -> list[str]:
    """The modules in ``scenario.requires`` that cannot be found here (without importing them)."""
    gone = []
    for name in scenario.requires:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            gone.append(name)
    return gone
