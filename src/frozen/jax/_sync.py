"""``fj.optim.sync``: the optimizer state after ``fj.freeze`` / ``fj.thaw``, keeping what still trains.

Every ``optax`` state entry that mirrors the parameters is a dict with the group's paths
as keys (``optax`` builds it by mapping over ``{path: array}``). So a group is cut to the
arrays that still train by cutting those dicts; what does not mirror the parameters
(step counts, schedule state) is kept as it is. Arrays that start training get a new
group from ``tx.init``: their own step count (a thawed array that joined an old group
would take its count, and Adam's first step would be 1.35 x lr at step 200).

Groups whose non-parameter state is equal (same counts: nothing was stepped between)
merge into one, so the layout depends on the freeze state and the step history only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

from ._errors import FrozenError
from ._state import OptState, check_state, trainable_params

__all__ = ["sync"]


def _mirror(paths: Iterable[str]) -> Any:
    keys = frozenset(paths)
    return lambda x: isinstance(x, dict) and frozenset(x) == keys


def _cut(state: Any, paths: tuple[str, ...], keep: list[str]) -> Any:
    is_mirror = _mirror(paths)
    return jtu.tree_map(lambda x: {p: x[p] for p in keep} if is_mirror(x) else x, state, is_leaf=is_mirror)


def _skeleton(state: Any, paths: tuple[str, ...]) -> tuple[Any, list[Any]] | None:
    """The state's structure with parameter dicts as leaves, and its other leaves as numpy (None if traced)."""
    is_mirror = _mirror(paths)
    leaves, treedef = jtu.tree_flatten(state, is_leaf=is_mirror)
    rest: list[Any] = []
    for leaf in leaves:
        if is_mirror(leaf):
            rest.append("params")
            continue
        try:
            rest.append(np.asarray(leaf))
        except jax.errors.TracerArrayConversionError:
            return None
    return treedef, rest


def _same(a: tuple[Any, list[Any]] | None, b: tuple[Any, list[Any]] | None) -> bool:
    if a is None or b is None or a[0] != b[0]:
        return False
    for x, y in zip(a[1], b[1]):
        if isinstance(x, str) or isinstance(y, str):
            if not (isinstance(x, str) and isinstance(y, str)):
                return False
        elif x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def _merge(groups: list[tuple[tuple[str, ...], Any]]) -> list[tuple[tuple[str, ...], Any]]:
    merged: list[tuple[tuple[str, ...], Any]] = []
    for paths, state in sorted(groups, key=lambda g: g[0]):
        for k, (into, into_state) in enumerate(merged):
            if _same(_skeleton(state, paths), _skeleton(into_state, into)):
                is_mirror = _mirror(into)
                joined = jtu.tree_map(
                    lambda x, y, m=is_mirror: {**x, **y} if m(x) else x, into_state, state, is_leaf=is_mirror
                )
                merged[k] = (tuple(sorted(into + paths)), joined)
                break
        else:
            merged.append((paths, state))
    return sorted(merged, key=lambda g: g[0])


def _check_shapes(state: Any, paths: tuple[str, ...], params: dict[str, Any]) -> None:
    is_mirror = _mirror(paths)
    for node in jtu.tree_leaves(state, is_leaf=is_mirror):
        if not is_mirror(node):
            continue
        for p, value in node.items():
            if p in params and eqx.is_array(value) and value.shape != params[p].shape:
                raise FrozenError(
                    f"fj.optim.sync: the array {p!r} has shape {params[p].shape} in the model and "
                    f"{value.shape} in the optimizer state. Expected the model the state was made for; "
                    "for a changed model start again with fj.optim.init(tx, model)."
                )


def sync(opt_state: OptState, model: Any) -> OptState:
    """Return the optimizer state for ``model``'s trainable arrays after ``fj.freeze`` / ``fj.thaw``.

    Every state entry of an array that still trains is kept bit-identical (moments and its
    step count); newly frozen arrays' entries are dropped (the state shrinks); thawed
    arrays start from ``tx.init`` with their own step count. The ``tx`` is kept, so a
    jitted step that takes the state is not retraced for it.

    Raises:
        TypeError: ``opt_state`` is not from ``fj.optim.init``.
        FrozenError: an array's shape differs between the model and the state.

    Example:
        >>> import jax, optax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> opt_state = fj.optim.init(optax.adam(1e-3), mlp)
        >>> opt_state = fj.optim.sync(opt_state, fj.thaw(mlp))
        >>> opt_state.groups
        (('layers.0.bias', 'layers.0.weight', 'layers.1.bias', 'layers.1.weight'),)
    """
    opt_state = check_state(opt_state, "fj.optim.sync")
    paths, params, *_ = trainable_params(model)
    trains = set(paths)
    groups = []
    for group, state in zip(opt_state.groups, opt_state.states):
        keep = [p for p in group if p in trains]
        if keep:
            _check_shapes(state, group, params)
            groups.append((tuple(keep), state if len(keep) == len(group) else _cut(state, group, keep)))
    held = {p for group, _ in groups for p in group}
    fresh = [p for p in paths if p not in held]
    if fresh:
        groups.append((tuple(sorted(fresh)), opt_state.tx.init({p: params[p] for p in fresh})))
    merged = _merge(groups)
    return OptState(opt_state.tx, tuple(g for g, _ in merged), tuple(s for _, s in merged))
