"""What makes a computed output unfit to replay: random draws, and rows that depend on other rows.

**Random draws.** A frozen part that samples in inference (a VAE encoder returning a
posterior sample, noise layers) is not a function of its inputs; cached, it replayed its
first draw forever. torch's default generators are process-wide, so their state compared
around the part's computation (:func:`generator_marks`, a few microseconds, misses only)
also moves when *another thread* draws meanwhile -- a data-augmentation or prefetch
thread -- and the part was refused for it. So a moved state is only a suspicion: the part
runs once more under a dispatch mode that records, on this thread only (dispatch modes
are thread-local), whether an operation drew from a default generator
(:func:`draws_randomly`). Draws from a generator the part creates or is given are not
counted, as before.

**Rows that depend on each other.** A cached row was computed in another batch than the
one it is replayed into, so row ``i`` of a part's output must depend on row ``i`` of its
inputs only. Batch centring (``x - x.mean(0)``), attention across the batch dimension, a
mixture-of-experts layer with a capacity per batch, any statistic over the batch break
that, and the cache replayed rows computed with other companions -- no error, no warning.
:func:`check_rows` runs the part's first filling call once more on the first half of its
batch and compares those rows (tolerances wide enough for kernels whose blocking depends
on the batch size, far below what a batch statistic changes); ``frozen.cache(...,
verify=False)`` skips it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .args import CacheError
from .digest import host_bytes
from .out import flatten
from .table import index_now

__all__ = ["check_rows", "draws_randomly", "generator_marks"]

# Relative to the rows' largest value: wide enough for TF32 convolutions and half-precision kernels whose
# blocking (and so rounding) depends on the batch size, far below what a statistic over the batch changes.
_TOLERANCE = {torch.float16: 5e-2, torch.bfloat16: 5e-2}
_FLOAT_TOLERANCE = 1e-2


def generator_marks(devices: set[torch.device]) -> list[bytes]:
    """The state of torch's default CPU generator and each CUDA device's generator, as bytes (host reads)."""
    cuda = sorted(
        {d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"}
    )
    states = [torch.default_generator.get_state(), *(torch.cuda.get_rng_state(i) for i in cuda)]
    return [host_bytes(state) for state in states]


class _Draws(TorchDispatchMode):
    """Records whether an operation on this thread drew from a default generator (no ``generator=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.drew = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if torch.Tag.nondeterministic_seeded in func.tags and kwargs.get("generator") is None:
            self.drew = True
        return func(*args, **kwargs)


def draws_randomly(forward: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``forward(*args, **kwargs)`` draws from a default generator, on this thread.

    Asked only once the generators' state moved around a computation: the part runs again,
    watched, so that another thread's draws at the same time are not taken for the part's.
    """
    with torch.no_grad(), _Draws() as watched:
        forward(*args, **kwargs)
    return watched.drew


def _agree(half: torch.Tensor, whole: torch.Tensor) -> bool:
    if not half.is_floating_point() and not half.is_complex():
        return torch.equal(half, whole)
    scale = float(whole.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if whole.numel() else 0.0
    tolerance = _TOLERANCE.get(whole.dtype, _FLOAT_TOLERANCE)
    return torch.allclose(half, whole, rtol=tolerance, atol=tolerance * scale, equal_nan=True)


def check_rows(part: Any, args: tuple, kwargs: dict, names: list[int | str], leaves: list[torch.Tensor]) -> bool:
    """Check that the first half of the batch, run alone, gives the same rows as in the whole batch.

    ``part`` is the cached part (``forward``, ``path``), ``names`` the arguments split by
    sample, ``leaves`` the whole batch's outputs. Returns whether the check is done (it is
    not when the half batch cannot run at all -- an argument split by sample that all
    samples share: the error a mixed batch then raises names the ``shared=`` fix).

    Raises:
        frozen.CacheError: the rows differ; nothing was stored.
    """
    batch = len(leaves[0]) if leaves else 0
    half = np.arange(max(batch // 2, 1), dtype=np.int64)
    positional, named = list(args), dict(kwargs)
    for name in names:
        source = positional if isinstance(name, int) else named
        source[name] = source[name].index_select(0, index_now(half, source[name].device))  # type: ignore[index]
    try:
        with torch.no_grad():
            alone = part.forward(*positional, **named)
        _, rows = flatten(alone, len(half), part.path)
    except Exception:  # noqa: BLE001 -- it cannot run on part of the batch: nothing to compare
        return True
    for index, (mine, theirs) in enumerate(zip(rows, leaves, strict=True)):
        if not _agree(mine, theirs[: len(half)]):
            raise CacheError(
                f"frozen.cache: the part at {part.path!r} is not row-separable: row i of its output depends on "
                f"other rows of the batch (output tensor {index}: the first {len(half)} samples run alone give "
                f"other values than in the batch of {batch}) -- batch centring, attention across the batch, a "
                f"batch statistic. A cached row would be replayed into batches it was not computed with. Cache a "
                f"part that ends before that operation, or do not cache it: frozen.uncache(model, {part.path!r}). "
                f"If the difference is only the rounding of batch-size-dependent kernels, pass "
                f"frozen.cache(..., verify=False)."
            )
    return True
