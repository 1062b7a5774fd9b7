"""Tied arrays: the uses ``eqx.nn.Shared`` creates, found so freezing can follow every use.

``eqx.nn.Shared(pytree, where, get)`` stores the tied array once (at ``get``'s place) and
puts a placeholder at each ``where`` place; its call puts the array back there. So an
array at a ``get`` place has more than one use: its own path and each placeholder's path.
Which arrays ``get`` reads is found from its jaxpr (so ``get`` may transform them, as in
``lambda p: p[0].weight.T``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu

from ._tree import Walk

__all__ = ["Tie", "find_ties"]

_CACHE: dict[tuple[Any, ...], tuple[tuple[int, ...], ...]] = {}
_CACHE_SIZE = 256


@dataclass(frozen=True)
class Tie:
    """One ``where`` place of an ``eqx.nn.Shared`` and the arrays ``get`` puts there (entry indices)."""

    shared: str  # path of the Shared module
    target: int  # entry of the placeholder (a use of the sources)
    sources: tuple[int, ...]  # entries of the arrays read to fill it


def _read_by(get: Callable[[Any], Any], pytree: Any, places: int) -> tuple[tuple[int, ...], ...]:
    """For each of ``places`` outputs of ``get``, the positions (among the arrays of ``pytree``) it reads."""
    leaves, treedef = jtu.tree_flatten(pytree)
    positions = [k for k, leaf in enumerate(leaves) if eqx.is_array(leaf)]
    shapes = tuple(jax.ShapeDtypeStruct(leaves[k].shape, leaves[k].dtype) for k in positions)
    key = (get, treedef, shapes, places)
    if key in _CACHE:
        return _CACHE[key]

    def read(place: int) -> Callable[..., list[Any]]:
        def run(*arrays: Any) -> list[Any]:
            full = list(leaves)
            for k, array in zip(positions, arrays):
                full[k] = array
            out = get(jtu.tree_unflatten(treedef, full))
            part = out if places == 1 else out[place]
            return [x for x in jtu.tree_leaves(part) if eqx.is_array(x)]

        return run

    found = []
    for place in range(places):
        jaxpr = jax.make_jaxpr(read(place))(*shapes).jaxpr
        used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
        found.append(tuple(k for k, v in enumerate(jaxpr.invars) if id(v) in used))
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.clear()
    _CACHE[key] = result = tuple(found)
    return result


def find_ties(found: Walk) -> list[Tie]:
    """Every tie of the model walked in ``found``, one per ``where`` place.

    Example:
        >>> import jax, equinox as eqx
        >>> from frozen.jax._tree import walk
        >>> key1, key2 = jax.random.split(jax.random.PRNGKey(0))
        >>> pair = (eqx.nn.Embedding(5, 3, key=key1), eqx.nn.Linear(3, 5, use_bias=False, key=key2))
        >>> shared = eqx.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[0].weight)
        >>> found = walk(shared)
        >>> [(found.entries[t.target].path, [found.entries[s].path for s in t.sources]) for t in find_ties(found)]
        [('pytree.1.weight', ['pytree.0.weight'])]
    """
    ties = []
    for s in found.shared:
        entry = found.entries[s]
        module = entry.value
        inner = next(
            i for i in range(s + 1, entry.end) if found.entries[i].parent == s and found.entries[i].name == "pytree"
        )
        span = range(inner, found.entries[inner].end)
        nodes = module.where(module.pytree)
        nodes = list(nodes) if isinstance(nodes, Sequence) and not isinstance(nodes, eqx.Module) else [nodes]
        by_id = {id(found.entries[i].value): i for i in span if found.entries[i].kind == "leaf"}
        arrays = [i for i in span if found.entries[i].kind == "array"]
        reads = _read_by(module.get, module.pytree, len(nodes))
        for node, read in zip(nodes, reads):
            if id(node) in by_id:
                ties.append(Tie(entry.path, by_id[id(node)], tuple(arrays[k] for k in read)))
    return ties
