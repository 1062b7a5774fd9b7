"""One table of stored outputs: contiguous slots per output leaf, a key-to-slot index, least-recently-used eviction.

A cached part's outputs for one call context (same argument layout, so same output row
shapes) live in a :class:`Table`: for each tensor of the output, one preallocated buffer of
``capacity`` rows (on the device, in pinned or plain CPU memory, or in a memory-mapped
file), so a hit is one gather (``index_select``) per output tensor and a fill one scatter
(``index_copy_``), whatever the batch size. Before, each sample was an entry of its own: a
fill copied every row of every output separately (12 / 132 operations at batch 8 / 128 for
one part, each a kernel launch on a GPU) and a hit stacked rows one by one.

The bookkeeping -- which key sits in which slot, when each slot was last used, which slots
to evict -- is host-side numpy over whole batches (no Python loop per sample): content keys
are 16-byte strings in a dict looked up with ``map`` (C speed); sample ids index a dense
array. Eviction is least recently used, taken from a queue of the oldest slots that is
refilled (one ``argpartition``) only when it runs dry, so a full store costs O(batch) per
call, not O(capacity). Buffers grow by doubling within the store's budget.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from typing import Any

import numpy as np
import torch

__all__ = ["Table", "index_now", "index_on"]

_FIRST = 64  # rows of a new table's first buffers, at least: four batches (a fill grows them rarely)
_DENSE = 1 << 27  # sample ids below this index a dense array; others (and digested ids) a dict


class Table:
    """Stored rows of one part under one call context: ``capacity`` slots per output tensor.

    Args:
        key: the store's key of the table (the part's prefix and the call context).
        by_ids: whether rows are keyed by sample ids (int64) or by content hashes (two uint64 lanes).
    """

    def __init__(self, key: bytes, by_ids: bool) -> None:
        self.key, self.by_ids = key, by_ids
        self.signature: Any = None  # (spec, ((row shape, dtype, device), ...)) of the stored outputs
        self.buffers: list[Any] = []  # per output tensor: a tensor, or (file, memmap) for "disk"
        self.row_bytes = 0
        self.capacity = self.top = self.count = 0  # slots; [0, top) used at least once; occupied
        self.last_used = np.zeros(0, np.int64)
        self.occupied = np.zeros(0, bool)
        self.owner: np.ndarray = np.zeros(0, np.int64 if by_ids else "V16")
        self.index: dict[Any, int] = {}
        self.dense = np.full(0, -1, np.int64)
        self.tick = 0
        self.queue = np.zeros(0, np.int64)  # oldest slots first, with their last use when queued
        self.queued = np.zeros(0, np.int64)

    # -- keys ---------------------------------------------------------------------------

    def _keys(self, rows: np.ndarray) -> Any:
        return rows if self.by_ids else np.ascontiguousarray(rows).view("V16").ravel()

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """The slot of each row's key (``-1``: not stored); found slots count as used now."""
        self.tick += 2  # this call's hits get the tick, its new rows the tick + 1: evicted last
        n = len(rows)
        if self.by_ids:
            if n and rows.min() >= 0 and rows.max() < len(self.dense):  # the usual case: dataset indices
                slots = self.dense[rows]
            else:
                inside = (rows >= 0) & (rows < len(self.dense))
                slots = np.full(n, -1, np.int64)
                slots[inside] = self.dense[rows[inside]]
                if self.index:
                    outside = ~inside
                    slots[outside] = np.fromiter(map(self.index.get, rows[outside].tolist(), repeat(-1)), np.int64)
        else:
            slots = np.fromiter(map(self.index.get, self._keys(rows).tolist(), repeat(-1)), np.int64, count=n)
        found = slots >= 0
        self.last_used[slots if found.all() else slots[found]] = self.tick
        return slots

    def insert(self, rows: np.ndarray, store: Any, protect: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Give slots to the keys of ``rows`` (all missing).

        Returns ``(slots, first, inverse)``: a slot per distinct key (``-1``: it did not fit,
        a budget smaller than the batch: the last keys of the batch are kept, as if stored
        one after the other), the row where each distinct key first occurs, and for each row
        the index of its key among the distinct ones. Keys repeated within the batch get one
        slot. ``protect``: never evict the rows this call found (they are read after this);
        without it, the caller has read them already.
        """
        keys = self._keys(rows)
        if len(set(keys.tolist())) == len(keys):  # the usual case, no sample twice: no sort
            distinct, first = keys, np.arange(len(keys))
            inverse = first
        else:
            unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            order = np.argsort(first, kind="stable")  # distinct keys in batch order
            distinct, first = unique[order], first[order]
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            inverse = rank[inverse.reshape(-1)]
        slots = self._take(len(distinct), store, self.tick if protect else self.tick + 1)
        stored = np.full(len(distinct), -1, np.int64)
        if len(slots):
            stored[len(distinct) - len(slots) :] = slots
        kept = distinct[len(distinct) - len(slots) :]
        self.owner[slots] = kept
        self.occupied[slots] = True
        self.last_used[slots] = self.tick + 1
        self.count += len(slots)
        if self.by_ids:
            dense = kept < _DENSE
            dense &= kept >= 0
            if dense.any():
                top = int(kept[dense].max()) + 1
                if top > len(self.dense):
                    grown = np.full(max(top, 2 * len(self.dense)), -1, np.int64)
                    grown[: len(self.dense)] = self.dense
                    self.dense = grown
                self.dense[kept[dense]] = slots[dense]
            if not dense.all():
                self.index.update(zip(kept[~dense].tolist(), slots[~dense].tolist(), strict=True))
        else:
            self.index.update(zip(kept.tolist(), slots.tolist(), strict=True))
        return stored, first, inverse

    # -- slots ----------------------------------------------------------------------------

    def _take(self, wanted: int, store: Any, limit: int) -> np.ndarray:
        """Up to ``wanted`` free slots, growing within the budget, then evicting slots last used before ``limit``."""
        if self.top + wanted > self.capacity:
            store.grow(self, max(self.top + wanted, 2 * self.capacity, _FIRST, 4 * wanted))
        fresh = min(wanted, self.capacity - self.top)
        slots = np.arange(self.top, self.top + fresh, dtype=np.int64)
        self.top += fresh
        if fresh < wanted:
            evicted = self._evict(wanted - fresh, limit)
            store.evictions += len(evicted)
            slots = np.concatenate([slots, evicted])
        return slots

    def _evict(self, wanted: int, limit: int) -> np.ndarray:
        """Free up to ``wanted`` least recently used slots last used before ``limit``; return them."""
        taken: list[np.ndarray] = []
        got = 0
        for _ in range(2):  # the queue as it is, then once refilled
            if not len(self.queue):
                self._refill(wanted - got, limit)
            queue = self.queue
            # still as old as when queued (not used since), still occupied, old enough
            usable = self.occupied[queue] & (self.last_used[queue] == self.queued) & (self.last_used[queue] < limit)
            picked = np.flatnonzero(usable)[: wanted - got]
            cut = picked[-1] + 1 if len(picked) and got + len(picked) == wanted else len(queue)
            self.queue, self.queued = queue[cut:], self.queued[cut:]
            victims = queue[picked]
            self.last_used[victims] = self.tick + 1  # taken now: never picked twice
            taken.append(victims)
            got += len(victims)
            if got == wanted:
                break
        victims = np.concatenate(taken)
        self._forget(victims)
        return victims

    def _refill(self, wanted: int, limit: int) -> None:
        """Queue the oldest slots last used before ``limit``: at least ``wanted``, up to an eighth of the table."""
        candidates = np.flatnonzero(self.occupied & (self.last_used < limit))
        size = min(len(candidates), max(wanted, self.capacity // 8))
        age = self.last_used[candidates] * self.capacity + candidates  # ties: the lower slot first
        if size < len(candidates):
            keep = np.argpartition(age, size - 1)[:size]
            candidates, age = candidates[keep], age[keep]
        self.queue = candidates[np.argsort(age)]
        self.queued = self.last_used[self.queue].copy()

    def _forget(self, slots: np.ndarray) -> None:
        keys = self.owner[slots]
        self.occupied[slots] = False
        self.count -= len(slots)
        if self.by_ids:
            dense = (keys >= 0) & (keys < len(self.dense))
            self.dense[keys[dense]] = -1
            deque(map(self.index.pop, keys[~dense].tolist()), maxlen=0)
        else:
            deque(map(self.index.pop, keys.tolist()), maxlen=0)

    def resize(self, capacity: int) -> None:
        """Grow the slot arrays to ``capacity`` (the store grows the buffers)."""
        extra = capacity - self.capacity
        self.last_used = np.concatenate([self.last_used, np.zeros(extra, np.int64)])
        self.occupied = np.concatenate([self.occupied, np.zeros(extra, bool)])
        self.owner = np.concatenate([self.owner, np.zeros(extra, self.owner.dtype)])
        self.capacity = capacity

    def reset(self) -> None:
        """Forget every stored row; keep the buffers (the next rows of the same shapes go there, no allocation)."""
        self.top = self.count = 0
        self.last_used[:] = 0
        self.occupied[:] = False
        self.index.clear()
        self.dense = np.full(0, -1, np.int64)
        self.queue = self.queued = np.zeros(0, np.int64)

    def nbytes(self) -> int:
        return self.count * self.row_bytes


_NOW: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # reused CPU index tensors, by length


def index_on(slots: np.ndarray, device: torch.device) -> torch.Tensor:
    """``slots`` as an int64 index tensor on ``device``: a pinned, non-blocking copy for a GPU (no wait)."""
    index = torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64))
    if device.type == "cpu":
        return index
    return index.pin_memory().to(device, non_blocking=True)


def index_now(slots: np.ndarray, device: torch.device) -> torch.Tensor:
    """:func:`index_on` for an index used at once and dropped (a gather, a scatter): on the CPU, no new tensor.

    A CPU index tensor of each length is kept and refilled through its numpy view: making a
    tensor from an array is an operation of its own (``lift_fresh``) under dispatch modes.
    """
    if device.type != "cpu":
        return index_on(slots, device)
    found = _NOW.get(len(slots))
    if found is None:
        if len(_NOW) >= 64:
            _NOW.clear()
        with torch.inference_mode(False):
            tensor = torch.empty(len(slots), dtype=torch.int64)
        found = _NOW[len(slots)] = (tensor, tensor.numpy())
    found[1][:] = slots
    return found[0]
