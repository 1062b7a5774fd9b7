"""``fj.optim.init`` / ``update`` / ``state_nbytes``: optax state for the trainable arrays only.

The state holds the ``optax`` transformation (``tx``, a static field, so the same ``tx``
keeps a jitted step's cache) and one or more *groups*: a tuple of array paths and the
``optax`` state of ``tx`` over the dict ``{path: array}`` of those arrays. Paths are
wrapper-transparent, so freezing or thawing other parts never renames a state entry.
``fj.optim.init`` makes one group. ``fj.optim.sync`` (``_sync.py``) keeps the groups'
entries for arrays that still train and gives thawed arrays a group of their own, with
their own step count.

``tx`` sees the dict ``{path: array}``: a mask or label function given to ``optax``
(``optax.adamw(mask=...)``, ``optax.multi_transform``) receives that dict.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.tree_util as jtu

from ._errors import FrozenError
from ._query import analyse

__all__ = ["OptState", "check_state", "init", "state_nbytes", "trainable_params", "update"]


class OptState(eqx.Module):
    """What ``fj.optim.init`` returns: ``tx``, the groups' paths, and their ``optax`` states."""

    tx: Any = eqx.field(static=True)
    groups: tuple[tuple[str, ...], ...] = eqx.field(static=True)
    states: tuple[Any, ...]


def check_state(opt_state: Any, function: str) -> OptState:
    """Return ``opt_state`` if ``fj.optim.init`` made it, else raise ``TypeError`` saying so."""
    if not isinstance(opt_state, OptState):
        raise TypeError(
            f"{function}: expected the state fj.optim.init(tx, model) returned; received "
            f"{type(opt_state).__name__}. Create it with opt_state = fj.optim.init(tx, model)."
        )
    return opt_state


def trainable_params(model: Any) -> tuple[list[str], dict[str, Any], list[Any], Any, dict[str, int]]:
    """The trainable paths, ``{path: array}``, the model's leaves and treedef, and ``{path: leaf number}``."""
    found = analyse(model)
    leaves, treedef = jtu.tree_flatten(model)
    where = {found.walk.entries[e].path: k for k, e in enumerate(found.walk.leaves)}
    paths = found.trainable_paths()
    return paths, {p: leaves[where[p]] for p in paths}, leaves, treedef, where


def init(tx: Any, model: Any) -> OptState:
    """Return the optimizer state of ``tx`` for the arrays of ``model`` that train.

    Its bytes (``state_nbytes``) are those of ``tx.init(fj.trainable(model))``: nothing is
    held for frozen arrays.

    Raises:
        TypeError: ``tx`` is not an ``optax.GradientTransformation``.

    Example:
        >>> import jax, optax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> opt_state = fj.optim.init(optax.adam(1e-3), mlp)
        >>> opt_state.groups
        (('layers.1.bias', 'layers.1.weight'),)
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"fj.optim.init: expected an optax.GradientTransformation as tx; received {type(tx).__name__}. "
            "Pass e.g. fj.optim.init(optax.adamw(1e-3), model)."
        )
    paths, params, *_ = trainable_params(model)
    if not paths:
        return OptState(tx, (), ())
    return OptState(tx, (tuple(sorted(paths)),), (tx.init(params),))


def update(grads: Any, opt_state: OptState, model: Any, **extra_args: Any) -> tuple[Any, OptState]:
    """Return ``(updates, opt_state)`` for ``grads`` of ``model``; ``None`` updates at frozen leaves.

    Apply with ``model = eqx.apply_updates(model, updates)``: frozen arrays stay bit-identical.
    ``grads`` may come from ``fj.grad`` (``None`` at frozen leaves) or hold every gradient
    (only the trainable ones are read). ``extra_args`` (such as ``value=`` for
    ``optax.contrib.reduce_on_plateau``) go to ``tx.update``. Works inside ``jax.jit``.

    Raises:
        FrozenError: the model's trainable arrays are not the state's (call ``fj.optim.sync``
            after ``fj.freeze`` / ``fj.thaw``), or ``grads`` lacks one of them.
    """
    opt_state = check_state(opt_state, "fj.optim.update")
    paths, params, leaves, treedef, where = trainable_params(model)
    held = {p for group in opt_state.groups for p in group}
    if held != set(paths):
        new = [p for p in paths if p not in held]
        gone = sorted(held - set(paths))
        raise FrozenError(
            "fj.optim.update: the optimizer state does not hold the model's trainable arrays: "
            f"trainable but not in the state: {new[:5]}; in the state but not trainable: {gone[:5]}. "
            "Expected a state synced with the model; after fj.freeze / fj.thaw call "
            "opt_state = fj.optim.sync(opt_state, model)."
        )
    try:
        flat = treedef.flatten_up_to(grads)
    except (ValueError, TypeError):
        raise FrozenError(
            "fj.optim.update: grads do not have the tree structure of the model. Expected the gradients of this "
            "model (fj.grad(loss)(model, ...)); compute them after fj.freeze / fj.thaw, not before."
        ) from None
    updates: list[Any] = [None] * len(leaves)
    states = []
    for group, state in zip(opt_state.groups, opt_state.states):
        missing = [p for p in group if flat[where[p]] is None]
        if missing:
            raise FrozenError(
                f"fj.optim.update: grads hold None for the trainable arrays {missing[:5]}. Expected a gradient "
                "for every trainable array; compute grads with fj.grad on the model as it is now."
            )
        step, state = opt_state.tx.update(
            {p: flat[where[p]] for p in group}, state, {p: params[p] for p in group}, **extra_args
        )
        for p in group:
            updates[where[p]] = step[p]
        states.append(state)
    return jtu.tree_unflatten(treedef, updates), OptState(opt_state.tx, opt_state.groups, tuple(states))


def state_nbytes(opt_state: Any) -> int:
    """Bytes of the arrays an optimizer state holds (an ``fj.optim`` state or any ``optax`` state).

    Example:
        >>> import jax, optax, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 2, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> fj.optim.state_nbytes(fj.optim.init(optax.adam(1e-3), mlp))  # mu, nu: 2 x 10 floats; count
        84
    """
    return sum(int(x.nbytes) for x in jtu.tree_leaves(opt_state) if eqx.is_array(x))
