"""Running a cached part on the samples of a batch it has not seen, and storing what it computed.

A batch of seen and new samples runs the part on the new ones only, as one smaller batch
(its split arguments gathered once each), stores their rows with one scatter per output
tensor, then answers the whole batch with one gather -- or, when the budget cannot hold the
new rows without evicting this call's own, gathers the seen rows first and assembles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .args import CacheError
from .out import assemble, rebuild, signature
from .table import index_now, index_on

__all__ = ["mixed", "split_hint", "store_rows", "subset"]


def mixed(part: Any, args: tuple, kwargs: dict, keys: Any, table: Any, slots: np.ndarray, missing: np.ndarray) -> Any:
    """A batch of seen and new samples: the part on the new ones only, then one gather of them all."""
    store = part.handle.store
    sub_args, sub_kwargs = subset(args, kwargs, keys.batched, missing)
    try:
        _, spec, computed = part._compute(sub_args, sub_kwargs, keys, len(missing))
    except Exception as error:
        if not isinstance(error, CacheError) and len(keys.batched) > 1:
            error.add_note(split_hint(part, keys.batched, len(missing)))
        raise
    shapes = signature(spec, computed)
    if table.signature != shapes:  # the same call context gave rows of another shape: start afresh
        store.drop(keep=lambda key: key != table.key)
        output, spec, leaves = part._compute(args, kwargs, keys)
        store_rows(part, store.table(table.key, keys.by_ids), keys.rows, spec, leaves)
        return output, leaves
    hits = np.flatnonzero(slots >= 0)
    table, fresh = store_rows(part, table, keys.rows[missing], spec, computed)  # this call's hits kept
    slots[missing] = fresh
    if (fresh >= 0).all():
        leaves = store.read(table, slots)
        return rebuild(spec, leaves), leaves
    # Rows beyond the budget: read the hits now, then store the rest over the oldest rows, hits included.
    device = computed[0].device
    pieces = [(index_on(hits, device), store.read(table, slots[hits])), (index_on(missing, device), computed)]
    leaves = assemble(shapes[1], keys.batch, pieces)
    late = np.flatnonzero(fresh < 0)
    index = index_on(late, device)
    store_rows(part, table, keys.rows[missing[late]], spec, [leaf.index_select(0, index) for leaf in computed], False)
    return rebuild(spec, leaves), leaves


def store_rows(
    part: Any, table: Any, rows: np.ndarray, spec: Any, leaves: list[torch.Tensor], protect: bool = True
) -> tuple[Any, np.ndarray]:
    """Store ``leaves``' rows under ``rows``' keys (one scatter per tensor); return the table and each row's slot."""
    store = part.handle.store
    table = store.shape(table, signature(spec, leaves), leaves)
    slots, first, inverse = table.insert(rows, store, protect)
    per_row = slots[inverse]
    if len(slots) == len(rows) and (slots >= 0).all():
        store.write(table, per_row, leaves)
    else:  # repeated samples in the batch, or rows beyond the budget: each stored key once
        fits = slots >= 0
        if fits.any():
            index = index_now(first[fits], leaves[0].device)
            store.write(table, slots[fits], [leaf.index_select(0, index) for leaf in leaves])
    return table, per_row


def split_hint(part: Any, batched: list[tuple[int | str, torch.Tensor]], missing: int) -> str:
    """Why a run on the missed samples alone may fail: an argument split by sample that all samples share."""
    names = [part.argument_names[n] if isinstance(n, int) and n < len(part.argument_names) else n
             for n, _ in batched[1:]]  # fmt: skip
    return (
        f"frozen.cache: the part at {part.path!r} ran on the {missing} samples of the batch it had not seen, "
        f"with every tensor argument whose dimension 0 equals the batch size split by sample -- here also "
        f"{', '.join(map(repr, names))}. If one of them is shared by all samples (an attention mask of a "
        f"sequence as long as the batch), name it: frozen.cache(model, {part.path!r}, shared=({names[0]!r},))."
    )


def subset(args: tuple, kwargs: dict, batched: list, rows: np.ndarray) -> tuple[tuple, dict]:
    """The call's arguments restricted to ``rows`` of the batch (split tensors only): one gather each."""
    positional, named = list(args), dict(kwargs)
    for name, tensor in batched:
        picked = tensor.index_select(0, index_now(rows, tensor.device))
        if isinstance(name, int):
            positional[name] = picked
        else:
            named[name] = picked
    return tuple(positional), named
