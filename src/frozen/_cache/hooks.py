"""Forward hooks inside a cached part: which ones a hit may skip, and the refusal of the others.

A hit returns stored rows without running the part, so the forward hooks of the modules
*inside* it do not run. For a hook that observes values that is a silent error: a
perceptual or distillation loss that captures a frozen network's intermediate features
with ``register_forward_hook`` read the features of the last *missed* batch on every hit
(before this check, a cached VGG-style part handed such a loss another batch's
features). The hooks of the part's own root still run on a hit: ``Module.__call__``
runs them around the cached ``forward``, on the replayed output.

So :func:`frozen.cache` refuses a part with forward hooks inside it, and a call refuses a
part that gained one since (:func:`hook_marks`, compared at every call like the part's
tensors). ``inner_hooks="skip"`` lets hits skip them instead, for hooks that count or
profile the runs that really happen. Exempt are hooks that only keep the machinery of a
run in order and have nothing to do when the modules do not run: frozen's own
(lower-precision boundaries, row carriers), FSDP2's and the other ``torch.distributed``
hooks (gather and free the shards of a unit that runs), ``torch.nn.utils.prune``
(recomputes a pruned weight from parameters the snapshot covers) and
``torch.utils.module_tracker`` (records which modules run, as ``FlopCounterMode`` does).
Global module hooks (``register_module_forward_hook``) fire for every module, so they
count as inside. :func:`frozen.lean` asks the same of global hooks (:func:`observed_globally`).
"""

from __future__ import annotations

import functools
import operator
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as module_globals
from torch.optim.optimizer import register_optimizer_step_post_hook

from .args import CacheError

__all__ = [
    "INNER_HOOKS",
    "hook_marks",
    "observed_globally",
    "STEPS",
    "refuse_inner_hooks",
    "refuse_run_hooks",
    "watch_steps",
]

INNER_HOOKS = ("refuse", "skip")  # frozen.cache(..., inner_hooks=): refuse hooks inside a part, or let hits skip them
_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")
_HOOKS = operator.attrgetter("_forward_hooks")
_SKIPPABLE = ("frozen.", "torch.distributed.", "torch.nn.utils.prune", "torch.utils.module_tracker")


def _unwrapped(hook: Any) -> Any:
    while isinstance(hook, functools.partial):
        hook = hook.func
    return hook


def machinery_hook(hook: Any) -> bool:
    """Whether ``hook`` is machinery a run that does not happen needs nothing from (see the module docstring)."""
    hook = _unwrapped(hook)
    defined_in = getattr(hook, "__module__", None) or type(hook).__module__
    return isinstance(defined_in, str) and defined_in.startswith(_SKIPPABLE)


def _global_hooks() -> list[tuple[str, int, Any]]:
    """``(kind, id, hook)`` of the global forward (pre-)hooks that are not machinery: each sees every module."""
    return [
        (kind, i, hook)
        for kind, hooks in (
            ("global forward pre-hook", module_globals._global_forward_pre_hooks),
            ("global forward hook", module_globals._global_forward_hooks),
        )
        for i, hook in hooks.items()
        if not machinery_hook(hook)
    ]


def observed_globally() -> tuple[int, ...]:
    """The ids of the global forward (pre-)hooks that are not machinery: each sees every module's values."""
    if not (module_globals._global_forward_pre_hooks or module_globals._global_forward_hooks):
        return ()  # the usual case, checked at every call: no list built
    return tuple(i for _, i, _ in _global_hooks())


def hook_marks(modules: list[nn.Module], every: bool = False) -> tuple:
    """What a call compares to tell that hooks were added or removed inside a part (``modules``, root first).

    The root's own hooks are left out (they run on a hit, and may come and go freely) unless
    ``every``: a run of siblings, where only some of the first's and last's hooks run.

    Hook ids are never reused (``RemovableHandle`` counts up), so equal ids are the same
    hooks. Exempt global hooks are left out: ``FlopCounterMode`` adds and removes some at
    every use, and counting them would drop the part's entries each time.
    """
    marks: list[Any] = [observed] if (observed := observed_globally()) else []
    start = 0 if every else 1
    inner = modules[start:]
    if not any(map(bool, map(_PRE_HOOKS, inner))) and not any(map(bool, map(_HOOKS, inner))):
        return tuple(marks)  # the usual case, at every call: two C-level passes, no Python loop
    for index, m in enumerate(inner, start):
        if m._forward_pre_hooks or m._forward_hooks:
            marks.append((index, tuple(m._forward_pre_hooks), tuple(m._forward_hooks)))
    return tuple(marks)


def _named(hook: Any) -> str:
    hook = _unwrapped(hook)
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


def _observing_hooks(module: nn.Module) -> list[tuple[str, str, Any]]:
    """``(module path inside the part or "", kind, hook)`` of every hook a hit would skip that is not exempt."""
    found: list[tuple[str, str, Any]] = [("", kind, hook) for kind, _, hook in _global_hooks()]
    for name, sub in module.named_modules():
        if not name:
            continue  # the root's own hooks run on a hit, around the cached forward
        for kind, hooks in (("forward pre-hook", sub._forward_pre_hooks), ("forward hook", sub._forward_hooks)):
            found += [(name, kind, hook) for hook in hooks.values() if not machinery_hook(hook)]
    return found


def refuse_run_hooks(members: list[tuple[str, nn.Module]]) -> None:
    """:func:`refuse_inner_hooks` for a run of siblings cached as one part (``run.py``).

    Inside every sibling as for a part; on the siblings themselves, every hook but the first
    one's pre-hooks (they see its real input) and the last one's forward hooks (they see the
    run's output): the others would see the run's output passed along, or not run at all.
    """
    last = len(members) - 1
    for index, (path, root) in enumerate(members):
        refuse_inner_hooks(root, path)
        kinds = []
        if index > 0:
            kinds.append(("forward pre-hook", root._forward_pre_hooks))
        if index < last:
            kinds.append(("forward hook", root._forward_hooks))
        for kind, hooks in kinds:
            found = [hook for hook in hooks.values() if not machinery_hook(hook)]
            if found:
                raise CacheError(
                    f"frozen.cache: the {kind} {_named(found[0])} on {path!r}, inside the cached run "
                    f"{members[0][0]!r} ... {members[-1][0]!r}, would not see that module's own values (a run "
                    f"passes its last output along). Cache the siblings up to {path!r} and from it as separate "
                    f"parts, or remove the hook; or, if hits may skip it, pass frozen.cache(..., inner_hooks='skip')."
                )


def refuse_inner_hooks(module: nn.Module, path: str) -> None:
    """Raise :class:`frozen.CacheError` if a forward hook inside the part at ``path`` would be skipped by a hit."""
    found = _observing_hooks(module)
    if not found:
        return
    where, kind, hook = found[0]
    if where:
        hooked = f"{path}.{where}"
        place = f"on {hooked!r}, inside the cached part {path!r},"
        fix = f"Cache {hooked!r} as a part of its own instead (its own hooks run on a hit)"
        if "." not in where:  # a child of the part: the part's children, each cached, are such parts
            children = [repr(f"{path}.{name}") for name in module._modules]
            shown = ", ".join(children[:6]) + (", ..." if len(children) > 6 else "")
            fix += f", e.g. frozen.cache(model, {shown}) in place of {path!r}"
    else:
        place = f"(registered for every module) around the modules inside the cached part {path!r}"
        fix = "Register it on the cached part itself instead (hooks on the part run on a hit, on its replayed output)"
    raise CacheError(
        f"frozen.cache: the {kind} {_named(hook)} {place} would not run when a sample hits: a hit returns the "
        f"stored output without running the modules inside (a feature captured by such a hook, e.g. for a "
        f"perceptual or distillation loss, would be another batch's). {fix}; or remove the hook; or, if hits may "
        f"skip it (it counts or profiles real runs), pass frozen.cache(..., inner_hooks='skip'). ({len(found)} "
        f"such hook(s) inside the part in all.)"
    )


# -- optimizer steps that no version counter shows --------------------------------------

_WATCHED: dict[int, list[tuple[weakref.ref, weakref.WeakMethod]]] = {}
_STEP_HOOK: list[Any] = []  # the one global optimizer step post-hook, registered at first use
STEPS = [0]  # optimizer steps seen since then: what a per-step memo compares


def watch_steps(params: Iterable[torch.Tensor], forget: Any) -> None:
    """Call ``forget()`` after any optimizer step that may have changed one of ``params``.

    Fused optimizer kernels (``torch.optim.Adam(..., fused=True)``, SGD's too) write the
    parameters without bumping their ``_version``: a cached part kept answering with the
    old weights' outputs, and a lean convolution with its old folded weights. One global
    post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) looks, after
    each step, at the parameters the step had a gradient for -- the only ones torch's
    optimizers touch -- and tells their watchers. ``forget`` is held weakly.
    """
    if not _STEP_HOOK:
        _STEP_HOOK.append(register_optimizer_step_post_hook(_after_step))
    method = weakref.WeakMethod(forget)
    if len(_WATCHED) > 4096:  # drop what died (parameters, or watchers)
        for key in [k for k, v in _WATCHED.items() if not any(r() is not None and m() is not None for r, m in v)]:
            del _WATCHED[key]
    for param in params:
        entries = _WATCHED.setdefault(id(param), [])
        entries[:] = [(r, m) for r, m in entries if r() is param and m() is not None]
        if not any(m == method for _, m in entries):
            entries.append((weakref.ref(param), method))


def _after_step(optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
    STEPS[0] += 1
    if not _WATCHED:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue  # torch's optimizers skip a parameter without a gradient
            for ref, method in _WATCHED.get(id(param), ()):
                forget = method() if ref() is param else None
                if forget is not None:
                    forget()
