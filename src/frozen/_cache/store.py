"""Where cached outputs live: on the device, in CPU memory, or in memory-mapped files, within one budget.

A :class:`Store` holds the :class:`~frozen._cache.table.Table` of every part and call
context of one :func:`frozen.cache` call, and the buffers behind them: per table and
output tensor, one contiguous buffer of rows -- where the part computed them
(``"device"``), in CPU memory (``"cpu"``; page-locked when the part runs on a GPU, so that
copies to and from the card need not wait), or in a memory-mapped file (``"disk"``, which
reads and writes whole batches of rows with numpy's fancy indexing). Buffers start at
``max(batch, 64)`` rows and double while the budget allows; beyond it a table evicts its
least recently used rows. A table that cannot hold a single row (a new call context once
the budget is spent) takes the room of the least recently used other table.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np
import torch

from .._errors import FrozenError
from .args import CacheError
from .table import Table, index_now

__all__ = ["STORES", "Store", "check_room", "parse_budget"]

STORES = ("device", "cpu", "disk")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


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


def check_room(kind: str, budget: int, directory: str | None, devices: set[torch.device], shown: object) -> None:
    """Refuse a budget the store can never hold, at ``cache()`` time (nothing changed yet).

    Before, ``store="disk", budget="1000TB"`` was accepted and the first forward failed with
    ``OSError: File too large``; a memory store grew until the allocator failed. The limits:
    the free space of the file system (``"disk"``), the machine's physical memory (``"cpu"``,
    and ``"device"`` for a part on the CPU), the card's memory (``"device"`` on a GPU).
    """
    if kind == "disk":
        where = directory or tempfile.gettempdir()
        room = shutil.disk_usage(where).free
        what, fix = f"the file system of {where!r} has {room / 1e9:.1f} GB free", "or path= a larger file system"
    else:
        places = {d if kind == "device" else torch.device("cpu") for d in devices} or {torch.device("cpu")}
        known = [(size, d) for d in places if (size := _memory(d)) is not None]
        if not known:
            return
        room, device = min(known, key=lambda pair: pair[0])
        what = f"{device} has {room / 1e9:.1f} GB of memory in all"
        fix = "or store='disk'" if kind == "cpu" else "or store='cpu' or 'disk'"
    if budget > room:
        raise CacheError(
            f"frozen.cache(..., store={kind!r}, budget={shown!r}): {what}, expected at least the budget "
            f"({budget / 1e9:.1f} GB). Pass a smaller budget, {fix}. Nothing was changed."
        )


def _memory(device: torch.device) -> int | None:
    """Bytes of memory ``device`` has in all (``None``: unknown here)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _close_files(files: list[Any]) -> None:
    for handle in files:
        handle.close()
    files.clear()


class Store:
    """The tables of one :func:`frozen.cache` call within ``budget`` bytes.

    Args:
        kind: ``"device"`` (rows stay where the part computed them), ``"cpu"`` or ``"disk"``.
        budget: the most bytes the buffers may take.
        directory: for ``"disk"``, the directory of the memory-mapped files (a temporary one if ``None``).
    """

    def __init__(self, kind: str, budget: int, directory: str | None = None) -> None:
        self.kind = kind
        self.budget = budget
        self.reserved = 0  # bytes of the buffers' capacity
        self.evictions = 0
        self._tables: dict[bytes, Table] = {}
        self._used: dict[bytes, int] = {}  # table key -> the store's clock at its last use
        self._clock = 0
        self._directory = directory
        self._files: list[Any] = []  # the temporary files of a "disk" store: closed (deleted) with it
        weakref.finalize(self, _close_files, self._files)

    def __len__(self) -> int:
        return sum(t.count for t in self._tables.values())

    @property
    def nbytes(self) -> int:
        """Bytes of the stored rows."""
        return sum(t.nbytes() for t in self._tables.values())

    def table(self, key: bytes, by_ids: bool) -> Table:
        """The table under ``key`` (a part's prefix and a call context), made empty if new."""
        self._clock += 1
        self._used[key] = self._clock
        found = self._tables.get(key)
        if found is None or found.by_ids is not by_ids:
            if found is not None:
                self._release(key)
            found = self._tables[key] = Table(key, by_ids)
        return found

    def drop(self, keep: Any = None) -> None:
        """Forget the rows of every table (or, with ``keep``, of those whose key ``keep(key)`` rejects).

        The buffers stay, within the budget: a part invalidated by a changed weight refills the
        same shapes, and allocating (and first touching) fresh buffers each time cost more than the
        rows' copies. :meth:`close` frees them.
        """
        for key, table in self._tables.items():
            if keep is None or not keep(key):
                table.reset()

    def close(self, keep: Any = None) -> None:
        """Free the buffers of every table (or of those ``keep`` rejects) and delete their memory-mapped files."""
        for key in [k for k in self._tables if keep is None or not keep(k)]:
            self._release(key)

    def tensors(self) -> list[torch.Tensor]:
        """The buffers of every table (tests: what the store keeps alive)."""
        return [b for t in self._tables.values() for b in t.buffers if isinstance(b, torch.Tensor)]

    def _release(self, key: bytes) -> None:
        table = self._tables.pop(key)
        self._used.pop(key, None)
        self.reserved -= table.capacity * table.row_bytes
        for buffer in table.buffers:
            if isinstance(buffer, tuple):
                buffer[0].close()  # the temporary file: deleted
                self._files.remove(buffer[0])
        table.buffers = []

    # -- buffers ------------------------------------------------------------------------

    def shape(self, table: Table, signature: Any, leaves: list[torch.Tensor]) -> Table:
        """``table`` ready for outputs of ``signature``; a new table if it held another signature."""
        if table.signature == signature:
            return table
        if table.signature is not None:
            self._release(table.key)
            table = self._tables[table.key] = Table(table.key, table.by_ids)
        table.signature = signature
        table.row_bytes = sum(leaf[0].numel() * leaf.element_size() if len(leaf) else 0 for leaf in leaves)
        table.row_bytes = max(table.row_bytes, 1)
        return table

    def grow(self, table: Table, wanted: int) -> None:
        """Grow ``table``'s buffers towards ``wanted`` rows, as far as the budget allows."""
        affordable = table.capacity + (self.budget - self.reserved) // table.row_bytes
        if affordable <= table.capacity and table.capacity == 0:
            self._steal(table)  # a table that cannot hold one row takes the oldest other table's room
            affordable = (self.budget - self.reserved) // table.row_bytes
        capacity = min(wanted, affordable)
        if capacity <= table.capacity:
            return
        self.reserved += (capacity - table.capacity) * table.row_bytes
        _, shapes = table.signature
        table.buffers = [self._resized(table, i, shape, capacity) for i, shape in enumerate(shapes)]
        table.resize(capacity)

    def _steal(self, table: Table) -> None:
        others = sorted((self._used.get(k, 0), k) for k, t in self._tables.items() if t is not table and t.capacity)
        for _, key in others:
            if self.reserved + table.row_bytes <= self.budget:
                return
            self.evictions += self._tables[key].count
            self._release(key)  # its part makes a new one at its next call

    def _resized(self, table: Table, index: int, shape: Any, capacity: int) -> Any:
        row_shape, dtype, device = shape
        old = table.buffers[index] if index < len(table.buffers) else None
        if self.kind == "disk":
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
            if old is None:
                handle = tempfile.NamedTemporaryFile(prefix="frozen-cache-", suffix=".bin", dir=self._directory)
                self._files.append(handle)
            else:
                handle = old[0]
            os.truncate(handle.name, max(capacity * row_bytes, 1))  # extends the file; its rows stay
            return handle, np.memmap(handle.name, dtype=np.uint8, mode="r+", shape=(capacity, row_bytes))
        where = device if self.kind == "device" else torch.device("cpu")
        pinned = self.kind == "cpu" and device.type == "cuda"
        with torch.inference_mode(False), torch.no_grad():
            buffer = torch.empty((capacity, *row_shape), dtype=dtype, device=where, pin_memory=pinned)
            if old is not None and table.top:
                buffer[: table.top].copy_(old[: table.top])
        return buffer

    def write(self, table: Table, slots: np.ndarray, leaves: list[torch.Tensor]) -> None:
        """Store row ``i`` of every leaf in slot ``slots[i]`` (one scatter per leaf)."""
        for buffer, leaf in zip(table.buffers, leaves, strict=True):
            if self.kind == "disk":
                rows = leaf.detach().cpu().contiguous().view(torch.uint8).reshape(len(slots), -1)
                buffer[1][slots] = rows.numpy()
                continue
            with torch.no_grad():
                buffer.index_copy_(0, index_now(slots, buffer.device), leaf if leaf.device == buffer.device
                                   else leaf.to(buffer.device))  # fmt: skip

    def read(self, table: Table, slots: np.ndarray) -> list[torch.Tensor]:
        """The rows in ``slots`` of every leaf, on the devices the part returned them on (one gather per leaf)."""
        _, shapes = table.signature
        leaves = []
        for buffer, (row_shape, dtype, device) in zip(table.buffers, shapes, strict=True):
            if self.kind == "disk":
                raw = torch.from_numpy(np.take(buffer[1], slots, axis=0))
                rows = raw.view(dtype).reshape(len(slots), *row_shape)
                leaves.append(rows if device.type == "cpu" else rows.to(device))
            elif buffer.device == device:
                leaves.append(buffer.index_select(0, index_now(slots, device)))
            else:  # a host store for a GPU part: gather into page-locked memory, copy without waiting
                staged = torch.empty((len(slots), *row_shape), dtype=dtype, pin_memory=True)
                torch.index_select(buffer, 0, index_now(slots, buffer.device), out=staged)
                leaves.append(staged.to(device, non_blocking=True))
        return leaves
