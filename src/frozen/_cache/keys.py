"""Keys of cached samples: a content hash per batch row of a call's inputs.

A cached part is a deterministic function of its inputs, so one sample's output is
named by the sample's inputs: every tensor argument (positional and keyword) is split
along dimension 0, each row is hashed with BLAKE2b (128-bit digest) over its bytes,
shape and dtype, and the row digests of all arguments plus the call's other arguments
(non-batch tensors hashed whole, plain Python scalars by value) and the autocast state
make the sample's key. Arguments named in ``frozen.cache(..., shared=)`` are hashed whole
even when their dimension 0 equals the batch size (a causal mask as long as the batch).
At 128 bits a collision needs ~2**64 distinct samples: not a practical concern, and
unlike an explicit sample-id API it cannot be wrong when augmentation changes a sample.

The rows' bytes -- the only large input -- are hashed with SHA-256 (truncated to 128 bits)
or BLAKE2b, whichever this machine runs faster, timed once per process: with the SHA
instructions of current x86 and ARM cores SHA-256 hashes 1.7 GB/s against BLAKE2b's
0.9 GB/s (2-core AMD EPYC), without them it is the slower one. Both are collision
resistant; the name of the one used is hashed into every row digest, so the two never
confuse rows. Keys live in one process only (the stores are not persistent).

Tensors returned by a cache carry *derived* keys (a hash of the producing call's key),
kept in a small identity memo; the next cached part that receives such a tensor
unchanged (same object and storage, same ``_version``) reuses them instead of hashing its bytes,
which makes a chain of cached layers cost one hash per step.

Inside ``handle.samples(ids)`` the caller names the samples instead: each row's key is
its id's digest (plus the call's other arguments and the batched tensors' row shapes and
dtypes), and no input byte is read -- no device-to-host copy of a batch on a GPU.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Callable, Collection
from typing import Any

import torch

from .._core import same_tensor, tensor_entry
from .._errors import FrozenError

__all__ = ["CacheError", "CallKeys", "call_keys", "derive", "remember", "forward_parameters", "row_hash", "sample_keys"]

_DIGEST = 16
_STATIC = (type(None), bool, int, float, str, torch.dtype, torch.device)
_MEMO: dict[int, tuple[tuple[Any, ...], list[bytes]]] = {}
_WHOLE: dict[int, tuple[tuple[Any, ...], bytes]] = {}  # digests of whole (non-batch) tensors
_MEMO_SIZE = 256
_ROW_HASHES = ("sha256", "blake2b")
_row_hash: str | None = None  # chosen by row_hash() at the first row digest


def row_hash(force: str | None = None) -> str:
    """The ``hashlib`` algorithm that hashes rows: the faster here of SHA-256 and BLAKE2b.

    Timed once, on first use, over 256 KiB (best of three, well under a millisecond).
    ``force`` sets it instead (tests; ``None`` keeps or measures the choice).
    """
    global _row_hash
    if force is not None:
        _row_hash = force
    if _row_hash is None:
        sample = bytes(256 * 1024)
        timings = {}
        for name in _ROW_HASHES:
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                hashlib.new(name, sample).digest()
                best = min(best, time.perf_counter() - start)
            timings[name] = best
        _row_hash = min(_ROW_HASHES, key=timings.__getitem__)
    return _row_hash


class CacheError(FrozenError):
    """A part cannot be cached: not frozen, not batch-separable, or its inputs need gradients."""


class CallKeys:
    """The per-sample keys of one call, and where its batched tensors are."""

    def __init__(self, batch: int, keys: list[bytes], batched: list[tuple[int | str, torch.Tensor]]) -> None:
        self.batch = batch
        self.keys = keys
        self.batched = batched  # (position or keyword name, tensor) of the arguments split along dim 0


def _row_digests(tensor: torch.Tensor, rows: int) -> list[bytes]:
    """128-bit digest of each row of ``tensor`` (dim 0), over dtype, row shape and bytes (see :func:`row_hash`)."""
    found = _MEMO.get(id(tensor))
    if found is not None and same_tensor(found[0], tensor):
        return found[1]
    flat = tensor.detach().cpu().contiguous().reshape(rows, -1)
    if flat.dtype is torch.bool:
        flat = flat.to(torch.uint8)
    data = flat.view(torch.uint8).numpy() if flat.numel() else None
    algorithm = row_hash()
    # the argument's own dtype: a bool row is hashed as bytes, like a uint8 row it must not match
    head = hashlib.new(algorithm, f"{algorithm};{tensor.dtype}{tuple(tensor.shape[1:])};".encode())
    digests = []
    for i in range(rows):
        h = head.copy()
        if data is not None:
            h.update(memoryview(data[i]))
        digests.append(h.digest()[:_DIGEST])
    return digests


def _whole_digest(tensor: torch.Tensor) -> bytes:
    """BLAKE2b digest of a whole tensor (an argument that is not split by sample).

    Memoised by identity like row digests: a model passes the same tensor (GPT-2's
    ``position_ids``) to every cached block of a step, and on a GPU each hash is a copy
    to the host that waits for the card -- once per step instead of once per block.
    """
    found = _WHOLE.get(id(tensor))
    if found is not None and same_tensor(found[0], tensor):
        return found[1]
    flat = tensor.detach().cpu().contiguous().reshape(1, -1)
    digest = hashlib.blake2b(f"{tuple(tensor.shape)}".encode() + b"".join(_row_digests(flat, 1))).digest()
    _memo_put(_WHOLE, tensor, digest)
    return digest


def sample_keys(ids: Any) -> list[bytes]:
    """One digest per sample id; ``ids`` is a 1-D integer tensor or a sequence of ints, strings or bytes.

    Raises:
        frozen.CacheError: ``ids`` is of another kind.
    """
    values = ids.tolist() if isinstance(ids, torch.Tensor) and ids.dim() == 1 and not ids.is_floating_point() else ids
    if not isinstance(values, list | tuple | range) or not all(
        isinstance(v, int | str | bytes) and not isinstance(v, bool) for v in values
    ):
        shown = f"a tensor of shape {tuple(ids.shape)} and dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else ids
        raise CacheError(
            f"handle.samples(ids): expected one id per sample of the batch -- a 1-D integer tensor or a list of "
            f"ints, strings or bytes (e.g. the dataset indices of the batch); got {shown!r:.200}."
        )
    return [
        hashlib.blake2b(f"{type(v).__name__}:{v!r}".encode(), digest_size=_DIGEST, person=b"frozen-id").digest()
        for v in values
    ]


def _check_arguments(named: list[tuple[int | str, Any]], where: str) -> None:
    """Refuse arguments a key cannot stand for: tensors that require grad, objects other than plain scalars."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            raise CacheError(
                f"frozen.cache: the part at {where!r} received argument {name!r} that requires grad; a cached part "
                f"must be a frozen prefix (its inputs constant). Cache a part earlier in the model; or, if the part "
                f"also runs on constant inputs (a perceptual loss's feature net on targets), cache it with "
                f"grad_inputs='pass' to run such calls plainly; or stop caching it: frozen.uncache(model, {where!r})."
            )
        if not isinstance(value, (torch.Tensor, *_STATIC)):
            raise CacheError(
                f"frozen.cache: the part at {where!r} received argument {name!r} of type {type(value).__name__}; "
                f"expected tensors and plain scalars only (a cache object, a list of tensors... cannot be keyed). "
                f"Pass such options as None (e.g. use_cache=False), or cache a smaller part."
            )


def _autocast_state(named: list[tuple[int | str, Any]]) -> bytes:
    """Whether (and to which dtype) autocast is on for the devices of the call's tensors.

    It changes what the part computes -- under ``torch.autocast`` a float32 part returns
    bfloat16 -- so an output stored outside autocast must not answer a call inside it.
    """
    kinds = sorted({value.device.type for _, value in named if isinstance(value, torch.Tensor)})
    on = [f"{kind}:{torch.get_autocast_dtype(kind)}" for kind in kinds if torch.is_autocast_enabled(kind)]
    return f"autocast={','.join(on)};".encode()


def forward_parameters(forward: Callable[..., Any]) -> tuple[list[str], set[str] | None]:
    """``forward``'s parameters (``self`` left out): those passed by position, in order, and every name.

    A call names a positional argument by its index (``call_keys``); the first list turns
    indices into parameter names. The set is ``None`` when any keyword is taken (``**kwargs``,
    or no signature to read). Parameters after ``*args`` have no position.
    """
    try:
        parameters = [p for p in inspect.signature(forward).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):  # no signature to read (a builtin)
        return [], None
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return positional, None
    return positional, {p.name for p in parameters if p.kind is not p.VAR_POSITIONAL}


def _context(named: list[tuple[int | str, Any]], batch: int, by_ids: bool, shared: Collection[int | str]) -> Any:
    """The hash of what every sample of the call shares: argument layout, non-batch tensors, scalars, autocast."""
    context = hashlib.blake2b(b"ids;" if by_ids else b"rows;", digest_size=_DIGEST)
    context.update(_autocast_state(named))
    for name, value in named:
        if isinstance(value, torch.Tensor):
            is_batched = name not in shared and value.dim() > 0 and value.shape[0] == batch
            context.update(f"{name}:{'rows' if is_batched else 'whole'};".encode())
            if is_batched and by_ids:  # the rows are not read: their shape and dtype stand in the key
                context.update(f"{value.dtype}{tuple(value.shape[1:])};".encode())
            elif not is_batched:
                context.update(_whole_digest(value))
        else:
            context.update(f"{name}={type(value).__name__}:{value!r};".encode())
    return context


def call_keys(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    where: str,
    ids: list[bytes] | None = None,
    shared: Collection[int | str] = frozenset(),
) -> CallKeys:
    """Return one key per sample of the call ``(*args, **kwargs)`` of the part at ``where``.

    The batch size is dimension 0 of the first tensor argument with at least one
    dimension; every tensor argument whose dimension 0 has that size is split by sample,
    other tensors and scalars are part of every sample's key. ``shared`` (positions and
    keyword names, see :func:`forward_parameters`) are never split. With ``ids`` (from
    :func:`sample_keys`) the batched tensors are not read: their row shapes and dtypes and
    the sample's id stand for their rows. The autocast state of the tensors' devices is in
    every key.

    Raises:
        frozen.CacheError: a tensor argument requires grad, an argument is neither a
            tensor nor a plain scalar, no argument is a batched tensor, or ``ids`` has
            another length than the batch.
    """
    named: list[tuple[int | str, Any]] = [*enumerate(args), *sorted(kwargs.items())]
    _check_arguments(named, where)
    tensors = [(n, a) for n, a in named if isinstance(a, torch.Tensor) and n not in shared]
    batch = next((t.shape[0] for _, t in tensors if t.dim() > 0), None)
    if batch is None:
        raise CacheError(
            f"frozen.cache: the part at {where!r} received no tensor with a batch dimension (dimension 0)"
            f"{' other than its shared arguments' if shared else ''}; expected the batch first in at least one "
            f"tensor argument. Cache a part that takes batches."
        )
    if ids is not None and len(ids) != batch:
        raise CacheError(
            f"frozen.cache: handle.samples(ids) gave {len(ids)} ids, but the part at {where!r} received a batch of "
            f"{batch}; expected one id per sample. Pass the ids of exactly the batch given to the model."
        )
    batched = [(n, t) for n, t in tensors if t.dim() > 0 and t.shape[0] == batch]
    context = _context(named, batch, ids is not None, shared)
    per_argument = [ids] if ids is not None else [_row_digests(t, batch) for _, t in batched]
    keys = []
    for i in range(batch):
        h = context.copy()
        for digests in per_argument:
            h.update(digests[i])
        keys.append(h.digest())
    return CallKeys(batch, keys, batched)


def derive(token: bytes, keys: list[bytes], leaf: int) -> list[bytes]:
    """Keys of the rows of output ``leaf`` of a call whose samples have ``keys`` (``token``: the part's state)."""
    prefix = token + leaf.to_bytes(4, "little")
    return [hashlib.blake2b(prefix + k, digest_size=_DIGEST, person=b"frozen-out").digest() for k in keys]


def remember(tensor: torch.Tensor, keys: list[bytes]) -> None:
    """Record ``keys`` as the row keys of ``tensor`` while it lives unchanged."""
    _memo_put(_MEMO, tensor, keys)


def _memo_put(memo: dict[int, tuple[tuple[Any, ...], Any]], tensor: torch.Tensor, value: Any) -> None:
    if len(memo) >= _MEMO_SIZE:
        # Drop the oldest half: memo entries only save hashing, they are never needed.
        for stale in list(memo)[: _MEMO_SIZE // 2]:
            del memo[stale]
    memo[id(tensor)] = (tensor_entry(tensor), value)
