"""A run of sibling modules cached as one part: ``frozen.cache(resnet, "conv1-layer4")``.

A torchvision-style ResNet has no backbone module: its parent calls ``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1`` ... ``layer4`` one after the other. Cached one by one,
every intermediate output was stored (62 MB for 96 small images) where the last one is all
a later epoch needs. ``"first-last"`` (as the last part of a path: ``"conv1-layer4"``,
``"encoder.layer.0-7"``) names the children of one parent from ``first`` to ``last`` in
their registration order, cached as one part that stores only the last one's output:

* the first sibling's call (its stand-in, a :class:`~frozen._cache.part.Part`) is keyed
  by its arguments and answers with the *last* sibling's output -- stored, or computed
  by running the siblings one after the other on the samples not seen yet;
* each following sibling (a :class:`RunLink`) receives that very tensor from the parent
  and passes it on, untouched; the last one returns it to the parent.

That is right only if the parent calls the siblings in sequence, each on the previous
one's output and the same other arguments as the first, and keeps no intermediate
output. So the first call of a run is a *checked* pass: every sibling runs for real, and
the run is refused (:class:`frozen.CacheError`, naming the siblings) if a
sibling is called out of order, on anything but its predecessor's output, or with other
arguments, or if an intermediate output is still alive after the run -- a skip
connection, a list of hidden states. A later call that breaks the sequence is refused too.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch import nn

from .._core import StandIn, join
from .args import CacheError

__all__ = ["RunLink", "RunState", "finish_check", "run_forward", "run_members", "start_check"]


def run_members(spec: str, uses: list[Any]) -> tuple[str, list[str]] | None:
    """``(parent path, member paths)`` of a run spelled ``"prefix.first-last"``, or ``None`` if ``spec`` is no run."""
    prefix, _, last = spec.rpartition(".")
    if "-" not in last:
        return None
    parent = next((u.module for u in uses if u.path == prefix), None)
    if parent is None:
        return None
    names = [name for name, child in parent._modules.items() if child is not None]
    for at in (i for i, c in enumerate(last) if c == "-"):
        first, final = last[:at], last[at + 1 :]
        if first in names and final in names and names.index(first) < names.index(final):
            return prefix, [join(prefix, n) for n in names[names.index(first) : names.index(final) + 1]]
    return None


class RunState:
    """What the first sibling's part knows about its run between the siblings' calls."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths  # the siblings' paths, in order
        self.checked = False  # the parent was seen calling the siblings in sequence
        self.passed = False  # the checked pass reached the last sibling (what it left is checked next)
        self.trace: list[Any] | None = None  # during the checked pass: the outputs so far (weakly)
        self.extra: tuple[tuple, dict] = ((), {})  # the first sibling's other arguments
        self.pending: tuple[Any, int | None, int] | None = None  # (the run's output, its version, next sibling)
        self.left: weakref.ref | None = None  # the last sibling's input after the checked pass: must die
        self.keys: Any = None  # the keys of the checked pass's first call: its output is stored
        self.compiled = False  # the checked pass runs under torch.compile: no check of what the parent keeps

    def refuse(self, why: str) -> CacheError:
        self.trace = self.pending = None
        first, last = self.paths[0], self.paths[-1]
        return CacheError(
            f"frozen.cache: the run {first!r} ... {last!r} of sibling modules cannot be cached as one part: {why}. "
            f"A run is replayed only when the parent calls its siblings one after the other, each on the previous "
            f"one's output, and keeps no intermediate output. Cache the siblings as parts of their own "
            f"(frozen.cache(model, {', '.join(map(repr, self.paths[:3]))}, ...)), or a run that ends earlier."
        )


def _same_extra(args: tuple, kwargs: dict, extra: tuple[tuple, dict]) -> bool:
    rest, named = extra
    return (
        len(args) == len(rest) + 1
        and all(a is b for a, b in zip(args[1:], rest, strict=True))
        and kwargs.keys() == named.keys()
        and all(kwargs[k] is named[k] for k in kwargs)
    )


def run_forward(callers: list[Any], args: tuple, kwargs: dict) -> Any:
    """The siblings one after the other, each on the previous one's output and the first one's other arguments.

    ``callers`` run each sibling uncached: the layers behind its cache stand-in (``Part.callers``).
    """
    out = callers[0](*args, **kwargs)
    for call in callers[1:]:
        out = call(out, *args[1:], **kwargs)
    return out


def _compiled_caller() -> bool:
    """Whether a ``torch.compile``d frame called this one (its graph breaks resume in ``torch_dynamo_resume_in_...``)."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name.startswith("torch_dynamo_resume_in_"):
            return True
        frame = frame.f_back
    return False


def start_check(state: RunState, first: Any, args: tuple, kwargs: dict) -> Any:
    """The checked pass: the first sibling runs for real; the links check what the parent does next."""
    state.trace, state.extra, state.pending = [], (args[1:], dict(kwargs)), None
    # Compiled, the frames that resume after each graph break hold the values passed between the siblings:
    # only the order of the calls and what each receives can be checked then, not what the parent keeps.
    state.compiled = _compiled_caller()
    out = first(*args, **kwargs)  # the first sibling uncached
    state.trace.append(out)
    return out


def finish_check(state: RunState) -> None:
    """At the next call of the first sibling: the last sibling's input from the checked pass must be gone."""
    if state.left is not None and state.left() is not None:
        raise state.refuse(
            f"after the run, the parent still held the input of {state.paths[-1]!r} (the output of {state.paths[-2]!r})"
        )
    state.left, state.checked, state.passed = None, True, False


_UNTRACED: list[Any] = []


def _make_untraced() -> None:
    """``RunLink.call`` excluded from tracing, made when the first link is (``torch._dynamo`` is heavy to import).

    Made eagerly, never while tracing: torch 2.10's dynamo traced into the making and failed on it.
    """
    if not _UNTRACED:
        _UNTRACED.append(torch.compiler.disable(lambda link, args, kwargs: link.call(args, kwargs)))


class RunLink(StandIn):
    """The ``forward`` of a sibling after the first in a cached run: passes the run's output on (see the module docstring).

    The cache layer of the sibling's ``forward`` (``_core/standins.py``); like the part, it
    serves the original only, so a copy of the model gets a pass-through: copies run uncached.
    """

    attr, layer, serves_copies = "forward", "cache", False

    def __init__(self, head: Any, module: nn.Module, index: int) -> None:
        # Weak both ways: this lives in the sibling's __dict__, the part in the first sibling's.
        super().__init__(module)
        self.head, self.index = weakref.ref(head), index
        _make_untraced()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():  # like the part: a graph break, its state would become guards
            return _UNTRACED[0](self, args, kwargs)
        return self.call(args, kwargs)

    def call(self, args: tuple, kwargs: dict) -> Any:
        """Pass the run's output on, or run the sibling as itself (see the module docstring)."""
        head = self.head()
        state: RunState | None = head.run if head is not None else None
        if state is None or (state.pending is None and state.trace is None):
            return self.call_previous(*args, **kwargs)  # no run in progress (a bypassed call, a direct call)
        last = self.index == len(state.paths) - 1
        if state.pending is not None:
            value, version, expected = state.pending
            if self.index != expected or not args or args[0] is not value or not _same_extra(args, kwargs, state.extra):
                raise state.refuse(f"{state.paths[self.index]!r} was not called on the run's output next")
            if isinstance(value, torch.Tensor) and not value.is_inference() and value._version != version:
                raise state.refuse(f"the output passed to {state.paths[self.index]!r} was modified in place")
            state.pending = None if last else (value, version, expected + 1)
            return value
        trace = state.trace
        assert trace is not None
        if (
            self.index != len(trace)
            or not args
            or args[0] is not trace[-1]
            or not _same_extra(args, kwargs, state.extra)
        ):
            raise state.refuse(
                f"{state.paths[self.index]!r} was called on something else than the output of "
                f"{state.paths[self.index - 1]!r}, or with other arguments than {state.paths[0]!r}"
            )
        out = self.call_previous(*args, **kwargs)
        if not isinstance(trace[-1], torch.Tensor):
            raise state.refuse(f"{state.paths[self.index - 1]!r} returned a {type(trace[-1]).__name__}, not a tensor")
        trace[-1] = weakref.ref(trace[-1])  # the parent holds its current value; frozen holds none
        # an in-place sibling (ReLU(inplace=True)) returns its input: that object is the current one
        alive = [state.paths[i] for i, ref in enumerate(trace[:-1]) if ref() is not None and ref() is not args[0]]
        state.compiled = state.compiled or _compiled_caller()
        if alive and not state.compiled:
            raise state.refuse(f"the parent kept the output of {alive[0]!r}")
        if last:
            state.left, state.trace = (None if state.compiled else trace[-1]), None  # type: ignore[assignment]
            state.passed = True
            head.store_checked(out)  # type: ignore[union-attr]
        else:
            trace.append(out)
        return out
