"""Where cached samples live: on the device, in CPU memory, or in a memory-mapped file.

Every store holds entries (one sample's output rows) under a byte budget and evicts the
least recently used entries to make room. An entry larger than the whole budget is not
stored (the sample is recomputed each time it is seen).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import OrderedDict
from typing import Any

import torch

from .._errors import FrozenError

__all__ = ["STORES", "Store", "parse_budget"]

STORES = ("device", "cpu", "disk")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_ALIGN = 64  # offsets in the file are aligned so that every dtype can view its bytes


def parse_budget(budget: object) -> int:
    """Return ``budget`` in bytes: an int, or a string such as ``"2GB"``, ``"512MiB"``.

    Example:
        >>> parse_budget("1.5KiB"), parse_budget(10**6)
        (1536, 1000000)
    """
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        return budget
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", budget) if isinstance(budget, str) else None
    if match and match.group(2).lower() in _UNITS and float(match.group(1)) > 0:
        return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise FrozenError(
        f"frozen.cache(..., budget={budget!r}): expected a positive number of bytes (int) or a string such as "
        f"'2GB', '512MiB'. Pass e.g. budget='1GB'."
    )


class Store:
    """Entries ``key -> rows`` (a tuple of tensors) within ``budget`` bytes, least recently used evicted.

    Args:
        kind: ``"device"`` (rows stay where the part computed them), ``"cpu"`` or ``"disk"``.
        budget: the most bytes the entries may take.
        directory: for ``"disk"``, the directory of the memory-mapped file (a temporary one if ``None``).
    """

    def __init__(self, kind: str, budget: int, directory: str | None = None) -> None:
        self.kind = kind
        self.budget = budget
        self.nbytes = 0
        self.evictions = 0
        self._entries: OrderedDict[bytes, tuple[Any, int, Any]] = OrderedDict()
        self._file: tempfile._TemporaryFileWrapper | None = None
        self._map: Any = None  # a numpy.memmap once the disk store opens its file
        self._free: list[tuple[int, int]] = []  # (offset, size) of the free blocks of the file, by offset
        self._directory = directory

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> tuple[Any, tuple[torch.Tensor, ...]] | None:
        """Return ``(tag, rows)`` stored under ``key`` (most recently used now), or ``None``."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[2], (self._read(found[0]) if self.kind == "disk" else found[0])

    def stage(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        """``leaves`` on the device this store keeps rows on (host stores: the CPU), one move per leaf."""
        return leaves if self.kind == "device" else [leaf.detach().cpu() for leaf in leaves]

    def put(self, key: bytes, rows: tuple[torch.Tensor, ...], tag: Any = None) -> None:
        """Store copies of ``rows`` (and ``tag``) under ``key``, evicting old entries to stay within the budget."""
        size = sum(_padded(r.numel() * r.element_size()) for r in rows)
        if key in self._entries or size > self.budget:
            return
        while self._entries and self.nbytes + size > self.budget:
            self._evict()
        if self.kind == "disk":
            meta = self._write(rows, size)
            while meta is None and self._entries:  # fragmented: free more until a block fits
                self._evict()
                meta = self._write(rows, size)
            if meta is None:
                return
        else:
            device = "cpu" if self.kind == "cpu" else None
            meta = tuple(r.detach().to(device, copy=True) for r in rows)
        self._entries[key] = (meta, size, tag)
        self.nbytes += size

    def drop(self, keep: Any = None) -> None:
        """Remove every entry (or, with ``keep``, those whose key ``keep(key)`` rejects)."""
        for key in [k for k in self._entries if keep is None or not keep(k)]:
            meta, size, _ = self._entries.pop(key)
            self._release(meta)
            self.nbytes -= size

    def close(self) -> None:
        """Drop every entry and delete the memory-mapped file, if any."""
        self.drop()
        self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def _evict(self) -> None:
        _, (meta, size, _) = self._entries.popitem(last=False)
        self._release(meta)
        self.nbytes -= size
        self.evictions += 1

    def _release(self, meta: Any) -> None:
        if self.kind == "disk":
            for offset, size, _, _ in meta:
                self._give_back(offset, size)

    def _open(self) -> Any:
        import numpy as np  # only the disk store needs it: `import frozen` works without numpy

        if self._map is None:
            self._file = tempfile.NamedTemporaryFile(prefix="frozen-cache-", suffix=".bin", dir=self._directory)
            os.truncate(self._file.name, self.budget)
            self._map = np.memmap(self._file.name, dtype=np.uint8, mode="r+", shape=(self.budget,))
            self._free = [(0, self.budget)]
        return self._map

    def _write(self, rows: tuple[torch.Tensor, ...], size: int) -> tuple | None:
        memory = self._open()
        start = self._take(size)
        if start is None:
            return None
        import numpy as np

        meta, offset = [], start
        for row in rows:
            flat = row.detach().cpu().contiguous().reshape(-1)
            data = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
            memory[offset : offset + data.size] = data
            meta.append((offset, _padded(data.size), row.dtype, tuple(row.shape)))
            offset += _padded(data.size)
        return tuple(meta)

    def _read(self, meta: tuple) -> tuple[torch.Tensor, ...]:
        import numpy as np

        assert self._map is not None
        rows = []
        for offset, _size, dtype, shape in meta:
            count = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            raw = torch.from_numpy(np.asarray(self._map[offset : offset + count]))
            rows.append(raw.view(dtype).reshape(shape).clone())  # a later put may reuse these bytes
        return tuple(rows)

    def _take(self, size: int) -> int | None:
        for i, (offset, free) in enumerate(self._free):
            if free >= size:
                self._free[i : i + 1] = [(offset + size, free - size)] if free > size else []
                return offset
        return None

    def _give_back(self, offset: int, size: int) -> None:
        blocks = sorted([*self._free, (offset, size)])
        merged: list[tuple[int, int]] = []
        for start, length in blocks:  # coalesce neighbours so large entries fit again
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((start, length))
        self._free = merged


def _padded(nbytes: int) -> int:
    return max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
