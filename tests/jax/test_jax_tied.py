"""Tied arrays (eqx.nn.Shared): freezing one use keeps the other's gradient; tied= in fj.freeze."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_nets import TiedLM

import frozen.jax as fj

TOKENS = jnp.array([0, 3, 5, 1])
MODEL = TiedLM(key=jax.random.PRNGKey(0))


def loss(model, tokens=TOKENS):
    return jnp.sum(jnp.sin(model(tokens)))


def reference(stop_embedding_use=False, stop_output_use=False):
    """d loss / d (tied matrix), written by hand with stop_gradient at the chosen uses."""
    embedding, output = MODEL.shared()

    def f(matrix):
        as_embedding = jax.lax.stop_gradient(matrix) if stop_embedding_use else matrix
        as_output = jax.lax.stop_gradient(matrix) if stop_output_use else matrix
        hidden = jnp.tanh(as_embedding[TOKENS])
        return jnp.sum(jnp.sin(hidden @ as_output.T))

    return jax.grad(f)(embedding.weight)


def tied_grad(model):
    return fj.grad(loss)(model).shared.pytree[0].weight


def test_a_frozen_use_built_by_hand_leaves_the_other_uses_gradient_intact():
    model = TiedLM(key=jax.random.PRNGKey(0), frozen_output=True)
    got = tied_grad(model)
    assert np.allclose(got, reference(stop_output_use=True), rtol=1e-5)
    assert not np.allclose(got, reference(), rtol=1e-3)  # the control: the full gradient differs


@pytest.mark.parametrize("selected", ["shared.pytree.1", "shared.pytree.0"], ids=["output-use", "embedding-use"])
def test_tied_train_keeps_the_unselected_use_training(selected):
    model = fj.freeze(MODEL, selected, tied="train")
    want = reference(stop_output_use=selected.endswith("1"), stop_embedding_use=selected.endswith("0"))
    assert np.allclose(tied_grad(model), want, rtol=1e-5)
    assert "trains" in str(fj.report(model))


@pytest.mark.parametrize("selected", ["shared.pytree.1", "shared.pytree.0"], ids=["output-use", "embedding-use"])
def test_tied_freeze_default_freezes_the_array_at_every_use(selected):
    model = fj.freeze(MODEL, selected)
    assert tied_grad(model) is None and fj.is_frozen(model, "shared.pytree.0.weight")
    assert fj.report(model).to_dict()["ties"] == [
        {"array": "shared.pytree.0.weight", "use": "shared.pytree.1.weight", "status": "frozen at every use"}
    ]
    # still a white box: the tokens' path to the loss is intact and the value is unchanged
    assert np.allclose(loss(model), loss(MODEL))


def test_tied_error_raises_naming_both_paths_and_a_selection_with_every_use_is_fine():
    with pytest.raises(fj.FrozenError, match=r"'shared.pytree.0.weight' is also used at 'shared.pytree.1.weight'"):
        fj.freeze(MODEL, "shared.pytree.1", tied="error")
    whole = fj.freeze(MODEL, "shared", tied="error")
    assert tied_grad(whole) is None
