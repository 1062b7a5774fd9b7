"""frozen.jax against the hand-written ideal and optax-side freezing: 8 x Linear(1024) + ReLU, AdamW.

Standalone (imports nothing else from ``benchmarks``). Two scenarios, a frozen prefix
(blocks 0-5) and a frozen middle (blocks 2-5); in each, every variant runs the same
jitted training step (value and gradient, AdamW update, apply) on the same batch:

* ``ideal``: hand-written ``eqx.partition`` + the gradient of the trainable part only, AdamW
  on that part (what a careful JAX user writes);
* ``ideal (A/A)``: a second, independent build of the ideal: its ratio to the ideal is
  the noise floor of the measurement;
* ``optax.multi_transform``: optimizer-side freezing, gradients of everything, frozen ones
  sent to ``optax.set_to_zero()``;
* ``optax.freeze``: ``optax.chain(adamw, optax.freeze(mask))`` (state for every array);
* ``stop_gradient``: the frozen blocks' arrays under ``jax.lax.stop_gradient``, gradients of
  the whole model, frozen ones set to zero by ``multi_transform``;
* ``frozen.jax``: ``fj.freeze`` + ``fj.value_and_grad`` + ``fj.optim``.

Reported per variant: ``time_ratio`` (the median over rounds of the step time divided by
the ideal's step time in the same round; a round's step time is the fastest of a few
steps; variants run interleaved, in a rotating order),
``step_ms`` (median), ``dots`` (matrix products in the compiled step's HLO, after XLA
removed what the step does not use), ``grad_dots`` (those a jitted function returning the
gradients computes, in its lowered HLO),
``state_bytes`` (optimizer state), ``grad_bytes`` (the gradients a jitted gradient
function returns, from ``jax.eval_shape``) and ``same_hlo_as_ideal`` (the compiled step
has the ideal's instructions, counted by opcode).

Run: ``python benchmarks/jax_mlp.py [--size tiny|quick|full]`` (default ``full``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import frozen.jax as fj

__all__ = ["SIZES", "measure", "table"]


@dataclass(frozen=True)
class Size:
    width: int
    batch: int
    rounds: int
    steps: int  # timed steps per variant per round


SIZES = {
    "tiny": Size(width=64, batch=16, rounds=3, steps=2),
    "quick": Size(width=1024, batch=256, rounds=7, steps=2),
    "full": Size(width=1024, batch=256, rounds=25, steps=3),
}
SCENARIOS = {"frozen prefix (blocks 0-5)": range(0, 6), "frozen middle (blocks 2-5)": range(2, 6)}
DEPTH = 8
LR, WEIGHT_DECAY = 1e-3, 1e-2


class MLP(eqx.Module):
    blocks: tuple[eqx.nn.Linear, ...]

    def __init__(self, width: int, *, key: jax.Array) -> None:
        self.blocks = tuple(eqx.nn.Linear(width, width, key=k) for k in jax.random.split(key, DEPTH))

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = jax.nn.relu(block(x))
        return x


def loss(model: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@dataclass
class Variant:
    step: Callable[..., Any]  # (carry, x, y) -> (carry, loss)
    carry: Any
    grads: Callable[..., Any]  # (carry, x, y) -> the gradients the step computes
    state: Callable[[Any], Any]  # carry -> optimizer state


def _spec(model: MLP, frozen: set[int]) -> Any:
    """The filter spec of the trainable part: False at the frozen blocks' arrays."""
    trains = tuple(jax.tree_util.tree_map(lambda _, k=k: k not in frozen, b) for k, b in enumerate(model.blocks))
    return eqx.tree_at(lambda s: s.blocks, jax.tree_util.tree_map(lambda _: True, model), trains)


def _ideal(model: MLP, frozen: set[int]) -> Variant:
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    part, rest = eqx.partition(model, _spec(model, frozen))

    def grads(carry: Any, x: jax.Array, y: jax.Array) -> Any:
        part, rest, _ = carry
        return jax.value_and_grad(lambda p: loss(eqx.combine(p, rest), x, y))(part)

    def step(carry: Any, x: jax.Array, y: jax.Array) -> Any:
        part, rest, state = carry
        value, g = grads(carry, x, y)
        updates, state = tx.update(g, state, part)
        return (eqx.apply_updates(part, updates), rest, state), value

    return Variant(step, (part, rest, tx.init(part)), lambda c, x, y: grads(c, x, y)[1], lambda c: c[2])


def _optax_side(model: MLP, frozen: set[int], *, how: str) -> Variant:
    spec = _spec(model, frozen)
    if how == "freeze":
        # (masks and labels go in as functions: an eqx.Module tree is callable, optax would call it)
        mask = jax.tree_util.tree_map(lambda t: not t, spec)
        tx = optax.chain(optax.adamw(LR, weight_decay=WEIGHT_DECAY), optax.freeze(lambda _: mask))
    else:
        labels = jax.tree_util.tree_map(lambda t: "train" if t else "freeze", spec)
        adamw = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
        tx = optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, lambda _: labels)

    def forward(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
        if how == "stop_gradient":
            blocks = tuple(jax.lax.stop_gradient(b) if k in frozen else b for k, b in enumerate(model.blocks))
            model = eqx.tree_at(lambda m: m.blocks, model, blocks)
        return loss(model, x, y)

    def step(carry: Any, x: jax.Array, y: jax.Array) -> Any:
        model, state = carry
        value, g = jax.value_and_grad(forward)(model, x, y)
        updates, state = tx.update(g, state, model)
        return (eqx.apply_updates(model, updates), state), value

    return Variant(step, (model, tx.init(model)), lambda c, x, y: jax.grad(forward)(c[0], x, y), lambda c: c[1])


def _frozen_jax(model: MLP, frozen: set[int]) -> Variant:
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    model = fj.freeze(model, *[f"blocks.{k}" for k in sorted(frozen)])

    def step(carry: Any, x: jax.Array, y: jax.Array) -> Any:
        model, state = carry
        value, grads = fj.value_and_grad(loss)(model, x, y)
        updates, state = fj.optim.update(grads, state, model)
        return (eqx.apply_updates(model, updates), state), value

    return Variant(step, (model, fj.optim.init(tx, model)), lambda c, x, y: fj.grad(loss)(c[0], x, y), lambda c: c[1])


BUILDERS: dict[str, Callable[[MLP, set[int]], Variant]] = {
    "ideal": _ideal,
    "ideal (A/A)": _ideal,
    "optax.multi_transform": lambda m, f: _optax_side(m, f, how="multi_transform"),
    "optax.freeze": lambda m, f: _optax_side(m, f, how="freeze"),
    "stop_gradient": lambda m, f: _optax_side(m, f, how="stop_gradient"),
    "frozen.jax": _frozen_jax,
}


def _nbytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype"))


def _scenario(name: str, frozen: set[int], size: Size) -> dict[str, Any]:
    kx, ky, km = jax.random.split(jax.random.PRNGKey(0), 3)
    x, y = jax.random.normal(kx, (size.batch, size.width)), jax.random.normal(ky, (size.batch, size.width))
    runs: dict[str, Any] = {}
    facts: dict[str, dict[str, Any]] = {}
    shapes: dict[str, Counter[str]] = {}  # compiled instructions by opcode
    for label, build in BUILDERS.items():
        variant = build(MLP(size.width, key=km), frozen)  # each variant owns its arrays (donated below)
        compiled = jax.jit(variant.step, donate_argnums=0).lower(variant.carry, x, y).compile()
        text = compiled.as_text()
        assert text is not None, f"{label}: XLA gave no text for the compiled step"
        shapes[label] = Counter(re.findall(r"= .*?([a-z][a-z0-9_-]*)\(", text))
        facts[label] = {
            "dots": len(re.findall(r"\bdot\(", text)),
            "grad_dots": jax.jit(variant.grads).lower(variant.carry, x, y).as_text().count("dot_general"),
            "state_bytes": _nbytes(variant.state(variant.carry)),
            "grad_bytes": _nbytes(jax.eval_shape(variant.grads, variant.carry, x, y)),
        }
        carry, value = compiled(variant.carry, x, y)  # warm-up
        value.block_until_ready()
        runs[label] = [compiled, carry]
    times: dict[str, list[float]] = {label: [] for label in runs}
    labels = list(runs)
    for r in range(size.rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:  # rotate who runs first
            compiled, carry = runs[label]
            fastest = float("inf")
            for _ in range(size.steps):  # the fastest of a few steps: other processes only ever add time
                start = time.perf_counter()
                carry, value = compiled(carry, x, y)
                value.block_until_ready()
                fastest = min(fastest, time.perf_counter() - start)
            times[label].append(fastest)
            runs[label][1] = carry
    variants = {}
    for label in labels:
        ratios = [t / base for t, base in zip(times[label], times["ideal"])]
        variants[label] = {
            "time_ratio": round(statistics.median(ratios), 4),
            "step_ms": round(1000 * statistics.median(times[label]), 2),
            **facts[label],
            "same_hlo_as_ideal": shapes[label] == shapes["ideal"],
        }
    return {"name": name, "variants": variants}


def measure(size: str = "full") -> dict[str, Any]:
    """Run the benchmark; ``size`` is ``"tiny"`` (seconds, width 64), ``"quick"`` or ``"full"``.

    Returns:
        ``{"size", "config", "scenarios": [{"name", "variants": {label: {"time_ratio",
        "step_ms", "dots", "grad_dots", "state_bytes", "grad_bytes", "same_hlo_as_ideal"}}}]}``
        (plain data).
    """
    if size not in SIZES:
        raise ValueError(f"measure: size must be one of {sorted(SIZES)}; received {size!r}.")
    config = SIZES[size]
    scenarios = [_scenario(name, set(blocks), config) for name, blocks in SCENARIOS.items()]
    return {
        "size": size,
        "config": {
            **config.__dict__,
            "depth": DEPTH,
            "optimizer": f"adamw(lr={LR}, weight_decay={WEIGHT_DECAY})",
            "backend": jax.default_backend(),
            "jax": jax.__version__,
        },
        "scenarios": scenarios,
    }


def table(result: dict[str, Any]) -> str:
    """The result as markdown: one table per scenario."""
    config = result["config"]
    lines = [
        f"8 x Linear({config['width']}) + ReLU, batch {config['batch']}, {config['optimizer']}, jitted on "
        f"{config['backend']} (jax {config['jax']}); {config['rounds']} rounds x {config['steps']} steps, "
        "time ratio = median over rounds of (fastest step / ideal's fastest step in the same round).",
    ]
    for scenario in result["scenarios"]:
        lines += [
            "",
            f"**{scenario['name']}**",
            "",
            "| variant | time ratio | step (ms) | HLO dots: step | HLO dots: gradients | optimizer state (bytes) "
            "| gradients (bytes) | compiled step = ideal's |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
        ]
        for label, v in scenario["variants"].items():
            lines.append(
                f"| {label} | {v['time_ratio']:.3f} | {v['step_ms']:.1f} | {v['dots']} | {v['grad_dots']} | "
                f"{v['state_bytes']:,} | {v['grad_bytes']:,} | {'yes' if v['same_hlo_as_ideal'] else 'no'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    print(table(measure(parser.parse_args().size)))
