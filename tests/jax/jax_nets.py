"""Small Equinox models for tests/jax (unique module name: tests/ is not a package)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class Blocks(eqx.Module):
    """``depth`` x (Linear(width, width) + ReLU): the benchmark's MLP, small."""

    blocks: tuple[eqx.nn.Linear, ...]

    def __init__(self, width: int = 8, depth: int = 8, *, key: jax.Array) -> None:
        self.blocks = tuple(eqx.nn.Linear(width, width, key=k) for k in jax.random.split(key, depth))

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = jax.nn.relu(block(x))
        return x


def mse(model: eqx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


def batch(width: int = 8, n: int = 16, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n, width)), jax.random.normal(ky, (n, width))


class Net(eqx.Module):
    """An encoder-ish model with named parts, norms and dropout, for selectors and freezing."""

    embed: eqx.nn.Linear
    encoder: Encoder
    final_norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, *, key: jax.Array, width: int = 4) -> None:
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(3, width, key=k1)
        self.encoder = Encoder(width, key=k2)
        self.final_norm = eqx.nn.LayerNorm(width)
        self.head = eqx.nn.Linear(width, 2, key=k3)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        return self.head(self.final_norm(self.encoder(self.embed(x), key=key)))


class Layer(eqx.Module):
    linear: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    dropout: eqx.nn.Dropout

    def __init__(self, width: int, *, key: jax.Array) -> None:
        self.linear = eqx.nn.Linear(width, width, key=key)
        self.norm = eqx.nn.LayerNorm(width)
        self.dropout = eqx.nn.Dropout(0.5)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        return self.dropout(self.norm(jnp.tanh(self.linear(x))), key=key)


class Encoder(eqx.Module):
    layers: list[Layer]

    def __init__(self, width: int, *, key: jax.Array) -> None:
        self.layers = [Layer(width, key=k) for k in jax.random.split(key, 4)]

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, len(self.layers)))
        for layer, k in zip(self.layers, keys):
            x = layer(x, key=k)
        return x


class TiedLM(eqx.Module):
    """An embedding whose matrix is also the output projection (``eqx.nn.Shared``)."""

    shared: eqx.nn.Shared

    def __init__(self, *, key: jax.Array, vocab: int = 6, width: int = 3, frozen_output: bool = False) -> None:
        import frozen.jax as fj

        k1, k2 = jax.random.split(key)
        embedding = eqx.nn.Embedding(vocab, width, key=k1)
        output: eqx.Module = eqx.nn.Linear(width, vocab, use_bias=False, key=k2)
        if frozen_output:
            output = fj.Frozen(output)
        self.shared = eqx.nn.Shared((embedding, output), lambda p: p[1].weight, lambda p: p[0].weight)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        embedding, output = self.shared()
        return jax.vmap(output)(jnp.tanh(jax.vmap(embedding)(tokens)))


def leaves_equal(a: object, b: object) -> bool:
    """Every array leaf of ``a`` and ``b`` bit-identical (same structure)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        (jnp.array_equal(x, y) if eqx.is_array(x) else x is y or x == y) for x, y in zip(la, lb)
    )
