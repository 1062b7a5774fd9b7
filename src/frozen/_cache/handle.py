"""The handle of one :func:`frozen.cache` call: its parts, their shared store, the sample-id scope, statistics.

Each part's ``forward`` (``_cache_part.Part``) reads from its handle the store, the
options given to ``cache`` (``inner_hooks``, ``grad_inputs``, ``shared``) and the ids of the
innermost :meth:`CacheHandle.samples` block; users read ``stats()`` and call ``clear()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .hooks import STEPS
from .keys import SampleIds, sample_keys
from .store import Store

if TYPE_CHECKING:
    from .part import Part

__all__ = ["CacheHandle"]


class CacheHandle:
    """The cached parts of one :func:`cache` call, their shared store and their statistics.

    Attributes:
        paths: the cached parts' paths, in the order given.
        store: ``"device"``, ``"cpu"`` or ``"disk"``.
        budget: the most bytes the stored outputs may take.
    """

    def __init__(
        self,
        store: Store,
        inner_hooks: str = "refuse",
        grad_inputs: str = "refuse",
        shared: tuple[str, ...] = (),
        verify: bool = True,
    ) -> None:
        self._store = store
        self.verify = verify  # check each part's first filling call for rows that depend on each other
        self.inner_hooks = inner_hooks  # "refuse" or "skip" forward hooks inside a part (hooks.py)
        self.grad_inputs = grad_inputs  # "refuse" or "pass" (run plainly) calls whose inputs require grad
        self.shared = shared  # names of forward parameters every sample of a call shares (never split)
        # Weak: each part is held by its module (its forward); a part holding the handle and the
        # handle the part kept both, and the stored rows, in a cycle after the model was deleted.
        self.parts: weakref.WeakValueDictionary[str, Part] = weakref.WeakValueDictionary()
        self._ids: ContextVar[SampleIds | None] = ContextVar(f"frozen_cache_ids_{id(self)}", default=None)
        self._trainable: tuple[Any, set[int]] | None = None  # (stamp, ids): one walk of the model per step

    @contextmanager
    def samples(self, ids: Any) -> Iterator[None]:
        """Key this handle's parts by ``ids`` inside the block, instead of hashing their inputs.

        ``ids`` names the samples of the batch given to the model, one per row (a 1-D
        integer tensor or a list of ints, strings or bytes -- typically the dataset
        indices). Nothing of the inputs is read then, so a hit costs no hashing and, on a
        GPU, no copy of the batch to the host. The caller vouches that an id always stands
        for the same input: use it for a prefix fed by the data alone, without random
        augmentation (content keys, the default, need no such promise). The batched
        inputs' row shapes and dtypes and the call's other arguments still enter the key.

        Raises:
            frozen.CacheError: ``ids`` is not one id per sample (checked against each call's batch).

        Example:
            >>> import torch, frozen
            >>> net = frozen.freeze(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)), "0")
            >>> handle, data = frozen.cache(net, "0"), torch.randn(6, 4)
            >>> for rows in (torch.arange(6), torch.randperm(6)):
            ...     with handle.samples(rows):
            ...         _ = net(data[rows])
            >>> {k: handle.stats()["0"][k] for k in ("hits", "misses")}
            {'hits': 6, 'misses': 6}
        """
        token = self._ids.set(sample_keys(ids))
        try:
            yield
        finally:
            self._ids.reset(token)

    def current_ids(self) -> SampleIds | None:
        """The sample ids of the innermost :meth:`samples` block around this call, if any."""
        return self._ids.get()

    def trainable(self, model: Any, walk: Any) -> set[int]:
        """``walk(model)`` (the ids of its trainable parameters), remembered until the next optimizer step.

        Each part asks when its snapshot changed: at the first call, a model cached at 40
        places walked itself 40 times.
        """
        stamp = (id(model), STEPS[0])
        if self._trainable is None or self._trainable[0] != stamp:
            self._trainable = (stamp, walk(model))
        return self._trainable[1]

    @property
    def store(self) -> Store:
        """The store holding every part's entries (``.kind``, ``.budget``, ``.nbytes``)."""
        return self._store

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths still cached by this handle."""
        return tuple(self.parts)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return ``{path: counters}``: calls, sample hits and misses, forward runs, invalidations, bytes held.

        ``forwards`` counts the calls of the part's own ``forward`` (a batch with a miss, or
        a call passed through because the part trains now); ``bytes`` and ``entries`` are the
        store's, shared by this handle's parts.
        """
        shared: dict[str, Any] = {
            "entries": len(self._store),
            "bytes": self._store.nbytes,
            "budget": self._store.budget,
        }
        shared |= {"evictions": self._store.evictions, "store": self._store.kind}
        return {path: {**part.counts, **shared} for path, part in self.parts.items()}

    def clear(self) -> None:
        """Drop every stored output (after writing a cached part's weights through ``.data``)."""
        self._store.drop()
        for part in self.parts.values():
            part.fingerprint = None

    def __repr__(self) -> str:
        return (
            f"CacheHandle(paths={list(self.parts)}, store={self._store.kind!r}, entries={len(self._store)}, "
            f"bytes={self._store.nbytes}, budget={self._store.budget})"
        )
