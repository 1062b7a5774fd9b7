"""What trains: the one rule every other part of ``frozen.jax`` reads.

An array *trains in a model* when it is a floating array outside any ``eqx.nn.StateIndex``,
no wrapper with ``tied="freeze"`` covers any of its uses, and at least one of its uses
is not frozen. Its uses are its own place in the tree and, for an array that
``eqx.nn.Shared`` ties, every place ``Shared`` puts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from ._errors import SelectorError, closest
from ._ties import Tie, find_ties
from ._tree import Walk, check_alignment, walk

__all__ = ["Analysis", "analyse", "is_frozen", "trainable", "trainable_leaves"]


@dataclass(eq=False)
class Analysis:
    """A model's walk, its ties, and for each entry whether it is a trainable array."""

    walk: Walk
    ties: list[Tie]
    trains: list[bool]

    def trainable_paths(self) -> list[str]:
        """The paths of the trainable arrays, in model order."""
        return [e.path for e, t in zip(self.walk.entries, self.trains) if t]

    def leaf_mask(self) -> list[bool]:
        """For each ``jax`` leaf of the model, whether it trains."""
        return [self.trains[i] for i in self.walk.leaves]


def analyse(model: Any) -> Analysis:
    """Walk ``model`` and decide, for each array, whether it trains (see the module docstring)."""
    found = walk(model)
    check_alignment(model, found)
    ties = find_ties(found)
    entries = found.entries
    uses: dict[int, list[int]] = {}
    for tie in ties:
        for source in tie.sources:
            uses.setdefault(source, []).append(tie.target)
    trains = []
    for i, entry in enumerate(entries):
        if entry.kind != "array" or entry.state or not eqx.is_inexact_array(entry.value):
            trains.append(False)
            continue
        places = [entry, *(entries[t] for t in uses.get(i, ()))]
        trains.append(not any(p.everywhere for p in places) and not all(p.frozen for p in places))
    return Analysis(found, ties, trains)


def trainable_leaves(model: Any) -> list[bool]:
    """For each ``jax`` leaf of ``model``, whether it trains."""
    return analyse(model).leaf_mask()


def trainable(model: Any) -> Any:
    """Return ``model`` with ``None`` at every leaf that does not train (frozen, non-float, not an array).

    The result is the trainable part: hand it to ``optax`` (``tx.init(fj.trainable(model))``) or
    count its bytes.

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> [x.shape for x in jax.tree_util.tree_leaves(fj.trainable(mlp))]
        [(2, 4), (2,)]
    """
    leaves, treedef = jtu.tree_flatten(model)
    mask = trainable_leaves(model)
    return jtu.tree_unflatten(treedef, [leaf if m else None for leaf, m in zip(leaves, mask)])


def is_frozen(model: Any, path: str = "") -> bool:
    """Whether the part of ``model`` at ``path`` is frozen.

    An array is frozen when it does not train. A module is frozen when its use is (it is
    inside a ``Frozen`` wrapper, placed by hand or by ``fj.freeze``); a container (a list,
    tuple or dict of modules) when it holds something and everything in it is frozen.

    Raises:
        SelectorError: no part of the model has that path (the message lists the closest).

    Example:
        >>> import jax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> fj.is_frozen(mlp, "layers.0"), fj.is_frozen(mlp, "layers.0.bias"), fj.is_frozen(mlp, "")
        (True, True, False)
    """
    if not isinstance(path, str):
        raise TypeError(f"fj.is_frozen: path must be a dotted path (str), received {type(path).__name__} {path!r}.")
    found = analyse(model)
    entries = found.walk.entries
    i = found.walk.index.get(path)
    if i is None or entries[i].kind == "leaf":
        raise SelectorError(
            f"fj.is_frozen: the path {path!r} names no module or array of the model. Expected an existing "
            f"dotted path; closest existing paths: {closest(path, found.walk.paths())}. "
            "List every path with fj.select(model, '**')."
        )

    def frozen(k: int) -> bool:
        entry = entries[k]
        if entry.kind == "array":
            return not found.trains[k]
        if entry.kind == "module" or entry.frozen:
            return entry.frozen
        parts = [c for c in range(k + 1, entry.end) if entries[c].parent == k and entries[c].kind != "leaf"]
        return bool(parts) and all(frozen(c) for c in parts)

    return frozen(i)
