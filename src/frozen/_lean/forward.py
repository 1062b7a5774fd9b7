"""The forwards a lean middle puts on its modules: the lean convolution, and the shortcuts after it.

:func:`frozen.lean` (``_lean.py``) sets these as instance ``forward`` attributes. A
:class:`LeanConv` computes the convolution with a backward for the input only and, when
a frozen eval-mode BatchNorm follows it, with that norm folded in; the norm's
:class:`LeanNorm` then passes the output through, and a ReLU's :class:`LeanReLU`
overwrites it in place. Each holds its module weakly (``ModuleRef``): it lives in that
module's ``__dict__``.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

import torch
from torch import nn

from .._cache import Passthrough, observed_globally, watch_steps
from .._core import GuardedForward, ModuleRef, TensorState, under_torch_func
from ..distributed import sharded_sources, watch_loads
from .fold import InputGradConv, InputGradConvJvp, autocast_operands, fold, foldable, kept_by_producer, state_of

__all__ = ["LeanConv", "LeanNorm", "LeanReLU", "in_sequence"]


def _conv_args(conv: Any) -> tuple:
    return (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)


_SEQUENTIAL = nn.Sequential.forward.__code__
_CALLER: list[int] = []  # [frames from a stand-in's __call__ up to nn.Sequential.forward, references then]


class _Fresh:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty(0)  # a tensor only the Sequential's loop variable holds, as a convolution's output


class _Probe:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        frame: Any = sys._getframe(1)
        depth = 1
        while frame is not None and frame.f_code is not _SEQUENTIAL:
            frame, depth = frame.f_back, depth + 1
        _CALLER[:] = [depth, sys.getrefcount(x)]
        return x


def _calibrate() -> list[int]:
    """How a stand-in's ``__call__`` sees a call from ``nn.Sequential.forward``: frame depth, references to its input.

    Measured once on this interpreter and torch (both change how many frames and tuples a
    module call goes through), with a probe called exactly the way a lean stand-in is.
    """
    if not _CALLER:
        fresh, probe = nn.Module(), nn.Module()
        fresh.__dict__["forward"], probe.__dict__["forward"] = _Fresh(), _Probe()
        nn.Sequential(fresh, probe)(torch.empty(0))
    return _CALLER


def in_sequence(parent: Any, depth: int = 1) -> bool:
    """Whether the stand-in ``depth`` frames below the caller is called by ``nn.Sequential.forward`` (its ``parent``'s).

    Only there is a module's output handed to the next child alone and the variable holding
    it rebound at once. A loop over the children in user code (perceptual features of
    ``vgg.features`` kept as taps: before this check, the taps read ReLU(conv) and, folded,
    BatchNorm's output instead of the convolution's) keeps what each child returned. The
    frame's code object is compared, never its locals: reading ``f_locals`` makes the frame
    hold a reference to every local, the activations included.
    """
    if parent is None:
        return False
    try:
        frame = sys._getframe(_calibrate()[0] + depth)
    except ValueError:
        return False
    # lean() took only children used once in the model, so a Sequential's forward calling one is its parent's
    return frame.f_code is _SEQUENTIAL


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
        # Weak: this lives in conv's __dict__ (and the norm's stand-in holds it): no reference cycle
        self.conv_ref, self.norm_ref = ModuleRef(conv), ModuleRef(norm)
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
        # A fused optimizer step writes parameters without bumping their version: refold after one.
        watch_steps([p for m in ([conv] if norm is None else [conv, norm]) for p in m.parameters()], self.forget)
        self.parent = ModuleRef(None)  # the nn.Sequential the convolution and its norm sit in (set by lean)

    @property
    def conv(self) -> Any:
        return self.conv_ref()

    @property
    def norm(self) -> Any:
        return self.norm_ref()

    def forget(self) -> None:
        """Refold at the next call (after a ``load_state_dict`` of the convolution or its norm)."""
        self.state = None

    def __reduce__(self) -> tuple:
        return (Passthrough, (self.conv, self.own))

    def _decide(self) -> tuple[bool, bool, tuple[torch.Tensor, torch.Tensor | None]]:
        """``(plain, folding, (weight, bias))`` for the modules as they are now."""
        conv = self.conv
        plain = any(p.requires_grad for p in conv.parameters())
        norm = self.norm
        folding = not plain and norm is not None and foldable(norm) and not any(_watchers(conv, norm))
        return plain, folding, fold(conv, norm) if folding else (conv.weight, conv.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Folded, the convolution returns BatchNorm's output: only right when its parent Sequential
        # hands that output to the norm (a pass-through then) and to no one else.
        sequence = self.norm_ref() is not None and not torch.compiler.is_compiling() and in_sequence(self.parent())
        if isinstance(self.own, GuardedForward):  # the guard this replaced: its slots still detach
            return self.own.around(self._run, x, sequence)
        return self._run(x, sequence)

    def _run(self, x: torch.Tensor, sequence: bool = True) -> torch.Tensor:
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
            norm = self.norm
            tensors, flags = state_of(conv, norm) if norm is not None else state_of(conv)
            flags += _watchers(conv, norm) if norm is not None else ()
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
            self.last = (weakref.ref(y), y._version)
        if not torch.compiler.is_compiling() and not under_torch_func():
            self.produced = (weakref.ref(y), y._version)  # nothing saved it: a ReLU may overwrite it
        return y


class _AfterConv:
    """The ``forward`` of a module right after a lean convolution: a shortcut on that output (see subclasses).

    ``fresh``: ``x`` is the very tensor the convolution recorded, unchanged since; else ``plain``.
    """

    def __init__(self, module: nn.Module, conv: LeanConv) -> None:
        self.module_ref, self.conv = ModuleRef(module), conv  # weak: held in the module's own __dict__

    @property
    def module(self) -> Any:
        return self.module_ref()

    def __reduce__(self) -> tuple:
        return (Passthrough, (self.module,))

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        module = self.module
        return type(module).forward(module, x)

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
        # Overwritten only where nobody else can hold it: called by the parent Sequential's own
        # forward (its loop variable is rebound at once), no other reference (_calibrate).
        if (
            self.fresh(self.conv.produced, x)  # never under compile: it traces no refcount
            and sys.getrefcount(x) <= _calibrate()[1]
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
