"""Whether a lean stand-in was called by its parent ``nn.Sequential``'s own ``forward``.

A lean convolution's shortcuts on its output (the folded norm passing it through, a ReLU
overwriting it in place) are right only where nobody else can see that output: inside
``nn.Sequential.forward``, which hands each child's output to the next child alone and
rebinds its loop variable at once. A loop over the children in user code (perceptual
features of ``vgg.features`` kept as taps) keeps what each child returned: there the taps
read ReLU(conv) -- and, folded, BatchNorm's output -- instead of the convolution's.

The caller's frame is found by its code object, never by its locals: reading ``f_locals``
makes the frame hold a reference to every local, the activations included.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from .._core import StandIn, install

__all__ = ["in_sequence", "references_in_sequence"]

_SEQUENTIAL = nn.Sequential.forward.__code__
_CALLER: list[int] = []  # [frames from a stand-in's __call__ up to nn.Sequential.forward, references then]


class _Fresh(StandIn):
    layer = "lean"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.empty(0)  # a tensor only the Sequential's loop variable holds, as a convolution's output


class _Probe(StandIn):
    layer = "lean"

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
        install(fresh, _Fresh(fresh))
        install(probe, _Probe(probe))
        nn.Sequential(fresh, probe)(torch.empty(0))
    return _CALLER


def references_in_sequence() -> int:
    """How many references a child's input has when ``nn.Sequential.forward`` alone holds it (see ``_calibrate``)."""
    return _calibrate()[1]


def in_sequence(parent: Any, depth: int = 1) -> bool:
    """Whether the stand-in ``depth`` frames below the caller is called by ``nn.Sequential.forward`` (its ``parent``'s).

    ``parent`` is the Sequential :func:`frozen.lean` found the module in (``None``: none).
    """
    if parent is None:
        return False
    try:
        frame = sys._getframe(_calibrate()[0] + depth)
    except ValueError:
        return False
    # lean() took only children used once in the model, so a Sequential's forward calling one is its parent's
    return frame.f_code is _SEQUENTIAL
