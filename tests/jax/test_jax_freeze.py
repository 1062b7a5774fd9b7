"""fj.freeze / fj.thaw / fj.is_frozen / fj.trainable: new models, transparent paths, one layout per state."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_nets import Net, leaves_equal

import frozen.jax as fj

NET = eqx.nn.inference_mode(Net(key=jax.random.PRNGKey(0)))


def structure(model):
    return jax.tree_util.tree_structure(model)


def trained(model):
    mask = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: True, fj.trainable(model)))
    return len(mask)


def test_freeze_returns_a_new_model_and_leaves_the_input_alone():
    frozen_net = fj.freeze(NET, "encoder")
    assert not fj.is_frozen(NET, "encoder") and fj.is_frozen(frozen_net, "encoder")
    assert leaves_equal(frozen_net, NET)  # same arrays, same order: only wrapper nodes were added
    assert frozen_net.encoder.layers[0].linear.weight is NET.encoder.layers[0].linear.weight
    assert fj.select(frozen_net, "**") == fj.select(NET, "**")  # paths ignore the wrappers


def test_trainable_has_none_at_frozen_and_non_array_leaves():
    frozen_net = fj.freeze(NET, "embed", "encoder.layers.0-2")
    part = fj.trainable(frozen_net)
    assert part.embed.weight is None and part.encoder.layers[2].linear.weight is None
    assert part.encoder.layers[3].linear.weight is frozen_net.encoder.layers[3].linear.weight
    assert part.encoder.layers[3].dropout.p is None  # not an array
    assert trained(frozen_net) == 2 + 4 + 2  # layer 3 (linear, norm), final_norm, head


def test_is_frozen_for_modules_arrays_containers_and_unknown_paths():
    frozen_net = fj.freeze(NET, "encoder.layers")
    assert fj.is_frozen(frozen_net, "encoder.layers") and fj.is_frozen(frozen_net, "encoder.layers.1.norm")
    assert fj.is_frozen(frozen_net, "encoder.layers.1.norm.weight")
    assert not fj.is_frozen(frozen_net, "head.weight") and not fj.is_frozen(frozen_net)
    with pytest.raises(fj.SelectorError, match=r"path 'encoder.layer' names no module or array.*'encoder.layers'"):
        fj.is_frozen(frozen_net, "encoder.layer")


def test_thaw_undoes_freeze_exactly_and_a_freeze_state_has_one_layout():
    once = fj.freeze(NET, "encoder")
    assert structure(fj.thaw(once)) == structure(NET) and leaves_equal(fj.thaw(once), NET)
    split = fj.thaw(once, "encoder.layers.2")  # thaw a part inside a frozen part: only that part
    assert [fj.is_frozen(split, f"encoder.layers.{k}") for k in range(4)] == [True, True, False, True]
    assert structure(fj.freeze(split, "encoder.layers.2")) == structure(once)  # same state, same tree
    assert structure(fj.freeze(once, "encoder")) == structure(once)  # freezing again changes nothing
    assert structure(fj.freeze(NET, "encoder.layers.0", "encoder.layers.1")) == structure(
        fj.freeze(NET, "encoder.layers.0-1")
    )


def test_excluding_an_array_freezes_the_rest_of_its_module_and_keeps_its_behaviour():
    frozen_net = fj.freeze(NET, "head", exclude="head.bias")
    assert fj.is_frozen(frozen_net, "head.weight") and not fj.is_frozen(frozen_net, "head.bias")
    assert not fj.is_frozen(frozen_net, "head")
    grads = fj.grad(lambda m, x: jnp.sum(m(x)))(frozen_net, jnp.ones(3))
    assert grads.head.weight is None and grads.head.bias is not None
    assert frozen_net.head.weight is NET.head.weight
    bitfit = fj.freeze(NET, "**.weight")  # frozen arrays alone: every weight, the biases train
    assert all(p.endswith("bias") for p, _ in _trainable_paths(bitfit))


def _trainable_paths(model):
    flat, _ = jax.tree_util.tree_flatten_with_path(fj.trainable(model))
    return [
        (jax.tree_util.keystr(k).replace(".module", "").lstrip(".").replace("[", ".").replace("]", ""), v)
        for k, v in flat
    ]


def test_mode_eval_switches_dropout_off_and_inherit_follows():
    key = jax.random.PRNGKey(3)
    training = eqx.nn.inference_mode(NET, False)
    evaluated = eqx.nn.inference_mode(NET, True)(jnp.ones(3))
    assert np.allclose(fj.freeze(training, "encoder")(jnp.ones(3), key=key), evaluated)
    inherit = fj.freeze(training, "encoder", mode="inherit")
    assert not np.allclose(inherit(jnp.ones(3), key=key), evaluated)


def test_freezing_again_with_another_mode_raises_and_says_thaw_first():
    frozen_net = fj.freeze(NET, "encoder")
    with pytest.raises(fj.FrozenError, match=r"already frozen with mode='eval'.*fj.freeze\(fj.thaw\(model"):
        fj.freeze(frozen_net, "encoder.layers.0", mode="inherit")


def test_thaw_keeps_wrappers_built_by_hand_and_refuses_to_name_them():
    model = eqx.tree_at(lambda m: m.head, NET, fj.Frozen(NET.head))
    assert fj.is_frozen(fj.thaw(model), "head")
    assert not fj.is_frozen(fj.thaw(fj.freeze(model, "embed"), "embed"), "embed")
    with pytest.raises(fj.FrozenError, match=r"built by hand.*\.module"):
        fj.thaw(model, "head")


def test_thaw_of_what_is_not_frozen_does_nothing_and_bad_arguments_raise_first():
    assert structure(fj.thaw(NET, "head")) == structure(NET)
    with pytest.raises(fj.FrozenError, match=r"mode= must be 'eval' or 'inherit'; received 'frozen'"):
        fj.freeze(NET, "head", mode="frozen")
    with pytest.raises(fj.FrozenError, match=r"tied= must be 'freeze' or 'train' or 'error'"):
        fj.freeze(NET, "head", tied="yes")


class Loose(eqx.Module):
    arrays: list

    def __call__(self, x):
        return x * self.arrays[0] + self.arrays[1]


def test_arrays_in_lists_are_frozen_by_their_module_and_bare_ones_raise():
    model = Loose([jnp.ones(2), jnp.zeros(2)])
    frozen_model = fj.freeze(model, "arrays.0")
    assert fj.is_frozen(frozen_model, "arrays.0") and not fj.is_frozen(frozen_model, "arrays.1")
    grads = fj.grad(lambda m: jnp.sum(m(jnp.ones(2))))(frozen_model)
    assert grads.arrays[0] is None and jnp.array_equal(grads.arrays[1], jnp.ones(2))
    with pytest.raises(fj.FrozenError, match=r"array '0': it is not inside an eqx.Module"):
        fj.freeze([jnp.ones(2)], "0")


def test_a_checkpoint_of_the_plain_model_loads_into_the_frozen_one_and_back(tmp_path):
    frozen_net = fj.freeze(NET, "encoder.layers.0-1", "head.bias")
    eqx.tree_serialise_leaves(tmp_path / "plain.eqx", NET)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "plain.eqx", frozen_net)
    assert leaves_equal(loaded, NET) and fj.is_frozen(loaded, "encoder.layers.1")
    eqx.tree_serialise_leaves(tmp_path / "frozen.eqx", frozen_net)
    assert leaves_equal(eqx.tree_deserialise_leaves(tmp_path / "frozen.eqx", NET), NET)


def test_a_frozen_stateful_layer_stays_one_for_sequential():
    def build():
        layers = [eqx.nn.Linear(3, 3, key=jax.random.PRNGKey(0)), eqx.nn.BatchNorm(3, "batch", mode="batch")]
        return eqx.nn.Sequential(layers)

    model, state = eqx.nn.make_with_state(build)()
    training = eqx.nn.inference_mode(fj.freeze(model, "layers.1"), False)
    assert isinstance(training.layers[1], eqx.nn.StatefulLayer) and isinstance(training.layers[1], fj.Frozen)
    run = jax.vmap(training, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    _, after = run(jnp.ones((4, 3)) * 3, state)
    assert leaves_equal(after, state)
