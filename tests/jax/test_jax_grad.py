"""fj.value_and_grad / fj.grad: no wasted work (HLO dot counts), trainable bytes only, None at frozen leaves."""

import re

import equinox as eqx
import jax
import numpy as np
import pytest
from jax_nets import Blocks, batch, mse

import frozen.jax as fj

MODEL = Blocks(key=jax.random.PRNGKey(0))
X, Y = batch()


def dots(f, *args):
    """Matrix products in the compiled step (and the same count before XLA's optimisations)."""
    lowered = jax.jit(f).lower(*args)
    compiled = len(re.findall(r"\bdot\(", lowered.compile().as_text()))
    assert lowered.as_text().count("dot_general") == compiled
    return compiled


def ideal(frozen_blocks):
    """The hand-written ideal: eqx.partition, then the gradient of the trainable part only."""
    trains = tuple(jax.tree_util.tree_map(lambda _, k=k: k not in frozen_blocks, b) for k, b in enumerate(MODEL.blocks))
    spec = eqx.tree_at(lambda s: s.blocks, jax.tree_util.tree_map(lambda _: True, MODEL), trains)
    part, rest = eqx.partition(MODEL, spec)

    def step(part, x, y):
        return jax.value_and_grad(lambda p: mse(eqx.combine(p, rest), x, y))(part)

    return step, part


@pytest.mark.parametrize(
    ("selector", "frozen_blocks", "expected"),
    [("blocks.0-5", range(6), 11), ("blocks.2-5", range(2, 6), 19)],
    ids=["frozen-prefix", "frozen-middle"],
)
def test_hlo_does_the_ideals_matmuls_and_fewer_than_optimizer_side_freezing(selector, frozen_blocks, expected):
    model = fj.freeze(MODEL, selector)
    ours = dots(lambda m, x, y: fj.value_and_grad(mse)(m, x, y), model, X, Y)
    step, part = ideal(set(frozen_blocks))
    assert ours == dots(step, part, X, Y) == expected
    # optimizer-side freezing (optax.masked / set_to_zero) differentiates everything: 8 + 8 + 7
    assert dots(lambda m, x, y: jax.value_and_grad(mse)(m, x, y), MODEL, X, Y) == 23


def test_gradients_returned_from_jit_hold_only_trainable_bytes_and_none_elsewhere():
    model = fj.freeze(MODEL, "blocks.0-5")
    value, grads = eqx.filter_jit(fj.value_and_grad(mse))(model, X, Y)
    got = sum(g.nbytes for g in jax.tree_util.tree_leaves(grads))
    want = sum(b.weight.nbytes + b.bias.nbytes for b in MODEL.blocks[6:])
    assert got == want
    assert grads.blocks[0].weight is None and grads.blocks[7].weight.shape == (8, 8)
    assert np.allclose(value, mse(MODEL, X, Y))


def test_has_aux_and_grad():
    model = fj.freeze(MODEL, "blocks.1-7")

    def loss(m, x, y):
        out = mse(m, x, y)
        return out, {"twice": 2 * out}

    (value, aux), grads = fj.value_and_grad(loss, has_aux=True)(model, X, Y)
    assert np.allclose(aux["twice"], 2 * value)
    only, aux2 = fj.grad(loss, has_aux=True)(model, X, Y)
    assert np.allclose(only.blocks[0].weight, grads.blocks[0].weight) and only.blocks[1].weight is None
    assert np.allclose(aux2["twice"], aux["twice"])
