"""Keys of cached samples: what every sample of a call shares, and one 128-bit key per row.

A cached part is a deterministic function of its inputs, so one sample's output is named
by the sample's inputs. A call's key has two halves:

* the *context* -- what every sample of the call shares: the argument layout (which
  argument is split by sample, each one's dtype and row shape), the tensors not split by
  sample, plain scalars, the autocast state -- a BLAKE2b digest computed on the host from
  metadata, once per call. It selects the part's table of stored rows (one per context:
  rows of one table have one output shape, so they stack);
* the *rows* -- one key per sample: content keys hash every split argument's rows where
  they are (``digest.hash_rows``: four tensor operations per argument, whatever the batch
  size, and one small copy of the ``(batch, 2)`` hashes to the host); with sample ids
  (``handle.samples(ids)``) the ids themselves, read on the host, no tensor touched.

Tensors not split by sample are remembered by identity (same object, same storage, same
``_version``): GPT-2 passes one ``position_ids`` tensor to every block of a step, and it is
digested once. A tensor on the host is digested by content; one on a device either folds
its device hash into the rows' hashes (content keys: no extra copy) or, with sample ids or
when no row is hashed on the device, is copied to the host once per tensor object -- the
one synchronisation a step with ids can have: pass such a tensor as the same object each
step (``position_ids=``) and it has none. Arguments named in ``frozen.cache(..., shared=)``
are never split.

Tensors returned by a cached part carry *derived* keys (a scramble of the producing call's
keys, ``derive``), kept in a small identity memo: the next cached part that receives such a
tensor unchanged uses them instead of hashing it -- a chain of cached layers hashes once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import numpy as np
import torch

from .._core import same_tensor, tensor_entry
from .args import CacheError as CacheError
from .args import check_arguments
from .digest import hash_rows, host_u64, lanes, mix

__all__ = [
    "CacheError",
    "CallKeys",
    "SampleIds",
    "call_keys",
    "derive",
    "remember",
    "row_hash",
    "sample_keys",
]

_DIGEST = 16
_MEMO: dict[int, tuple[tuple[Any, ...], np.ndarray]] = {}  # derived row keys of cached outputs
_WHOLE: dict[int, tuple[tuple[Any, ...], bytes]] = {}  # host digests of whole (non-batch) tensors
_WHOLE_DEVICE: dict[int, tuple[tuple[Any, ...], torch.Tensor]] = {}  # device hashes of whole tensors
_MEMO_SIZE = 256
ROW_HASH = "multilinear-2x64"  # the row hash (digest.py); its name is part of every context


def row_hash() -> str:
    """The name of the hash content keys use (``digest.hash_rows``), part of every key's context."""
    return ROW_HASH


class SampleIds:
    """The ids of one ``handle.samples(ids)`` block: an int64 array and what kind of ids they are."""

    __slots__ = ("kind", "values")

    def __init__(self, values: np.ndarray, kind: str) -> None:
        self.values, self.kind = values, kind

    def __len__(self) -> int:
        return len(self.values)


class CallKeys:
    """The keys of one call: its context digest (which table), one key per row, where its batched tensors are.

    ``rows`` is a ``(batch, 2)`` uint64 array of content hashes, or a ``(batch,)`` int64
    array of sample ids (``by_ids``).
    """

    __slots__ = ("batch", "batched", "by_ids", "context", "rows")

    def __init__(
        self, batch: int, context: bytes, rows: np.ndarray, batched: list[tuple[int | str, torch.Tensor]], by_ids: bool
    ) -> None:
        self.batch, self.context, self.rows, self.batched, self.by_ids = batch, context, rows, batched, by_ids

    @property
    def keys(self) -> list[bytes]:
        """One 16-byte key per sample (the row key scrambled with the context): for inspection and tests."""
        rows = self.rows if not self.by_ids else np.stack([self.rows.view(np.uint64)] * 2, axis=1)
        return np.ascontiguousarray(mix(rows, lanes(self.context))).view("V16").ravel().tolist()


def sample_keys(ids: Any) -> SampleIds:
    """The ids of a batch: a 1-D integer tensor (read on the host) or a list of ints, strings or bytes.

    Integer ids stay integers (a table indexed by id, no per-sample work); strings and bytes
    are digested one by one into 63-bit integers (a separate kind, so they never meet ints).

    Raises:
        frozen.CacheError: ``ids`` is of another kind.
    """
    if isinstance(ids, torch.Tensor) and ids.dim() == 1 and not ids.is_floating_point() and not ids.is_complex():
        host = ids if ids.device.type == "cpu" else ids.cpu()  # give ids on the host: a device copy waits
        if host.dtype == torch.int64:  # read through the pointer: Tensor.numpy() dispatches an operation
            return SampleIds(host_u64(host).view(np.int64), "int")
        return SampleIds(host.numpy().astype(np.int64), "int")
    if isinstance(ids, list | tuple | range):
        values = list(ids)
        if all(type(v) is int for v in values):
            try:
                return SampleIds(np.asarray(values, dtype=np.int64).reshape(len(values)), "int")
            except OverflowError:
                pass  # an id beyond 64 bits: digested below
        if all(isinstance(v, int | str | bytes) and not isinstance(v, bool) for v in values):
            digests = [
                hashlib.blake2b(f"{type(v).__name__}:{v!r}".encode(), digest_size=8, person=b"frozen-id").digest()
                for v in values
            ]
            array = np.frombuffer(b"".join(digests), dtype=np.int64) & np.int64(2**63 - 1)
            return SampleIds(array.reshape(len(values)), "digest")
    shown = f"a tensor of shape {tuple(ids.shape)} and dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else ids
    raise CacheError(
        f"handle.samples(ids): expected one id per sample of the batch -- a 1-D integer tensor or a list of "
        f"ints, strings or bytes (e.g. the dataset indices of the batch); got {shown!r:.200}."
    )


def _memo_get(memo: dict[int, tuple[tuple[Any, ...], Any]], tensor: torch.Tensor) -> Any:
    found = memo.get(id(tensor))
    return found[1] if found is not None and same_tensor(found[0], tensor) else None


def _memo_put(memo: dict[int, tuple[tuple[Any, ...], Any]], tensor: torch.Tensor, value: Any) -> None:
    if len(memo) >= _MEMO_SIZE:
        # Drop the oldest half: memo entries only save hashing, they are never needed.
        for stale in list(memo)[: _MEMO_SIZE // 2]:
            del memo[stale]
    memo[id(tensor)] = (tensor_entry(tensor), value)


def _row_digests(tensor: torch.Tensor, rows: int, salt: bytes = b"") -> np.ndarray:
    """``(rows, 2)`` uint64 content hashes of ``tensor``'s rows, on the host (a copy from a device waits)."""
    return host_u64(hash_rows(tensor, rows, salt or f"{tensor.dtype}{tuple(tensor.shape[1:])}".encode()))


def _whole_digest(tensor: torch.Tensor) -> bytes:
    """Host digest of a whole tensor (an argument that is not split by sample), memoised by identity.

    A model passes the same tensor (GPT-2's ``position_ids``) to every cached block of a
    step: digested once, not once per block -- on a device, one copy of 16 bytes to the host.
    """
    found = _memo_get(_WHOLE, tensor)
    if found is not None:
        return found
    flat = tensor.reshape(1, -1)
    digest = f"{tensor.dtype}{tuple(tensor.shape)}".encode() + _row_digests(flat, 1).tobytes()
    _memo_put(_WHOLE, tensor, digest)
    return digest


def _whole_on_device(tensor: torch.Tensor, salt: bytes) -> torch.Tensor:
    """``(1, 2)`` device hash of a whole tensor, to fold into the rows' hashes without a copy to the host."""
    found = _memo_get(_WHOLE_DEVICE, tensor)
    if found is None:
        found = hash_rows(tensor.reshape(1, -1), 1, salt)
        _memo_put(_WHOLE_DEVICE, tensor, found)
    return found


def call_keys(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    where: str,
    ids: SampleIds | None = None,
    shared: Collection[int | str] = frozenset(),
) -> CallKeys:
    """Return the keys of the call ``(*args, **kwargs)`` of the part at ``where``.

    The batch size is dimension 0 of the first tensor argument with at least one
    dimension; every tensor argument whose dimension 0 has that size is split by sample
    (except ``shared``: positions and keyword names, see ``args.forward_parameters``), other
    tensors and scalars are in the context. With ``ids`` (from :func:`sample_keys`) the
    batched tensors are not read: their row shapes and dtypes stand in the context.

    Raises:
        frozen.CacheError: a tensor argument requires grad, an argument is neither a
            tensor nor a plain scalar, no argument is a batched tensor, or ``ids`` has
            another length than the batch.
    """
    named: list[tuple[int | str, Any]] = [*enumerate(args), *sorted(kwargs.items())]
    check_arguments(named, where)
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
    split = {id(t) for _, t in batched}
    kinds = sorted({a.device.type for _, a in named if isinstance(a, torch.Tensor)})
    # What the context digest covers, as a hashable layout: digested once per layout, not at every call. The
    # autocast state is in it: under torch.autocast a float32 part returns bfloat16, so an output stored
    # outside autocast must not answer a call inside it.
    layout: list[Any] = [ids.kind if ids is not None else "rows"]
    layout += [(kind, torch.get_autocast_dtype(kind)) for kind in kinds if torch.is_autocast_enabled(kind)]
    device_rows: torch.Tensor | None = None
    host_rows: list[np.ndarray] = []
    by_content = ids is None and batch > 0
    hashed = by_content and any(_memo_get(_MEMO, t) is None for _, t in batched)
    device = next((t.device for _, t in batched), None)
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            layout.append((name, type(value), repr(value) if isinstance(value, float) else value))
            continue
        if id(value) in split:
            layout.append((name, "rows", value.dtype, value.shape[1:]))
            if not by_content:
                continue  # the ids stand for the rows (an empty batch has none)
            salt = _salt(name, value)
            derived = _memo_get(_MEMO, value)
            if derived is not None:  # a cached part's output: its keys, no hashing
                host_rows.append(mix(derived, lanes(salt)))
            else:
                hashed_rows = hash_rows(value, batch, salt)
                device_rows = hashed_rows if device_rows is None else device_rows + hashed_rows
        elif by_content and hashed and value.device.type != "cpu" and value.device == device:
            # folded into the rows' device hashes: no copy of its own to the host
            folded = _whole_on_device(value, _salt(name, value))
            device_rows = folded if device_rows is None else device_rows + folded
            layout.append((name, "folded", value.dtype, value.shape))
        else:
            layout.append((name, "whole", value.dtype, value.shape, _whole_digest(value)))
    digest = _context(tuple(layout))
    if ids is not None:
        return CallKeys(batch, digest, ids.values, batched, True)
    rows = np.zeros((batch, 2), dtype=np.uint64)
    if device_rows is not None:
        rows += host_u64(device_rows)
    for part in host_rows:
        rows += part
    return CallKeys(batch, digest, rows, batched, False)


_CONTEXTS: dict[tuple, bytes] = {}
_SALTS: dict[tuple, bytes] = {}


def _context(layout: tuple) -> bytes:
    """The 16-byte digest of a call's layout (what every sample shares), computed once per layout."""
    found = _CONTEXTS.get(layout)
    if found is None:
        if len(_CONTEXTS) >= 4096:
            _CONTEXTS.clear()
        found = _CONTEXTS[layout] = hashlib.blake2b(f"{ROW_HASH};{layout!r}".encode(), digest_size=_DIGEST).digest()
    return found


def _salt(name: int | str, tensor: torch.Tensor) -> bytes:
    """What tells an argument's rows apart from the same bytes elsewhere: its name, dtype and row shape."""
    key = (name, tensor.dtype, tensor.shape[1:])
    found = _SALTS.get(key)
    if found is None:
        if len(_SALTS) >= 4096:
            _SALTS.clear()
        found = _SALTS[key] = hashlib.blake2b(repr(key).encode(), digest_size=_DIGEST).digest()
    return found


def derive(token: bytes, keys: CallKeys, leaf: int) -> np.ndarray:
    """Row keys of output ``leaf`` of a call with ``keys`` (``token``: the part's state), for the next part."""
    salt = hashlib.blake2b(token + keys.context + leaf.to_bytes(4, "little"), digest_size=_DIGEST).digest()
    rows = keys.rows if not keys.by_ids else np.stack([keys.rows.view(np.uint64)] * 2, axis=1)
    return mix(rows, lanes(salt))


def remember(tensor: torch.Tensor, rows: np.ndarray) -> None:
    """Record ``rows`` as the row keys of ``tensor`` while it lives unchanged."""
    _memo_put(_MEMO, tensor, rows)
