"""The forwards a lean middle puts on its modules: the lean convolution, and the shortcuts after it.

:func:`frozen.lean` (``api.py``) installs these as stand-ins for ``forward`` (layer
``"lean"``: behind a cached part, in front of frozen's white-box guard; ``_core/standins.py``).
A :class:`LeanConv` computes the convolution with a backward for the input only and, when
a frozen eval-mode BatchNorm follows it, with that norm folded in; the norm's
:class:`LeanNorm` then passes the output through, and a ReLU's :class:`LeanReLU`
overwrites it in place. Each holds its module weakly (``ModuleRef``): it lives in that
module's ``__dict__``. A copy of the model keeps them (they are rebuilt from the modules
they were made for; what they worked out is worked out again).
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch import nn

from .._cache import observed_globally, watch_steps
from .._core import GuardedForward, ModuleRef, StandIn, TensorState, under_torch_func
from ..distributed import sharded_sources, watch_loads
from .fold import InputGradConv, InputGradConvJvp, autocast_operands, fold, foldable, kept_by_producer, state_of
from .norm import LeanBatchNorm
from .sequence import in_sequence, references_in_sequence

__all__ = ["LeanConv", "LeanNorm", "LeanReLU"]


def _conv_args(conv: Any) -> tuple:
    return (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)


class LeanConv(StandIn):
    """The ``forward`` of a lean convolution, with the BatchNorm after it folded in (if any).

    Eagerly, what a call needs (plain or lean, folded weights, convolution arguments) is
    worked out once per state of the two modules and reused while a :class:`TensorState`
    snapshot of them matches: the per-call cost is that comparison, not the checks and the
    fold. Under ``torch.compile`` the snapshot (weak references, storages) would break the
    graph, so the same decisions are traced into it instead, from the live parameters: dynamo
    guards the flags, the graph follows the values. Compiled, nothing folds (the caller, which
    decides whether folding is safe, cannot be read while tracing): the norm is lean by itself.

    It computes the convolution itself instead of calling the layer behind it, through
    frozen's white-box guard when that stands there. The shortcuts on its output (the norm
    passing it through, a ReLU overwriting it) hold only while it is its module's outermost
    ``forward``: a cached part in front of it stores and replays its output, which must then
    be the convolution's own.
    """

    attr, layer = "forward", "lean"

    def __init__(self, conv: Any, norm: nn.Module | None, root: nn.Module | None = None, path: str = "") -> None:
        # Weak: this lives in conv's __dict__ (and the norm's stand-in holds it): no reference cycle
        super().__init__(conv)
        self.norm_ref = ModuleRef(norm)
        # where the convolution sits, to find an FSDP2 unit above it (_fsdp_sources.py)
        self.root, self.path = ModuleRef(root), path
        self.state: TensorState | None = None
        self.plain = False  # thawed: the convolution's own forward
        self.folding = False
        self.weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.last: tuple[weakref.ref, int | None] | None = None  # the output the norm may pass through unchanged
        self.produced: tuple[weakref.ref, int] | None = None  # its last lean output, for a ReLU in place
        # FSDP2 loads into shards with version counters preserved: a load must refold (_fsdp_sources.py).
        self.load_hooks: list[Any] | None = self.watch()
        self.parent = ModuleRef(None)  # the nn.Sequential the convolution and its norm sit in (set by lean)

    def watch(self) -> list[Any]:
        """Forget the fold after any ``load_state_dict`` of the convolution or its norm, or a fused step on them.

        Returns the load hooks' handles. A fused optimizer step writes parameters without
        bumping their version, so the snapshot alone would keep a stale fold.
        """
        modules = [self.conv] if self.norm is None else [self.conv, self.norm]
        watch_steps([p for m in modules for p in m.parameters()], self.forget)
        return watch_loads(modules, self.forget)

    def __getstate__(self) -> dict[str, Any]:
        # A copy works out its own fold and watches its own modules' loads (at its first call);
        # the model it sits in is not carried along (only FSDP2 units above the copy go unseen).
        state = dict(self.__dict__)
        state.update(root=ModuleRef(None), state=None, weights=None, last=None, produced=None, load_hooks=None)
        return state

    @property
    def conv(self) -> Any:
        return self.module_ref()

    @property
    def norm(self) -> Any:
        return self.norm_ref()

    def forget(self) -> None:
        """Refold at the next call (after a ``load_state_dict`` of the convolution or its norm)."""
        self.state = None

    def _decide(self, may_fold: bool = True) -> tuple[bool, bool, tuple[torch.Tensor, torch.Tensor | None]]:
        """``(plain, folding, (weight, bias))`` for the modules as they are now (``may_fold=False``: no fold)."""
        conv = self.conv
        plain = any(p.requires_grad for p in conv.parameters())
        norm = self.norm
        folding = may_fold and not plain and norm is not None and foldable(norm) and not any(_watchers(conv, norm))
        folding = folding and self.outermost(conv)
        return plain, folding, fold(conv, norm) if folding else (conv.weight, conv.bias)

    def outermost(self, conv: nn.Module) -> bool:
        """Whether this is the convolution's ``forward`` as its callers see it (nothing in front)."""
        return conv.__dict__.get("forward") is self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Folded, the convolution returns BatchNorm's output: only right when its parent Sequential
        # hands that output to the norm (a pass-through then) and to no one else (sequence.py).
        sequence = self.norm_ref() is not None and not torch.compiler.is_compiling() and in_sequence(self.parent())
        guard = self.previous
        if isinstance(guard, GuardedForward):  # frozen's guard behind this: its slots still detach
            return guard.around(self._run, x, sequence)
        return self._run(x, sequence)

    def _run(self, x: torch.Tensor, sequence: bool = True) -> torch.Tensor:
        conv = self.conv
        self.last = self.produced = None
        lean_input = x.requires_grad and torch.is_grad_enabled()
        function: type[InputGradConv] = InputGradConvJvp
        outermost = False  # compiled, no ReLU runs in place (inductor fuses the pair itself)
        if torch.compiler.is_compiling():
            function = InputGradConv  # dynamo cannot trace a custom jvp
            # No fold: who called can't be read while tracing, and a compiled loop over the children
            # that kept taps read BatchNorm's output as the convolution's. The norm is lean alone.
            plain, folding, (weight, bias) = self._decide(may_fold=False)
        elif torch.is_inference_mode_enabled():  # eager only: dynamo cannot trace this query
            # Nothing is saved for backward here, and the output is an inference tensor without a
            # version counter: the norm could not tell it unchanged, so it normalises by itself.
            return type(conv).forward(conv, x)
        else:
            if self.load_hooks is None:  # a copy, at its first call
                self.load_hooks = self.watch()
            norm = self.norm
            tensors, flags = state_of(conv, norm) if norm is not None else state_of(conv)
            flags += _watchers(conv, norm) if norm is not None else ()
            outermost = self.outermost(conv)
            flags += ((outermost,),)  # a cache put in front of it since: no fold from then on
            shards = sharded_sources(self.root(), self.path, [conv] if norm is None else [conv, norm])
            tensors += shards if shards is not None else []
            if shards is None or self.state is None or not self.state.matches(tensors, flags):
                self.plain, self.folding, self.weights = self._decide()
                self.state = TensorState(tensors, flags)
                watch_steps([t for t in tensors if isinstance(t, nn.Parameter)], self.forget)  # replaced ones too
            plain, folding, (weight, bias) = self.plain, self.folding, self.weights  # type: ignore[misc]
            if folding and not sequence:  # called outside its Sequential: the convolution's own output
                folding, weight, bias = False, conv.weight, conv.bias
            # torch's own convolution where its saved input is a storage that is kept anyway
            lean_input = lean_input and not kept_by_producer(x)
        if plain:
            return type(conv).forward(conv, x)
        if lean_input:
            y = function.apply(*autocast_operands(x, weight, bias), *_conv_args(conv))
        else:
            y = conv._conv_forward(x, weight, bias)
        if folding:
            # Compiled, a version counter is a data-dependent value (torch 2.10 broke the graph on
            # comparing it): the very tensor is enough there, nothing runs between the two calls.
            self.last = (weakref.ref(y), None if torch.compiler.is_compiling() else y._version)
        if not torch.compiler.is_compiling() and not under_torch_func() and outermost:
            self.produced = (weakref.ref(y), y._version)  # nothing saved it: a ReLU may overwrite it
        return y


class _AfterConv(StandIn):
    """The ``forward`` of a module right after a lean convolution: a shortcut on that output (see subclasses).

    ``fresh``: ``x`` is the very tensor the convolution recorded, unchanged since; else ``plain``.
    """

    attr, layer = "forward", "lean"

    def __init__(self, module: nn.Module, conv: LeanConv) -> None:
        super().__init__(module)  # weakly: held in the module's own __dict__
        self.conv = conv

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.call_previous(x)

    @staticmethod
    def fresh(mark: tuple[weakref.ref, int | None] | None, x: torch.Tensor) -> bool:
        return mark is not None and mark[0]() is x and (mark[1] is None or x._version == mark[1])


class LeanNorm(LeanBatchNorm):
    """The ``forward`` of a BatchNorm folded into the convolution before it: identity on that output.

    Given anything else (the convolution did not fold, or was called outside its Sequential),
    it is a :class:`LeanBatchNorm`: the input gradient only, saving the per-channel scale.
    """

    def __init__(self, module: nn.Module, conv: LeanConv, root: nn.Module | None = None, path: str = "") -> None:
        super().__init__(module, root, path)
        self.conv = conv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if _AfterConv.fresh(self.conv.last, x):
            return x  # the convolution already applied this normalisation
        return super().__call__(x)


class LeanReLU(_AfterConv):
    """The ``forward`` of a ReLU right after a lean convolution (and its folded norm): in place on that output.

    Nobody saved the convolution's output (its backward keeps the weight, torch's own
    convolution its input), so the ReLU overwrites it: one allocation and write less per
    block (benchmarks' middle: 0.931x instead of 0.940x the ideal, quiet machine). Not
    while a hook could hold it (a forward hook or pre-hook on any of the modules, or a
    global one): a tensor a hook kept would change under it.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Overwritten only where nobody else can hold it: called by the parent Sequential's own
        # forward (its loop variable is rebound at once), with no other reference (sequence.py).
        if (
            self.fresh(self.conv.produced, x)  # never under compile: it traces no refcount
            and sys.getrefcount(x) <= references_in_sequence()
            and not self._watched()
            and in_sequence(self.conv.parent())
        ):
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
