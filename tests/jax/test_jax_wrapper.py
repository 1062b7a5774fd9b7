"""Frozen: a white box per use (S1-S3, S5 for JAX)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_nets import leaves_equal

import frozen.jax as fj


class Three(eqx.Module):
    a: eqx.Module
    b: eqx.Module
    c: eqx.Module

    def __call__(self, x):
        return self.c(jnp.tanh(self.b(jnp.tanh(self.a(x)))))


def three(key=0):
    k = jax.random.split(jax.random.PRNGKey(key), 3)
    return Three(eqx.nn.Linear(3, 4, key=k[0]), eqx.nn.Linear(4, 4, key=k[1]), eqx.nn.Linear(4, 2, key=k[2]))


def loss(model, x):
    return jnp.sum(jax.vmap(model)(x) ** 2)


X = jax.random.normal(jax.random.PRNGKey(9), (5, 3))


def test_gradients_match_a_hand_written_stop_gradient_and_frozen_leaves_get_none():
    plain = three()
    model = Three(plain.a, fj.Frozen(plain.b), plain.c)

    def reference(a_and_c, x):
        a, c = a_and_c
        b = jax.tree_util.tree_map(jax.lax.stop_gradient, plain.b)
        return loss(Three(a, b, c), x)

    want_ac, want_x = jax.grad(reference, argnums=(0, 1))((plain.a, plain.c), X)
    grads = fj.grad(loss)(model, X)
    assert grads.b.weight is None and grads.b.bias is None  # None, not zeros
    for got, want in ((grads.a, want_ac[0]), (grads.c, want_ac[1])):
        assert np.allclose(got.weight, want.weight, rtol=1e-6) and np.allclose(got.bias, want.bias, rtol=1e-6)
    # the inputs of the frozen part still get their gradient: a white box
    got_x = jax.grad(lambda x: loss(model, x))(X)
    assert np.allclose(got_x, want_x, rtol=1e-6) and jnp.abs(got_x).sum() > 0


def test_value_is_the_unwrapped_modules_value_and_raw_jax_grad_sees_a_constant():
    plain = three()
    model = Three(plain.a, fj.Frozen(plain.b), plain.c)
    assert jnp.array_equal(jax.vmap(model)(X), jax.vmap(plain)(X))
    raw = jax.grad(loss)(model, X)  # plain jax.grad: the use is a constant, so zeros at its arrays
    assert not jnp.any(raw.b.module.weight) and jnp.any(raw.a.weight)


def test_attribute_access_and_methods_pass_through_the_wrapper():
    plain = three()
    wrapper = fj.Frozen(plain.b)
    assert wrapper.weight is plain.b.weight and wrapper.in_features == 4 and wrapper.module is plain.b
    frozen_model = fj.freeze(plain, "b")
    assert frozen_model.b.weight is plain.b.weight  # the same array object: nothing copied
    moved = eqx.tree_at(lambda m: m.b.weight, frozen_model, jnp.zeros((4, 4)))
    assert not jnp.any(moved.b.weight) and fj.is_frozen(moved, "b")
    assert "Frozen(" in repr(frozen_model)


class Norm(eqx.Module):
    norm: eqx.Module
    drop: eqx.Module

    def __call__(self, x, state, *, key):
        x, state = self.norm(x, state)
        return self.drop(x, key=key), state


def stateful(mode=None, frozen=True):
    def build():
        norm, drop = eqx.nn.BatchNorm(3, "batch", mode="batch"), eqx.nn.Dropout(0.9)
        if frozen:
            kwargs = {} if mode is None else {"mode": mode}
            norm, drop = fj.Frozen(norm, **kwargs), fj.Frozen(drop, **kwargs)
        return Norm(norm, drop)

    return eqx.nn.make_with_state(build)()


def run(model, state, x):
    key = jax.random.PRNGKey(0)
    return jax.vmap(lambda x, s: model(x, s, key=key), axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
        x, state
    )


def test_frozen_batchnorm_keeps_its_state_and_dropout_is_off_even_in_training_mode():
    model, state = stateful()
    training = eqx.nn.inference_mode(model, False)  # the model around asks for training behaviour
    x = 3.0 + jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    out, after = run(training, state, x)
    assert leaves_equal(after, state)  # running statistics untouched
    # inference BatchNorm with fresh statistics (mean 0, var 1): x / sqrt(1 + eps); no dropout
    assert np.allclose(out, x / jnp.sqrt(1 + 1e-5), rtol=1e-5)
    unfrozen, unfrozen_state = stateful(frozen=False)
    _, moved = run(eqx.nn.inference_mode(unfrozen, False), unfrozen_state, x)
    assert not leaves_equal(moved, unfrozen_state)  # the control: a training BatchNorm moves


def test_inference_keyword_cannot_switch_a_frozen_part_to_training():
    model, state = stateful()
    out, after = jax.vmap(
        lambda x, s: model.norm(x, s, inference=False), axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(jnp.ones((4, 3)) * 2, state)
    assert leaves_equal(after, state)


def test_mode_inherit_follows_the_flags_around_it():
    model, state = stateful(mode="inherit")
    x = 3.0 + jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    out, after = run(eqx.nn.inference_mode(model, False), state, x)
    assert not leaves_equal(after, state) and jnp.sum(out == 0) > 0  # statistics move, dropout drops
    out, after = run(eqx.nn.inference_mode(model, True), state, x)
    assert leaves_equal(after, state)


def test_bad_arguments_name_the_argument_and_the_fix():
    with pytest.raises(fj.FrozenError, match=r"fj.Frozen: mode= must be 'eval' or 'inherit'; received 'train'"):
        fj.Frozen(three().b, mode="train")
    with pytest.raises(TypeError, match="expected an eqx.Module to wrap, received ArrayImpl"):
        fj.Frozen(jnp.ones(3))
    assert issubclass(fj.SelectorError, fj.FrozenError) and issubclass(fj.FrozenError, ValueError)
