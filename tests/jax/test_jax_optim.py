"""fj.optim: state for the trainable part only, frozen leaves bit-identical, sync after freeze/thaw, traces."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax_nets import Blocks, batch, mse

import frozen.jax as fj

MODEL = Blocks(key=jax.random.PRNGKey(0))
X, Y = batch()
LR = 1e-2

OPTIMIZERS = {
    "adamw": optax.adamw(LR, weight_decay=0.5),
    "sgd-momentum": optax.sgd(LR, momentum=0.9),
    "lion": optax.lion(LR, weight_decay=0.5),
    "clip-adamw": optax.chain(optax.clip_by_global_norm(0.05), optax.adamw(LR, weight_decay=0.5)),
}


def make_step(tx):
    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = fj.value_and_grad(mse)(model, x, y)
        updates, opt_state = fj.optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def reference(tx, frozen_blocks, steps):
    """Hand-written: optax on the trainable part only (eqx.partition), gradients of that part only."""
    trains = tuple(jax.tree_util.tree_map(lambda _, k=k: k not in frozen_blocks, b) for k, b in enumerate(MODEL.blocks))
    part, rest = eqx.partition(
        MODEL, eqx.tree_at(lambda s: s.blocks, jax.tree_util.tree_map(lambda _: True, MODEL), trains)
    )
    state = tx.init(part)

    @jax.jit
    def step(part, state):
        grads = jax.grad(lambda p: mse(eqx.combine(p, rest), X, Y))(part)
        updates, state = tx.update(grads, state, part)
        return optax.apply_updates(part, updates), state

    for _ in range(steps):
        part, state = step(part, state)
    return eqx.combine(part, rest), state


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_leaves_stay_bit_identical_and_trainable_ones_match_the_hand_written_ideal(name):
    tx = OPTIMIZERS[name]
    model = fj.freeze(MODEL, "blocks.0-5")
    opt_state = fj.optim.init(tx, model)
    assert fj.optim.state_nbytes(opt_state) == fj.optim.state_nbytes(tx.init(fj.trainable(model)))
    step = make_step(tx)
    for _ in range(3):
        model, opt_state, _ = step(model, opt_state, X, Y)
    for k in range(6):  # weight decay, momentum and sign updates never reach a frozen leaf
        assert jnp.array_equal(model.blocks[k].weight, MODEL.blocks[k].weight)
        assert jnp.array_equal(model.blocks[k].bias, MODEL.blocks[k].bias)
    want, _ = reference(tx, set(range(6)), 3)
    for k in (6, 7):  # clip_by_global_norm sees the trainable gradients only, as the ideal does
        assert not jnp.array_equal(model.blocks[k].weight, MODEL.blocks[k].weight)
        assert np.allclose(model.blocks[k].weight, want.blocks[k].weight, rtol=1e-5, atol=1e-7)


def test_clipping_norm_ignores_frozen_gradients():
    """Optimizer-side freezing clips by a norm that includes the frozen gradients: a different step."""
    tx = optax.chain(optax.clip_by_global_norm(1e-3), optax.sgd(1.0))
    model = fj.freeze(MODEL, "blocks.0-5")
    updates, _ = fj.optim.update(fj.grad(mse)(model, X, Y), fj.optim.init(tx, model), model)
    norm = jnp.sqrt(sum(jnp.sum(u**2) for u in jax.tree_util.tree_leaves(updates)))
    assert np.allclose(norm, 1e-3, rtol=1e-4)  # the trainable update alone has the clipped norm


def adam_moments(opt_state, path):
    (group,) = [k for k, g in enumerate(opt_state.groups) if path in g]
    adam = opt_state.states[group][0]
    return adam.count, adam.mu[path], adam.nu[path]


def test_sync_after_thaw_keeps_state_gives_thawed_leaves_their_own_count_and_refreeze_shrinks():
    tx = optax.adam(LR)
    step = make_step(tx)
    model = fj.freeze(MODEL, "blocks.0-5")
    opt_state = fj.optim.init(tx, model)
    small = fj.optim.state_nbytes(opt_state)
    for _ in range(4):
        model, opt_state, _ = step(model, opt_state, X, Y)
    before = adam_moments(opt_state, "blocks.7.weight")
    thawed = fj.thaw(model, "blocks.4-5")
    synced = fj.optim.sync(opt_state, thawed)
    assert synced.tx is opt_state.tx
    assert all(jnp.array_equal(a, b) for a, b in zip(adam_moments(synced, "blocks.7.weight"), before))
    assert int(adam_moments(synced, "blocks.4.weight")[0]) == 0  # a count of its own
    assert fj.optim.state_nbytes(synced) == small + 2 * 2 * (64 + 8) * 4 + 4  # moments of blocks 4-5, one count
    stepped, _, _ = step(thawed, synced, X, Y)
    first = jnp.abs(stepped.blocks[4].weight - thawed.blocks[4].weight)
    assert float(first.max()) <= LR * 1.0001  # Adam's first step: lr, not 1.35 x lr
    refrozen = fj.optim.sync(synced, fj.freeze(thawed, "blocks.4-5"))
    assert fj.optim.state_nbytes(refrozen) == small and refrozen.groups == opt_state.groups


def test_freeze_sets_a_b_a_b_trace_twice():
    tx = optax.adamw(LR)
    traces = []

    @eqx.filter_jit
    def step(model, opt_state):
        traces.append(1)
        grads = fj.grad(mse)(model, X, Y)
        updates, opt_state = fj.optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state

    model = fj.freeze(MODEL, "blocks.0-5")
    opt_state = fj.optim.init(tx, model)
    for selector in ["blocks.0-5", "blocks.2-5", "blocks.0-5", "blocks.2-5"]:
        model = fj.freeze(fj.thaw(model), selector)
        opt_state = fj.optim.sync(opt_state, model)
        model, opt_state = step(model, opt_state)
    assert len(traces) == 2


def test_a_mask_function_sees_the_trainable_arrays_by_path():
    tx = optax.adamw(LR, weight_decay=0.5, mask=lambda params: {p: p.endswith("weight") for p in params})
    model = fj.freeze(MODEL, "blocks.0-5")
    opt_state = fj.optim.init(tx, model)
    updates, _ = fj.optim.update(fj.grad(mse)(model, X, Y), opt_state, model)
    assert updates.blocks[0].weight is None and updates.blocks[7].weight.shape == (8, 8)


def test_errors_leave_nothing_half_built():
    tx = optax.adam(LR)
    model = fj.freeze(MODEL, "blocks.0-5")
    opt_state = fj.optim.init(tx, model)
    grads = fj.grad(mse)(model, X, Y)
    with pytest.raises(fj.FrozenError, match=r"fj.optim.sync\(opt_state, model\)"):
        fj.optim.update(grads, opt_state, fj.thaw(model))  # thawed without sync
    with pytest.raises(TypeError, match=r"fj.optim.init\(tx, model\)"):
        fj.optim.sync(tx.init(fj.trainable(model)), model)
    with pytest.raises(TypeError, match="expected an optax.GradientTransformation"):
        fj.optim.init("adam", model)
    bigger = eqx.tree_at(lambda m: m.blocks[7].weight, model, jnp.zeros((8, 9)))
    held = jax.tree_util.tree_leaves(opt_state)
    with pytest.raises(fj.FrozenError, match=r"'blocks.7.weight' has shape \(8, 9\) in the model"):
        fj.optim.sync(opt_state, bigger)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(opt_state), held))
