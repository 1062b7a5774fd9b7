"""Hypothesis strategies for the property tests: random module trees and random operation sequences.

A tree is drawn as a *spec* (nested tuples), and :func:`build` turns a spec into a fresh model with
deterministic weights, so the same tree can be built twice (a twin that is never frozen, or the
"fresh identical copy" that ``load_state`` restores into). Every node maps ``(batch, d)`` to
``(batch, d)``, so every tree has a runnable forward.

Node forms (``d`` is the tree's one width, at most 6):

* ``("linear",)``, ``("bn",)``, ``("ln",)``, ``("dropout", p)``: leaves;
* ``("seq", children)``: ``nn.Sequential``;
* ``("list", children)``: :class:`Chain`, a custom module over an ``nn.ModuleList``;
* ``("dict", children)``: :class:`Branches`, a custom module over an ``nn.ModuleDict`` (sums its branches);
* ``("residual", child)``: :class:`Residual`, a custom module with its own forward (``x + body(x)``);
* ``("share", k)``: the same object as the ``k``-th module built so far (a shared submodule);
* ``("tie", k)``: a new ``Linear`` whose weight *is* the ``k``-th ``Linear``'s weight (tied parameters);
* ``("frozen", mode, child)``: ``frozen.Frozen(child, mode=mode)``.

Operations are drawn as abstract descriptions (:func:`operations`) and resolved against the model
they are applied to (:func:`resolve_selector`), so a sequence stays meaningful after the model
changes shape (wrapping) or is replaced by a fresh copy (``load_state``).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

import frozen

__all__ = ["Chain", "Branches", "Residual", "build", "trees", "operations", "resolve_selector", "module_paths"]

MAX_MODULES = 20
MAX_DEPTH = 4
BATCH = 4


class Chain(nn.Module):
    """Apply the modules of a ``ModuleList`` in order (a custom container with its own forward)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class Branches(nn.Module):
    """Sum the outputs of the branches of a ``ModuleDict``."""

    def __init__(self, branches: dict[str, nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleDict(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum((branch(x) for branch in self.branches.values()), torch.zeros_like(x))


class Residual(nn.Module):
    """``x + body(x)``: a custom module with one child and its own forward."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# -- trees -------------------------------------------------------------------------------------------


@st.composite
def _node(draw: Any, depth: int, budget: list[int]) -> tuple:
    """Draw one node; ``budget[0]`` counts the modules still allowed (each container costs two)."""
    containers = ["seq", "list", "dict", "residual", "frozen"] if depth < MAX_DEPTH - 1 and budget[0] >= 4 else []
    kinds = ["linear", "bn", "ln", "dropout", "share", "tie"] + containers * 2
    kind = draw(st.sampled_from(kinds))
    if kind in ("linear", "bn", "ln"):
        budget[0] -= 1
        return (kind,)
    if kind == "dropout":
        budget[0] -= 1
        return ("dropout", draw(st.sampled_from([0.1, 0.5])))
    if kind in ("share", "tie"):
        budget[0] -= 1
        return (kind, draw(st.integers(0, 30)))
    budget[0] -= 2
    if kind == "residual":
        return ("residual", draw(_node(depth + 1, budget)))
    if kind == "frozen":
        return ("frozen", draw(st.sampled_from(["eval", "inherit"])), draw(_node(depth + 1, budget)))
    children = [draw(_node(depth + 1, budget))]
    for _ in range(draw(st.integers(0, 3))):
        if budget[0] <= 0:
            break
        children.append(draw(_node(depth + 1, budget)))
    return (kind, tuple(children))


@st.composite
def trees(draw: Any) -> tuple[int, tuple]:
    """Draw ``(d, root)``: a width ``d`` in 2..6 and an ``nn.Sequential`` root spec of 1 to 4 children."""
    d = draw(st.integers(2, 6))
    budget = [MAX_MODULES - 1]
    children = [draw(_node(1, budget))]
    for _ in range(draw(st.integers(0, 3))):
        if budget[0] <= 0:
            break
        children.append(draw(_node(1, budget)))
    return d, ("seq", tuple(children))


def build(spec: tuple[int, tuple], seed: int = 0) -> nn.Module:
    """Build the model a spec describes, with weights drawn from ``seed`` (same spec and seed, same model)."""
    d, root = spec
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        built: list[nn.Module] = []
        return _build(root, d, built)


def _build(node: tuple, d: int, built: list[nn.Module]) -> nn.Module:
    kind = node[0]
    if kind in ("share", "tie"):
        return _build_reference(node, d, built)
    if kind == "linear":
        module: nn.Module = nn.Linear(d, d)
    elif kind == "bn":
        module = nn.BatchNorm1d(d)
        with torch.no_grad():  # non-trivial statistics, so a changed buffer shows in the output
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    elif kind == "ln":
        module = nn.LayerNorm(d)
    elif kind == "dropout":
        module = nn.Dropout(node[1])
    elif kind == "residual":
        module = Residual(_build(node[1], d, built))
    elif kind == "frozen":
        # The wrapper itself is not offered for sharing: its inner module is.
        return frozen.Frozen(_build(node[2], d, built), mode=node[1])
    else:
        children = [_build(child, d, built) for child in node[1]]
        if kind == "seq":
            module = nn.Sequential(*children)
        elif kind == "list":
            module = Chain(children)
        else:
            module = Branches({"abc"[i % 3] + str(i // 3 or ""): c for i, c in enumerate(children)})
    built.append(module)
    return module


def _build_reference(node: tuple, d: int, built: list[nn.Module]) -> nn.Module:
    kind, k = node
    if kind == "share" and built:
        return built[k % len(built)]  # a finished module: never an ancestor, so no cycle
    linears = [m for m in built if type(m) is nn.Linear]
    module = nn.Linear(d, d)
    if kind == "tie" and linears:
        module.weight = linears[k % len(linears)].weight  # the same Parameter object
    built.append(module)
    return module


def module_paths(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every use ``(path, module)`` in state_dict style (wrapper levels skipped), pre-order, root first."""
    out: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, path: str) -> None:
        while isinstance(module, frozen.Frozen):
            module = module.module
        out.append((path, module))
        for name, child in module._modules.items():
            if child is not None:
                visit(child, f"{path}.{name}" if path else name)

    visit(model, "")
    return out


# -- operations --------------------------------------------------------------------------------------

_TYPES = (nn.Linear, nn.BatchNorm1d, nn.LayerNorm, nn.Dropout, Residual, Chain, Branches, nn.Sequential)

selectors = st.one_of(
    st.tuples(st.just("path"), st.integers(0, 40)),
    st.tuples(st.just("star"), st.integers(0, 40)),
    st.tuples(st.just("dstar_prefix"), st.integers(0, 40)),
    st.tuples(st.just("dstar_suffix"), st.integers(0, 40)),
    st.tuples(st.just("range"), st.integers(0, 40), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("type"), st.sampled_from(_TYPES)),
)
corrupt_load = st.tuples(
    st.just("reload_corrupt"), st.sampled_from(["int64", "bool", "complex64", "float8_e4m3fn", None, "path"])
)
bad_selectors = st.sampled_from([("bogus", "no.such.part"), ("bogus", "a..b"), ("bogus", "3-1"), ("bogus", 5)])


def operations(corrupt_loads: bool = False) -> st.SearchStrategy[tuple]:
    """One operation, as an abstract description that :func:`resolve_selector` turns into arguments.

    Invalid arguments (unknown modes, policies, dtypes, selectors) are drawn now and then; with
    ``corrupt_loads``, also ``load_state`` of a state whose last entry was edited (must be refused).
    """
    # Invalid arguments are drawn about one time in ten each, so most calls get through.
    some = st.one_of(*[selectors] * 9, bad_selectors)
    freeze = st.tuples(
        st.just("freeze"),
        st.lists(some, max_size=2),
        st.lists(some, max_size=1),
        st.sampled_from(["eval"] * 6 + ["inherit"] * 3 + ["train"]),  # "train" is not a mode: must raise
        st.sampled_from(["freeze"] * 6 + ["train"] * 2 + ["error", "maybe"]),  # "maybe": must raise
        st.sampled_from([None] * 7 + [torch.bfloat16] * 2 + [torch.int64]),  # int64: must raise
    )
    thaw = st.tuples(st.just("thaw"), st.lists(some, max_size=2))
    return st.one_of(
        freeze,
        freeze,
        thaw,
        st.tuples(st.just("settle")),
        st.tuples(st.just("wrap"), st.integers(0, 40), st.sampled_from(["eval", "inherit"])),
        st.tuples(st.just("reload")),
        st.tuples(st.just("train"), st.booleans()),
        st.tuples(st.just("hand_freeze"), st.integers(0, 40)),
        *([corrupt_load] if corrupt_loads else []),
    )


def resolve_selector(model: nn.Module, desc: tuple) -> Any:
    """Turn an abstract selector into a real one for ``model`` (paths are taken from its current tree)."""
    kind = desc[0]
    if kind == "bogus":
        return desc[1]
    if kind == "type":
        return desc[1]
    paths = [p for p, _ in module_paths(model) if p]
    path = paths[desc[1] % len(paths)]
    parent, _, last = path.rpartition(".")
    if kind == "path":
        return path
    if kind == "star":
        return f"{parent}.*" if parent else "*"
    if kind == "dstar_prefix":
        return f"{path}.**"
    if kind == "dstar_suffix":
        return f"**.{last}"
    lo, hi = sorted(desc[2:4])
    return f"{parent}.{lo}-{hi}" if parent else f"{lo}-{hi}"
