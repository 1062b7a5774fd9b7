"""Selection is linear in modules + parameters, proved by counting work, never by timing.

The counts: predicate calls, isinstance checks, automaton steps, and Python line events
of a whole ``select`` call at two model sizes. A brute-force reference (the definition
in docs/selectors.md, quadratic and exponential as it may be) checks the fast
algorithm's answers on random trees and patterns.
"""

import re
import sys

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import frozen
from frozen._core.tree import iter_module_uses, iter_param_uses
from frozen._select.patterns import Pattern
from frozen._select.select import params


def synthetic(blocks: int, depth: int) -> nn.Module:
    """``blocks`` chains, each ``depth`` levels of Sequential(Linear, LayerNorm, next level)."""

    def chain(level: int) -> nn.Module:
        rest = [chain(level + 1)] if level < depth else []
        return nn.Sequential(nn.Linear(1, 1), nn.LayerNorm(1), *rest)

    model = nn.Module()
    model.blocks = nn.ModuleList(chain(1) for _ in range(blocks))
    model.head = nn.Linear(1, 1)
    return model


def sizes(model: nn.Module) -> tuple[int, int]:
    return len(list(iter_module_uses(model))), len(list(iter_param_uses(model)))


def test_predicates_are_called_once_per_use():
    model = synthetic(blocks=40, depth=15)
    modules, parameters = sizes(model)
    calls = {"target": 0, "exclude": 0, "params": 0}

    def leaves(path, module):
        calls["target"] += 1
        return not module._modules

    def norms(path, module):
        calls["exclude"] += 1
        return isinstance(module, nn.LayerNorm)

    def one_dimensional(path, param):
        calls["params"] += 1
        return param.ndim == 1

    selected = frozen.select(model, leaves, params(one_dimensional), exclude=norms)
    assert calls == {"target": modules, "exclude": modules, "params": parameters}
    # Leaf Linears as modules (their biases covered); LayerNorms and their parameters excluded.
    assert selected == [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]


def test_type_checks_are_constant_per_use():
    checks = 0

    class Counting(type):
        def __instancecheck__(cls, instance):
            nonlocal checks
            checks += 1
            return isinstance(instance, nn.Linear)

    class AnyLinear(metaclass=Counting):
        pass

    model = synthetic(blocks=40, depth=15)
    frozen.select(model, AnyLinear)
    assert checks <= 2 * sizes(model)[0]  # the module and its wrapper slot, once each


@pytest.mark.parametrize("stars", [1, 3, 6])
def test_pattern_matching_takes_one_step_per_module_and_parameter(monkeypatch, stars):
    # A 60-deep chain: recursion over "**" would try every split of every path.
    model = synthetic(blocks=1, depth=60)
    modules, parameters = sizes(model)
    steps = 0
    step = Pattern.step

    def counting(self, mask, name, span=1 << 62):
        nonlocal steps
        steps += 1
        return step(self, mask, name, span)

    monkeypatch.setattr(Pattern, "step", counting)
    pattern = ".".join(["**"] * stars + ["0", "weight"])
    selected = frozen.select(model, pattern)
    assert steps == (modules - 1) + parameters  # one per non-root module use, one per parameter use
    assert selected == [n for n, _ in model.named_parameters() if n.endswith("0.weight")]


def line_events(work) -> int:
    """Python lines executed by ``work()`` (every frame): a deterministic measure of work."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        count += 1
        return tracer

    sys.settrace(tracer)
    try:
        work()
    finally:
        sys.settrace(None)
    return count


SELECTORS = {
    "type": (nn.Linear,),
    "leaves predicate": (lambda path, module: not module._modules,),
    "one segment": ("blocks.*",),
    "range": ("blocks.2-9",),
    "from the end": ("blocks.-5:",),
    "four double stars": ("**.**.**.**.1",),
    "parameters": ("**.bias",),
    "exclude": ("", "blocks.*.2.2", "**.weight"),
}


@pytest.mark.parametrize("kind", list(SELECTORS))
def test_work_grows_linearly_with_the_model(kind):
    targets = SELECTORS[kind]
    exclude = targets[1:] if kind == "exclude" else ()
    targets = targets[:1] if kind == "exclude" else targets
    small, large = synthetic(blocks=12, depth=8), synthetic(blocks=48, depth=8)
    assert sizes(large)[0] > 3.9 * sizes(small)[0]
    work = [line_events(lambda m=m: frozen.select(m, *targets, exclude=exclude)) for m in (small, large)]
    # 4x the modules: about 4x the work (the quadratic subtree expansion made it 16x).
    assert work[1] < 4.5 * work[0], work


# ---- the fast algorithm agrees with the definition (brute force) ----

NAMES = ["0", "1", "2", "3", "a", "b", "ab"]
SEGMENTS = ["*", "**", "0", "1", "a", "a?", "*b", "0-1", "1:", ":-1", "-1", "-2:", "1:3", "weight"]


def reference_match(segments: list[str], names: list[str], spans: list[int]) -> bool:
    """Recursive definition of docs/selectors.md; ``spans[k]`` is the span of the container of ``names[k]``."""
    if not segments:
        return not names
    head, rest = segments[0], segments[1:]
    if head == "**":
        return any(reference_match(rest, names[i:], spans[i:]) for i in range(len(names) + 1))
    if not names:
        return False
    name, span, k = names[0], spans[0], int(names[0]) if names[0].isdigit() else None
    if re.fullmatch(r"\d+-\d+", head):
        low, high = map(int, head.split("-"))
        ok = k is not None and low <= k <= high
    elif re.fullmatch(r"-\d+", head):
        ok = k is not None and k == span + int(head)
    elif ":" in head:
        start, stop = (int(x) if x else None for x in head.split(":"))
        ok = k is not None and k in range(span)[start:stop]
    else:
        ok = re.fullmatch(head.replace("?", ".").replace("*", ".*"), name) is not None
    return ok and reference_match(rest, names[1:], spans[1:])


def reference_select(model: nn.Module, target: str, exclude: str | None) -> tuple[list[str], bool]:
    """The selected paths, and whether every pattern matched something (else select raises)."""
    entries = []  # (path, is_module)
    for path, module in model.named_modules(remove_duplicate=False):
        entries.append((path, True))
        entries += [(f"{path}.{n}" if path else n, False) for n in module._parameters]
    children: dict[str, list[str]] = {}
    for path, _ in entries[1:]:
        parent, _, name = path.rpartition(".")
        children.setdefault(parent, []).append(name)
    span = {p: max([int(n) + 1 for n in c if n.isdigit()], default=0) for p, c in children.items()}

    def hits(pattern: str) -> set[str]:
        segments = pattern.split(".") if pattern else []
        found = set()
        for path, _ in entries:
            names = path.split(".") if path else []
            spans = [span.get(".".join(names[:k]), 0) for k in range(len(names))]
            if reference_match(segments, names, spans):
                found.add(path)
        return found

    def below(roots: set[str]) -> set[str]:
        modules = {r for r in roots if (r, True) in entries}
        return {p for p, _ in entries if any(p == r or r == "" or p.startswith(r + ".") for r in modules)}

    chosen, removed_hits = hits(target), hits(exclude) if exclude else set()
    removed = below(removed_hits) | removed_hits
    kept_modules = {p for p, is_module in entries if is_module and p in below(chosen) and p not in removed}
    demoted = {p.rpartition(".")[0] for p in removed_hits if (p, False) in entries} & kept_modules
    kept_modules -= demoted
    out = []
    for path, is_module in entries:
        owner = path.rpartition(".")[0]
        if is_module and path in kept_modules:
            out.append(path)
        elif not is_module and path not in removed and owner not in kept_modules:
            if owner in demoted or path in chosen:
                out.append(path)
    return out, bool(chosen) and (exclude is None or bool(removed_hits))


@st.composite
def trees(draw, depth=0) -> nn.Module:
    module = nn.Module()
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4 if depth < 3 else 0)):
        if draw(st.booleans()) and depth < 3:
            module.add_module(name, draw(trees(depth=depth + 1)))
        else:
            module.register_parameter(name, nn.Parameter(torch.zeros(1)))
    if draw(st.booleans()):
        module.weight = nn.Parameter(torch.zeros(1))
    return module


@settings(max_examples=150, deadline=None)
@given(
    model=trees(),
    target=st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=4).map(".".join),
    exclude=st.none()
    | st.sampled_from(["**.weight", "*.weight", "**.-1"])  # parameters of selected modules, often
    | st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(".".join),
)
def test_agrees_with_the_brute_force_definition(model, target, exclude):
    expected, all_match = reference_select(model, target, exclude)
    if not all_match:
        with pytest.raises(frozen.SelectorError, match="matches no module or parameter path"):
            frozen.select(model, target, exclude=() if exclude is None else exclude)
        return
    assert frozen.select(model, target, exclude=() if exclude is None else exclude) == expected
