"""Property-based tests (hypothesis): random module trees, random freeze/thaw/settle/wrap/load_state sequences.

Checked after every operation and at the end of each sequence:

(a) thawing everything restores ``requires_grad`` flags, training modes, dtypes and the forward output of a
    twin that saw the same ``train()``/``eval()`` calls but no freezing (exactly; a part stored in bfloat16 is
    compared with a twin whose same tensors were rounded to bfloat16);
(b) ``frozen.trainable(model)`` equals the set computed by :class:`Reference`, an independent implementation
    of the contract (docs/contract.md S1-S4, S8, S9) that only knows which calls succeeded;
(c) one AdamW (weight decay) and one SGD (momentum, weight decay) step over ``frozen.optim.param_groups``
    after a train-mode forward/backward never changes a frozen parameter or a frozen buffer by one bit;
(d) ``frozen.grad(loss, model)`` is ``None`` exactly for the parameters that do not train;
(e) a call that raises (``FrozenError`` or ``TypeError``) leaves the model bit-for-bit unchanged.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from snapshots import assert_same, snapshot
from strategies import BATCH, build, module_paths, operations, resolve_selector, trees
from torch import nn

import frozen

SETTINGS = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_RANGE = re.compile(r"(\d+)-(\d+)")


# -- an independent reference of the contract ----------------------------------------------------------


def uses(model: nn.Module) -> list[tuple[str, nn.Module, bool, bool]]:
    """``(path, module, wrapped, eval_wrapped)`` per use: under some ``Frozen`` / under an eval ``Frozen``."""
    out = []

    def visit(module: nn.Module, path: str, wrapped: bool, eval_wrapped: bool) -> None:
        while isinstance(module, frozen.Frozen):
            wrapped, eval_wrapped = True, eval_wrapped or module.mode == "eval"
            module = module.module
        out.append((path, module, wrapped, eval_wrapped))
        for name, child in module._modules.items():
            if child is not None:
                visit(child, f"{path}.{name}" if path else name, wrapped, eval_wrapped)

    visit(model, "", False, False)
    return out


def _segment_matches(pattern: str, segment: str) -> bool:
    if pattern == "*":
        return True
    if (m := _RANGE.fullmatch(pattern)) is not None:
        return segment.isdigit() and int(m[1]) <= int(segment) <= int(m[2])
    return pattern == segment


def pattern_matches(pattern: str, path: str) -> bool:
    """The selector language of docs/selectors.md, for the forms the strategies draw."""
    pat, segs = pattern.split("."), path.split(".") if path else []

    def go(i: int, j: int) -> bool:
        if i == len(pat):
            return j == len(segs)
        if pat[i] == "**":
            return any(go(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and _segment_matches(pat[i], segs[j]) and go(i + 1, j + 1)

    return go(0, 0)


def selected(model: nn.Module, targets: list, exclude: list) -> list[tuple[str, nn.Module]]:
    """Uses a target matches, with everything below them, minus what ``exclude`` matches (and below)."""

    def hits(selector: Any, path: str, module: nn.Module) -> bool:
        return isinstance(module, selector) if isinstance(selector, type) else pattern_matches(selector, path)

    def below(root: str, path: str) -> bool:
        return root == "" or path == root or path.startswith(root + ".")

    all_uses = [(p, m) for p, m, _, _ in uses(model)]
    matched = [p for p, m in all_uses if not targets or any(hits(t, p, m) for t in targets)]
    excluded = [p for p, m in all_uses if any(hits(t, p, m) for t in exclude)]
    return [(p, m) for p, m in all_uses if any(below(r, p) for r in matched) and not any(below(r, p) for r in excluded)]


class Reference:
    """What the contract says, computed from which calls succeeded: never reads the library's records."""

    def __init__(self) -> None:
        self.marked: dict[int, tuple[nn.Module, str]] = {}  # id(module) -> (module, mode), frozen in place
        self.slots: dict[tuple[int, str], tuple[nn.Module, int]] = {}  # (id(owner), name) -> (owner, holder id)
        self.hand: dict[int, nn.Parameter] = {}  # parameters the user set requires_grad=False on

    def param_uses(self, model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Parameter, bool]]:
        out = []
        for path, module, wrapped, _ in uses(model):
            for name, p in module._parameters.items():
                if p is not None:
                    frozen_use = wrapped or id(module) in self.marked or (id(module), name) in self.slots
                    out.append((path, module, name, p, frozen_use))
        return out

    def trainable(self, model: nn.Module) -> list[str]:
        """State_dict paths (first path of each parameter) of the parameters that train, model order."""
        first: dict[int, str] = {}
        reached: set[int] = set()
        for path, _, name, p, frozen_use in self.param_uses(model):
            first.setdefault(id(p), f"{path}.{name}" if path else name)
            if not frozen_use and id(p) not in self.hand:
                reached.add(id(p))
        return [path for key, path in first.items() if key in reached]

    def eval_forced(self, model: nn.Module) -> set[int]:
        """Modules every use of which runs in forced eval: in-place mode "eval" or under an eval wrapper."""
        forced: dict[int, bool] = {}
        for _, module, _, eval_wrapped in uses(model):
            mark = self.marked.get(id(module))
            here = eval_wrapped or (mark is not None and mark[1] == "eval")
            forced[id(module)] = forced.get(id(module), True) and here
        return {key for key, value in forced.items() if value}

    def freeze(self, model: nn.Module, targets: list, exclude: list, mode: str, tied: str) -> None:
        chosen = selected(model, targets, exclude)
        paths = {p for p, _ in chosen}
        new = {id(m): m for _, m in chosen if id(m) not in self.marked}
        owner_of = {id(p): m for m in new.values() for p in m._parameters.values() if p is not None}
        training = set(self.trainable_ids(model))
        if tied == "freeze":
            for path, owner, name, p, frozen_use in self.param_uses(model):
                if id(p) in owner_of and id(owner) not in new and path not in paths and not frozen_use:
                    if id(p) in training:
                        self.slots[(id(owner), name)] = (owner, id(owner_of[id(p)]))
        for m in new.values():
            self.marked[id(m)] = (m, mode)

    def thaw(self, model: nn.Module, targets: list) -> None:
        for _, m in selected(model, targets, []):
            self.marked.pop(id(m), None)
        self.slots = {k: v for k, v in self.slots.items() if v[1] in self.marked}

    def trainable_ids(self, model: nn.Module) -> list[int]:
        named = dict(frozen_free_named_parameters(model))
        return [id(named[p]) for p in self.trainable(model)]

    def moved_to(self, old: nn.Module, new: nn.Module) -> Reference:
        """The same reference for ``new``, an identical copy of ``old``: objects are matched by path."""
        old_uses = {id(m): p for p, m, _, _ in reversed(uses(old))}  # first path wins
        new_modules = {p: m for p, m, _, _ in uses(new)}
        old_params = {id(p): path for path, p in reversed(frozen_free_named_parameters(old))}
        new_params = dict(frozen_free_named_parameters(new))
        moved = Reference()
        for key, (_, mode) in self.marked.items():
            module = new_modules[old_uses[key]]
            moved.marked[id(module)] = (module, mode)
        for (owner_key, name), (_, holder) in self.slots.items():
            owner, holder_module = new_modules[old_uses[owner_key]], new_modules[old_uses[holder]]
            moved.slots[(id(owner), name)] = (owner, id(holder_module))
        for key in self.hand:
            moved.hand[id(new_params[old_params[key]])] = new_params[old_params[key]]
        return moved


def frozen_free_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Deduplicated parameters with state_dict paths (wrapper levels skipped), model order."""
    seen: set[int] = set()
    out = []
    for path, module, _, _ in uses(model):
        for name, p in module._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append((f"{path}.{name}" if path else name, p))
    return out


# -- running a sequence ---------------------------------------------------------------------------------


class Run:
    """A model, its never-frozen twin, the reference, and what the sequence did so far."""

    def __init__(self, spec: tuple) -> None:
        self.spec = spec
        # Neither is settled first: thawing everything must give back the modes from before the first call.
        self.model = build(spec)
        self.twin = build(spec)
        self.reference = Reference()
        self.wraps: list[tuple[str, str]] = []
        self.mode = True
        self.used_dtype = False

    def apply(self, op: tuple) -> None:
        """Apply ``op``; a refused call must leave the model exactly as it was (property e)."""
        before = snapshot(self.model)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", frozen.TiedParameterWarning)
                getattr(self, "_" + op[0])(*op[1:])
            event(f"{op[0]}: done")  # --hypothesis-show-statistics shows what the sequences exercised
        except (frozen.FrozenError, TypeError) as error:
            event(f"{op[0]}: refused ({type(error).__name__})")
            assert str(error), "an error must say what is wrong"
            assert_same(before, snapshot(self.model))

    def _freeze(self, targets: list, exclude: list, mode: str, tied: str, dtype: Any) -> None:
        resolved = [resolve_selector(self.model, t) for t in targets]
        excluded = [resolve_selector(self.model, t) for t in exclude]
        dtypes = {k: v.dtype for k, v in self.model.state_dict().items()}
        frozen.freeze(self.model, *resolved, exclude=excluded, mode=mode, tied=tied, dtype=dtype)
        self.reference.freeze(self.model, resolved, excluded, mode, tied)
        twin_state = self.twin.state_dict()
        for key, tensor in self.model.state_dict().items():
            if tensor.dtype != dtypes[key]:  # the part now stored in `dtype`: round the twin the same way
                self.used_dtype = True
                with torch.no_grad():
                    twin_state[key].copy_(twin_state[key].to(tensor.dtype))
        self.check_flags()

    def _thaw(self, targets: list) -> None:
        resolved = [resolve_selector(self.model, t) for t in targets]
        frozen.thaw(self.model, *resolved)
        self.reference.thaw(self.model, resolved)
        self.check_flags()

    def _settle(self) -> None:
        frozen.settle(self.model)
        frozen.settle(self.twin)
        self.check_flags()

    def _wrap(self, k: int, mode: str) -> None:
        # ModuleList / ModuleDict have no forward of their own: wrap only modules that are called.
        paths = [p for p, m in module_paths(self.model) if p and not isinstance(m, (nn.ModuleList, nn.ModuleDict))]
        path = paths[k % len(paths)]
        if wrap_at(self.model, path, mode):
            self.wraps.append((path, mode))

    def _reload(self) -> None:
        fresh = build(self.spec)
        for path, mode in self.wraps:
            wrap_at(fresh, path, mode)
        fresh.train(self.mode)
        saved = frozen.state(frozen.settle(self.model))  # load_state settles: compare settled with settled
        frozen.settle(self.twin)  # the twin sees the same settle (it may put wrapped modules in eval)
        frozen.load_state(fresh, saved)
        fresh.load_state_dict(self.model.state_dict())
        assert frozen.state(fresh) == saved
        self.reference = self.reference.moved_to(self.model, fresh)
        self.model = fresh
        self.check_flags()

    def _reload_corrupt(self, how: str | None) -> None:
        saved = frozen.state(self.model)
        if not saved["frozen"]:
            saved["frozen"].append({"path": "0", "mode": "eval", "tied": "freeze", "training": True, "tied_slots": []})
        entry = saved["frozen"][-1]
        if how is None:
            entry["mode"] = None
        elif how == "path":
            entry["path"] = "no.such.module"
        else:
            entry["dtype"] = how
        frozen.load_state(self.model, saved)
        raise AssertionError(f"load_state accepted a state edited to {how!r}")

    def _train(self, mode: bool) -> None:
        self.model.train(mode)
        self.twin.train(mode)
        self.mode = mode

    def _hand_freeze(self, k: int) -> None:
        named = frozen_free_named_parameters(self.model)
        path, p = named[k % len(named)]
        if p.requires_grad:
            p.requires_grad_(False)
            self.reference.hand[id(p)] = p
            dict(frozen_free_named_parameters(self.twin))[path].requires_grad_(False)

    # -- checks ------------------------------------------------------------------------------------------

    def check_trainable(self) -> None:
        """(b) the library's trainable set is the reference's."""
        got = [name for name, _ in frozen.named_trainable(self.model)]
        assert got == self.reference.trainable(self.model)

    def check_flags(self) -> None:
        """(b) and S8: after a call that settles, every flag says whether the parameter trains."""
        self.check_trainable()
        expected = set(self.reference.trainable(self.model))
        flags = {path: p.requires_grad for path, p in frozen_free_named_parameters(self.model)}
        assert flags == {path: path in expected for path in flags}


def wrap_at(model: nn.Module, path: str, mode: str) -> bool:
    """Replace the child at ``path`` by ``Frozen(child, mode=mode)``; False if it is already a wrapper."""
    parent_path, _, name = path.rpartition(".")
    parent = dict(module_paths(model))[parent_path]
    child = parent._modules[name]
    if isinstance(child, frozen.Frozen):
        return False
    setattr(parent, name, frozen.Frozen(child, mode=mode))
    return True


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output on ``x`` with a fixed dropout seed; buffers (BatchNorm statistics) put back after."""
    saved = [b.clone() for b in model.buffers()]
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        out = model(x)
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)
    return out


def step_keeps_frozen_exact(run: Run) -> None:
    """(c) and (d): train-mode forward/backward, frozen.grad, AdamW and SGD steps; frozen tensors stay exact."""
    model, reference = run.model, run.reference
    model.train()
    trainable = set(reference.trainable(model))
    named = frozen_free_named_parameters(model)
    forced = reference.eval_forced(model)
    frozen_buffers = [
        (f"{path}.{n}", b)
        for path, m, _, _ in uses(model)
        if id(m) in forced
        for n, b in m._buffers.items()
        if b is not None
    ]
    before = {path: p.detach().clone() for path, p in named}
    all_buffers = [(b, b.clone()) for b in model.buffers()]
    buffers_before = [(path, b.clone()) for path, b in frozen_buffers]
    x = torch.randn(BATCH, run.spec[0], requires_grad=True)
    for optimizer_class, options in (
        (torch.optim.AdamW, {"weight_decay": 0.1}),
        (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 0.1}),
    ):
        loss = model(x).square().mean()
        grads = frozen.grad(loss, model)
        assert {k for k, v in grads.items() if v is not None} == trainable
        groups = frozen.optim.param_groups(model, lr=0.1, **options)
        if any(group["params"] for group in groups):
            optimizer = optimizer_class([g for g in groups if g["params"]], lr=0.1)
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            optimizer.step()
    for path, p in named:
        if path not in trainable:
            assert p.grad is None, path
            assert torch.equal(p.detach(), before[path]), path
    for (path, b), (_, old) in zip(frozen_buffers, buffers_before):
        assert torch.equal(b, old), path
    if trainable:
        assert any(not torch.equal(p.detach(), before[path]) for path, p in named if path in trainable)
    with torch.no_grad():  # put the tensors back, so the thaw comparison starts from the twin's values
        for path, p in named:
            p.copy_(before[path])
            p.grad = None
        for b, old in all_buffers:
            b.copy_(old)
    model.train(run.mode)


# -- the properties ---------------------------------------------------------------------------------------


@SETTINGS
@given(spec=trees(), ops=st.lists(operations(), min_size=1, max_size=8))
def test_random_sequences_keep_the_contract(spec: tuple, ops: list) -> None:
    """(b)-(e) after every call of a random sequence; (a) at the end when the sequence did not wrap."""
    run = Run(spec)
    for op in ops:
        run.apply(op)
        run.check_trainable()
    step_keeps_frozen_exact(run)
    x = torch.randn(BATCH, spec[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        frozen.thaw(run.model)
    run.reference.thaw(run.model, [])
    run.check_flags()
    if run.wraps:
        return
    model, twin = run.model, run.twin
    assert [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)] == [
        (n, m.training) for n, m in twin.named_modules(remove_duplicate=False)
    ]
    assert {k: v.dtype for k, v in model.state_dict().items()} == {k: v.dtype for k, v in twin.state_dict().items()}
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in model.state_dict().items())
    for mode in (True, False):
        model.train(mode), twin.train(mode)
        assert torch.equal(forward(model, x), forward(twin, x))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@SETTINGS
@given(spec=trees(), ops=st.lists(operations(), min_size=1, max_size=5))
def test_thaw_all_restores_the_model_before_the_first_freeze(spec: tuple, ops: list) -> None:
    """(a) alone, on sequences without wrapping: flags, modes, dtypes, forward output of the twin."""
    run = Run(spec)
    for op in ops:
        if op[0] != "wrap":
            run.apply(op)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", frozen.TiedParameterWarning)
        frozen.thaw(run.model)
    model, twin = run.model, run.twin
    # thaw settles: every flag says whether the parameter trains in the twin (which saw the same hand freezes).
    twin_trains = {id(p) for p in frozen.trainable(twin)}
    assert [p.requires_grad for p in model.parameters()] == [id(p) in twin_trains for p in twin.parameters()]
    assert [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)] == [
        (n, m.training) for n, m in twin.named_modules(remove_duplicate=False)
    ]
    assert {k: v.dtype for k, v in model.state_dict().items()} == {k: v.dtype for k, v in twin.state_dict().items()}
    x = torch.randn(BATCH, spec[0])
    for mode in (run.mode, not run.mode):
        model.train(mode), twin.train(mode)
        assert torch.equal(forward(model, x), forward(twin, x))


@SETTINGS
@given(
    spec=trees(),
    ops=st.lists(operations(), max_size=3),
    bad=st.sampled_from(["int64", "bool", "complex64", "float8_e4m3fn", None, "path"]),
)
def test_load_state_of_an_edited_state_is_refused_and_changes_nothing(spec: tuple, ops: list, bad: Any) -> None:
    """(e) for load_state: an edited dtype, a None field or an unknown path raise before anything changes."""
    run = Run(spec)
    for op in ops:
        run.apply(op)
    before = snapshot(run.model)
    try:
        run._reload_corrupt(bad)
    except (frozen.FrozenError, TypeError) as error:
        assert isinstance(error, frozen.FrozenError) or "saved" in str(error)
    assert_same(before, snapshot(run.model))
    run.check_trainable()


@SETTINGS
@given(spec=trees())
def test_random_trees_are_small_and_runnable(spec: tuple) -> None:
    """The strategy's promise: at most 20 modules, depth at most 4, width at most 6, a (batch, d) forward."""
    model = build(spec)
    modules = list(model.modules())
    assert len(modules) <= 20 and 2 <= spec[0] <= 6
    assert max(path.count(".") + 1 for path, _ in module_paths(model) if path) <= 2 * 4  # a container adds a level
    x = torch.randn(BATCH, spec[0])
    for mode in (True, False):
        assert forward(model.train(mode), x).shape == (BATCH, spec[0])
    twin = build(spec)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
