"""What a hit cannot reproduce: forward hooks inside a part (refused, or skipped on request) and random draws."""

from __future__ import annotations

import copy

import pytest
import torch
from counting import count_runs
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

import frozen
from frozen._cache.api import CacheError, cache, cache_stats
from frozen._cache.part import Part

TOL = {"rtol": 1.3e-6, "atol": 1e-5}  # as in tests/helpers/cached_models.py: replayed rows against a fresh forward
CHECK = 1  # the first filling call runs the part once more on half its batch (the row-separability check)


class Distillation(nn.Module):
    """A frozen teacher whose intermediate features (captured by forward hooks) a student is trained to match."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.teacher = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.student = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        self.features: dict[str, torch.Tensor] = {}
        for index in (1, 3):  # FitNets-style hints: the outputs of both activations
            self.teacher[index].register_forward_hook(
                lambda _m, _i, out, key=f"teacher.{index}": self.features.__setitem__(key, out)
            )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher(x)
        hidden = self.student[1](self.student[0](x))
        out = self.student[3](self.student[2](hidden))
        return (hidden - self.features["teacher.1"]).square().mean() + (
            out - self.features["teacher.3"]
        ).square().mean()


def _distil(parts: tuple[str, ...]) -> tuple[list[float], Distillation]:
    model = frozen.freeze(Distillation(), "teacher")
    if parts:
        cache(model, *parts)
    optimizer = torch.optim.AdamW(frozen.trainable(model), lr=1e-2)
    data = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    losses = []
    for epoch in range(3):
        for rows in torch.randperm(16, generator=torch.Generator().manual_seed(epoch)).split(4):
            loss = model.loss(data[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses, model


def test_a_part_with_feature_hooks_inside_is_refused_and_its_children_cached_keep_the_features_fresh() -> None:
    # Cached whole, the teacher's hits skipped the hooks inside it: from epoch 2 on the student matched the
    # features of the last batch that missed. Now that is refused, model unchanged, and the fix it names works.
    model = frozen.freeze(Distillation(), "teacher")
    with pytest.raises(CacheError, match=r"forward hook .*'teacher\.1', inside the cached part 'teacher'.*"
                       r"frozen\.cache\(model, 'teacher\.0', 'teacher\.1', 'teacher\.2', 'teacher\.3'\)"):  # fmt: skip
        cache(model, "teacher")
    assert cache_stats(model) == {} and not isinstance(model.teacher.__dict__.get("forward"), Part)

    plain, _ = _distil(())
    children = tuple(f"teacher.{i}" for i in range(4))
    cached, model = _distil(children)
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(plain), **TOL)
    stats = cache_stats(model)
    assert stats["teacher.3"]["hits"] == 32 and stats["teacher.3"]["forwards"] == 4  # epochs 2-3 all hit


def test_a_hook_added_inside_after_caching_is_refused_at_the_next_call_until_removed() -> None:
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 1)), "0")
    reference = copy.deepcopy(model)
    handle = cache(model, "0")
    x = torch.randn(5, 3)
    model(x)
    seen = []
    hook = model[0][1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    for _ in range(2):  # not once only: every call, while the hook is there
        with pytest.raises(CacheError, match=r"'0\.1', inside the cached part '0'.*inner_hooks='skip'"):
            model(x)
    assert seen == []
    hook.remove()
    torch.testing.assert_close(model(x), reference(x), **TOL)  # the refusals dropped the entries: recomputed
    model[0].register_forward_hook(lambda _m, _i, out: seen.append(out))  # on the part itself: runs on a hit
    torch.testing.assert_close(model(x), reference(x), **TOL)
    assert len(seen) == 1 and handle.stats()["0"]["hits"] == 5


def _counted_inside(index: int) -> tuple[nn.Sequential, list[int]]:
    """A cached part "0" = Linear-ReLU whose module ``index`` has a hook counting its runs (``inner_hooks="skip"``)."""
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 1)), "0")
    runs = [0]
    model[0][index].register_forward_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    cache(model, "0", inner_hooks="skip")
    return model, runs


def test_inner_hooks_skip_lets_hits_skip_hooks_that_count_real_runs() -> None:
    model, runs = _counted_inside(0)
    x = torch.randn(5, 3)
    model(x)
    model(x[[3, 1]])
    assert runs == [1 + CHECK] and cache_stats(model)["0"]["hits"] == 2
    with pytest.raises(CacheError, match=r"inner_hooks='sometimes'.*expected one of \('refuse', 'skip'\)"):
        cache(frozen.freeze(nn.Sequential(nn.Linear(2, 2)), "0"), "0", inner_hooks="sometimes")


def test_a_changed_module_tree_invalidates_once_and_then_hits() -> None:
    # The hooks seen at a call are recorded over the part's new module list: recorded over the old
    # one, a hooked module's shifted position read as a new hook, and the next call dropped the
    # entries just stored (a second invalidation, a second forward).
    model, runs = _counted_inside(1)
    x = torch.randn(5, 3)
    model(x)
    model[0][0] = frozen.freeze(nn.Sequential(nn.Linear(3, 4), nn.Identity()), "")  # ReLU moves from index 2 to 4
    model(x)
    model(x)
    stats = cache_stats(model)["0"]
    assert (stats["invalidations"], stats["forwards"], stats["hits"]) == (1, 2, 5) and runs == [2 + CHECK]


def test_machinery_hooks_inside_are_allowed_and_flop_counting_keeps_the_entries() -> None:
    # Pruning recomputes a weight from parameters the snapshot covers, freeze(dtype=) casts at a boundary,
    # FlopCounterMode tracks modules with global hooks: none of them has anything to do when nothing runs.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 1))
    prune.l1_unstructured(model[0][0], "weight", amount=0.5)
    frozen.freeze(model, "0.2", dtype=torch.bfloat16)  # first: its own precision, then the rest of the part
    frozen.freeze(model, "0")
    x = torch.randn(6, 3)
    with torch.no_grad():
        want = model(x)  # uncached (a pruned model cannot be deep-copied)
    runs = count_runs(model[0][0])
    handle = cache(model, "0")
    torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    with FlopCounterMode(display=False) as counter:
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    assert runs == [1 + CHECK] and handle.stats()["0"]["hits"] == 6 and handle.stats()["0"]["invalidations"] == 0
    assert counter.get_total_flops() == 2 * 6 * 4  # the trained head only: the cached part did not run


class Sampling(nn.Module):
    """A frozen encoder that returns a posterior sample, drawn in inference too."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean(x)
        return mean + 0.1 * torch.randn_like(mean)


def test_a_part_that_draws_random_numbers_is_refused_and_stores_nothing() -> None:
    # Cached, it replayed its first draw forever: two calls on the same input returned the same "sample".
    model = frozen.freeze(nn.Sequential(Sampling(), nn.Linear(2, 1)), "0")
    handle = cache(model, "0")
    x = torch.randn(4, 3)
    for _ in range(2):
        with pytest.raises(CacheError, match=r"part at '0' drew random numbers.*frozen\.uncache\(model, '0'\)"):
            model(x)
    assert handle.stats()["0"]["entries"] == 0
    frozen.uncache(model, "0")
    assert not torch.equal(model(x), model(x))  # what the cache would have hidden


class Residual(nn.Module):
    """``x + body(x)`` where the body starts with an in-place ReLU: it rewrites ``x`` before the sum reads it."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def test_a_part_that_writes_into_its_input_is_refused() -> None:
    # Cached, a hit skipped the in-place ReLU on the caller's tensor: the residual sum read the raw input and
    # the second identical call returned another value.
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(Residual()), "0")
    want = model(torch.ones(4, 3).neg())
    handle = cache(model, "0.body")
    with pytest.raises(CacheError, match=r"part at '0\.body' modified its input argument 0 in place.*inplace"):
        model(torch.ones(4, 3).neg())
    assert handle.stats()["0.body"]["entries"] == 0
    model[0].body[0].inplace = False  # the fix it names
    got = [model(torch.ones(4, 3).neg()) for _ in range(2)]
    assert not torch.equal(got[0], want)  # out of place, the residual now adds the raw input: a different model
    torch.testing.assert_close(got[1], got[0], rtol=0, atol=0)
    assert handle.stats()["0.body"]["hits"] == 4
