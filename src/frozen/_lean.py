"""Lean frozen middles: save less for backward where no weight gradient is needed.

:func:`lean` makes every frozen convolution of a part compute its backward for the input
only (saving the weight, not the input activation) and folds each frozen eval-mode
BatchNorm into the convolution just before it in an ``nn.Sequential`` (one operation
instead of two, nothing saved for the normalisation); a ReLU after them overwrites the
convolution's output, which nothing saved, instead of allocating. Like :func:`frozen.cache`
it sets an instance ``forward`` on those modules -- no new module, same tree, same
``state_dict``. Every call checks the modules are still frozen (else it runs the plain
forward) and refolds when a tensor or flag of the convolution or the norm changed. See
``docs/cache.md`` for the measurements behind making this opt-in.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ._cache_hooks import observed_globally
from ._cache_part import Passthrough
from ._call import GuardedForward, under_torch_func
from ._checks import check_model
from ._errors import FrozenError, UnknownPathError, closest
from ._fold import InputGradConv, InputGradConvJvp, autocast_operands, fold, foldable, kept_by_producer, state_of
from ._fsdp_sources import sharded_sources, watch_loads
from ._tensor_state import TensorState
from ._tree import iter_module_uses

__all__ = ["lean", "unlean"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _conv_args(conv: Any) -> tuple:
    return (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)


class LeanConv:
    """The ``forward`` of a lean convolution, with the BatchNorm after it folded in (if any).

    Eagerly, what a call needs (plain or lean, folded weights, convolution arguments) is
    worked out once per state of the two modules and reused while a :class:`TensorState`
    snapshot of them matches: the per-call cost is that comparison, not the checks and the
    fold. Under ``torch.compile`` the snapshot (weak references, storages) would break the
    graph, so the same decisions and the fold (a per-channel scale) are traced into it
    instead, from the live parameters: dynamo guards the flags, the graph follows the values.
    """

    def __init__(self, conv: Any, norm: nn.Module | None, root: nn.Module | None = None, path: str = "") -> None:
        self.conv, self.norm = conv, norm
        # where the convolution sits, to find an FSDP2 unit above it (_fsdp_sources.py)
        self.root, self.path = (weakref.ref(root) if root is not None else lambda: None), path
        self.state: TensorState | None = None
        self.plain = False  # thawed: the convolution's own forward
        self.folding = False
        self.weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.last: tuple[weakref.ref, int] | None = None  # the output the norm may pass through unchanged
        self.produced: tuple[weakref.ref, int] | None = None  # its last lean output, for a ReLU in place
        self.own: Any = None  # frozen's guard it replaced, if any: unlean puts it back
        # FSDP2 loads into shards with version counters preserved: a load must refold (_fsdp_sources.py).
        self.load_hooks = watch_loads([conv] if norm is None else [conv, norm], self.forget)

    def forget(self) -> None:
        """Refold at the next call (after a ``load_state_dict`` of the convolution or its norm)."""
        self.state = None

    def __reduce__(self) -> tuple:
        return (Passthrough, (self.conv, self.own))

    def _decide(self) -> tuple[bool, bool, tuple[torch.Tensor, torch.Tensor | None]]:
        """``(plain, folding, (weight, bias))`` for the modules as they are now."""
        conv = self.conv
        plain = any(p.requires_grad for p in conv.parameters())
        folding = not plain and self.norm is not None and foldable(self.norm) and not any(_watchers(conv, self.norm))
        return plain, folding, fold(conv, self.norm) if folding else (conv.weight, conv.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.own, GuardedForward):  # the guard this replaced: its slots still detach
            return self.own.around(self._run, x)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        self.last = self.produced = None
        lean_input = x.requires_grad and torch.is_grad_enabled()
        function: type[InputGradConv] = InputGradConvJvp
        if torch.compiler.is_compiling():
            function = InputGradConv  # dynamo cannot trace a custom jvp
            plain, folding, (weight, bias) = self._decide()
        elif torch.is_inference_mode_enabled():  # eager only: dynamo cannot trace this query
            # Nothing is saved for backward here, and the output is an inference tensor without a
            # version counter: the norm could not tell it unchanged, so it normalises by itself.
            return type(conv).forward(conv, x)
        else:
            tensors, flags = state_of(conv, self.norm) if self.norm is not None else state_of(conv)
            flags += _watchers(conv, self.norm) if self.norm is not None else ()
            shards = sharded_sources(self.root(), self.path, [conv] if self.norm is None else [conv, self.norm])
            tensors += shards if shards is not None else []
            if shards is None or self.state is None or not self.state.matches(tensors, flags):
                self.plain, self.folding, self.weights = self._decide()
                self.state = TensorState(tensors, flags)
            plain, folding, (weight, bias) = self.plain, self.folding, self.weights  # type: ignore[misc]
            # torch's own convolution where its saved input is a storage that is kept anyway
            lean_input = lean_input and not kept_by_producer(x)
        if plain:
            return type(conv).forward(conv, x)
        if lean_input:
            y = function.apply(*autocast_operands(x, weight, bias), *_conv_args(conv))
        else:
            y = conv._conv_forward(x, weight, bias)
        if folding:
            self.last = (weakref.ref(y), y._version)
        if not torch.compiler.is_compiling() and not under_torch_func():
            self.produced = (weakref.ref(y), y._version)  # nothing saved it: a ReLU may overwrite it
        return y


class _AfterConv:
    """The ``forward`` of a module right after a lean convolution: a shortcut on that output (see subclasses).

    ``fresh``: ``x`` is the very tensor the convolution recorded, unchanged since; else ``plain``.
    """

    def __init__(self, module: nn.Module, conv: LeanConv) -> None:
        self.module, self.conv = module, conv

    def __reduce__(self) -> tuple:
        return (Passthrough, (self.module,))

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.module).forward(self.module, x)

    @staticmethod
    def fresh(mark: tuple[weakref.ref, int] | None, x: torch.Tensor) -> bool:
        return mark is not None and mark[0]() is x and x._version == mark[1]


class LeanNorm(_AfterConv):
    """The ``forward`` of a BatchNorm folded into the convolution before it: identity on that output."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fresh(self.conv.last, x):
            return x  # the convolution already applied this normalisation
        return self.plain(x)


class LeanReLU(_AfterConv):
    """The ``forward`` of a ReLU right after a lean convolution (and its folded norm): in place on that output.

    Nobody saved the convolution's output (its backward keeps the weight, torch's own
    convolution its input), so the ReLU overwrites it: one allocation and write less per
    block (benchmarks' middle: 0.931x instead of 0.940x the ideal, quiet machine). Not
    while a hook could hold it (a forward hook or pre-hook on any of the modules, or a
    global one): a tensor a hook kept would change under it.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.fresh(self.conv.produced, x) and not self._watched():
            return torch.relu_(x)
        return self.plain(x)

    def _watched(self) -> bool:
        conv = self.conv
        modules = (conv.conv, self.module) if conv.norm is None else (conv.conv, conv.norm, self.module)
        return any(m._forward_hooks or m._forward_pre_hooks for m in modules) or bool(observed_globally())


def _watchers(conv: nn.Module, norm: nn.Module) -> tuple[tuple[int, ...], ...]:
    """Ids of the hooks that see the convolution's output or the norm's input: folding would change both.

    Folded, the convolution returns the *normalised* output: a forward hook on it (or a
    pre-hook on the norm) captured BatchNorm's output instead of the convolution's, and one
    that returned a new tensor had the norm applied twice. With such a hook, no fold: the
    convolution stays lean (input gradient only) and the norm runs as itself.
    """
    return tuple(conv._forward_hooks), tuple(norm._forward_pre_hooks), observed_globally()


def _eligible(conv: nn.Module) -> bool:
    return type(conv) in _CONVS and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _plan(model: nn.Module, path: str) -> list[tuple[nn.Module, nn.Module | None, nn.Module | None, str]]:
    """``(conv, norm or None, ReLU or None, conv's path)`` for every eligible convolution under ``path``.

    Norms are given only where folding them is safe; ReLUs only where the convolution's
    output (through the norm, if any) goes to them alone.
    """
    uses = [u for u in iter_module_uses(model) if u.path == path or u.path.startswith(f"{path}.") or not path]
    counts: dict[int, int] = {}
    for use in iter_module_uses(model):
        counts[id(use.module)] = counts.get(id(use.module), 0) + 1
    convs = {id(u.module): u.module for u in uses if _eligible(u.module)}
    where = {id(u.module): u.path for u in reversed(uses)}  # each module's first path
    norms: dict[int, nn.Module] = {}
    relus: dict[int, nn.Module] = {}
    for use in uses:
        seq = use.module
        if type(seq).forward is not nn.Sequential.forward or not isinstance(seq, nn.Sequential):
            continue
        children = list(seq)
        for index, first in enumerate(children[:-1]):
            # In a plain Sequential the convolution's output goes to the next child only.
            if id(first) not in convs or counts[id(first)] != 1:
                continue
            following = children[index + 1 :]
            if isinstance(following[0], nn.modules.batchnorm._BatchNorm) and counts[id(following[0])] == 1:
                norms[id(first)] = following.pop(0)
            if following and type(following[0]) is nn.ReLU and counts[id(following[0])] == 1:
                relus[id(first)] = following[0]
    return [(conv, norms.get(key), relus.get(key), where[key]) for key, conv in convs.items()]


def lean(model: nn.Module, *paths: str) -> nn.Module:
    """Make the frozen parts at ``paths`` (none: the whole model) save less for backward; return ``model``.

    Frozen ``Conv1d/2d/3d`` compute only the input gradient and save no input activation;
    a frozen eval-mode ``BatchNorm`` right after such a convolution in an ``nn.Sequential``
    is folded into it (outputs and input gradients equal up to float rounding, ~1e-7
    relative in float32), and an ``nn.ReLU`` right after them runs in place on the
    convolution's output, which nothing saved. ``Linear`` needs nothing: torch already
    saves only the weight when the weight needs no gradient. A module thawed later runs
    its plain forward.
    The model is settled first (:func:`frozen.settle`), as ``freeze`` and ``thaw`` do.

    Raises:
        TypeError: ``model`` is not a module.
        frozen.UnknownPathError: no module has a given path.
        frozen.FrozenError: a part is not frozen. Nothing is changed then.

    Example:
        >>> import torch, frozen
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> before = frozen.freeze(net, "")(x)
        >>> torch.allclose(frozen.lean(net)(x), before, atol=1e-6)
        True
    """
    check_model(model, "frozen.lean")
    import frozen  # the package imports this module

    known = [u.path for u in iter_module_uses(model)]
    for path in paths or ("",):
        if path not in known:
            raise UnknownPathError(
                f"frozen.lean(model, {path!r}): no module has that path. Closest: {closest(path, known)}."
            )
        if not frozen.is_frozen(model, path):
            raise FrozenError(
                f"frozen.lean(model, {path!r}): the part at {path!r} is not frozen; a lean backward drops the weight "
                f"gradient, so only frozen parts can be lean. Freeze it first: frozen.freeze(model, {path!r})."
            )
    frozen.settle(model)  # unsettled, a Frozen(...) wrapper's per-call detaching refolded at every call
    plans = [item for path in paths or ("",) for item in _plan(model, path)]
    for conv, norm, relu, where in plans:
        existing = conv.__dict__.get("forward")
        # frozen's own white-box guard may stand there (the convolution is the root of a frozen
        # part): lean replaces it while lean and puts it back on unlean. Anything else is foreign.
        if existing is None or isinstance(existing, GuardedForward):
            conv.__dict__["forward"] = lean_conv = LeanConv(conv, norm, model, where)
            lean_conv.own = existing
            if norm is not None and "forward" not in norm.__dict__:
                norm.__dict__["forward"] = LeanNorm(norm, lean_conv)
            elif norm is not None:
                lean_conv.norm = None  # the norm's forward is someone else's: do not fold
                relu = None  # its input is then the norm's own output, never the convolution's
            if relu is not None and not relu.inplace and "forward" not in relu.__dict__:
                relu.__dict__["forward"] = LeanReLU(relu, lean_conv)
    return model


def unlean(model: nn.Module, *paths: str) -> nn.Module:
    """Undo :func:`lean` for the parts at ``paths`` (none: the whole model); return ``model``.

    Example:
        >>> import torch, frozen
        >>> net = frozen.lean(frozen.freeze(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1)), ""))
        >>> "forward" in frozen.unlean(net)[0].__dict__
        False
    """
    check_model(model, "frozen.unlean")
    for use in iter_module_uses(model):
        if paths and not any(use.path == p or use.path.startswith(f"{p}.") for p in paths):
            continue
        found: Any = use.module.__dict__.get("forward")
        if isinstance(found, LeanConv | LeanNorm | LeanReLU):
            own = found.own if isinstance(found, LeanConv) else None
            if own is None:
                del use.module.__dict__["forward"]
            else:
                use.module.__dict__["forward"] = own
            if isinstance(found, LeanConv):
                found.last = None  # a norm left lean alone then runs its plain forward
                for hook in found.load_hooks:
                    hook.remove()
    return model
