"""``fj.value_and_grad`` / ``fj.grad``: differentiate with respect to the trainable arrays only.

The model is split into its trainable arrays (the argument ``jax`` differentiates) and
everything else (closed over as constants), then put back together inside the function.
So ``jax`` never builds the backward pass of a frozen part's weights: a frozen prefix
costs no backward work, a frozen middle computes input gradients only, and the
gradients hold only trainable bytes. Frozen and non-array leaves get ``None``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu

from ._query import trainable_leaves

__all__ = ["grad", "value_and_grad"]


def value_and_grad(fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., tuple[Any, Any]]:
    """Return ``f(model, *args, **kwargs) -> (value, grads)`` for ``fn(model, *args, **kwargs)``.

    ``grads`` has the model's tree structure with ``None`` at every leaf that does not train
    (frozen, non-float, or not an array), so ``eqx.apply_updates(model, updates)`` and
    ``fj.optim.update`` take it as it is. Works inside and outside ``jax.jit`` /
    ``eqx.filter_jit``.

    Args:
        fn: a scalar function whose first argument is the model.
        has_aux: ``fn`` returns ``(value, aux)``; then ``f`` returns ``((value, aux), grads)``.

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 1, 4, 1, key=jax.random.PRNGKey(0)), "layers.0")
        >>> loss = lambda model, x: jnp.sum(model(x) ** 2)
        >>> value, grads = fj.value_and_grad(loss)(mlp, jnp.ones(2))
        >>> grads.layers[0].weight is None, grads.layers[1].weight.shape
        (True, (1, 4))
    """

    @functools.wraps(fn)
    def wrapped(model: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        leaves, treedef = jtu.tree_flatten(model)
        mask = trainable_leaves(model)
        differentiated = [leaf if trains else None for leaf, trains in zip(leaves, mask)]

        def split(part: list[Any], *args: Any, **kwargs: Any) -> Any:
            whole = [mine if trains else leaf for mine, leaf, trains in zip(part, leaves, mask)]
            return fn(jtu.tree_unflatten(treedef, whole), *args, **kwargs)

        value, grads = jax.value_and_grad(split, has_aux=has_aux)(differentiated, *args, **kwargs)
        return value, jtu.tree_unflatten(treedef, grads)

    return wrapped


def grad(fn: Callable[..., Any], *, has_aux: bool = False) -> Callable[..., Any]:
    """Return ``f(model, *args, **kwargs) -> grads`` (``(grads, aux)`` with ``has_aux``); see ``value_and_grad``.

    Example:
        >>> import jax, jax.numpy as jnp, equinox as eqx, frozen.jax as fj
        >>> mlp = fj.freeze(eqx.nn.MLP(2, 1, 4, 1, key=jax.random.PRNGKey(0)), "layers.1")
        >>> grads = fj.grad(lambda model, x: jnp.sum(model(x)))(mlp, jnp.ones(2))
        >>> grads.layers[0].bias.shape, grads.layers[1].bias
        ((4,), None)
    """
    both = value_and_grad(fn, has_aux=has_aux)

    @functools.wraps(fn)
    def wrapped(model: Any, *args: Any, **kwargs: Any) -> Any:
        value, grads = both(model, *args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return wrapped
