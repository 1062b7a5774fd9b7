"""Splitting a part's output into per-sample rows, and putting rows back together.

An output is a tree of tensors, ``None`` and containers (tuple, list, dict, and dict
subclasses such as Hugging Face ``ModelOutput``). Its *spec* records the containers and
each tensor's device; its *leaves* are the tensors, each with the batch in dimension 0.
"""

from __future__ import annotations

from typing import Any

import torch

from .args import CacheError

__all__ = ["assemble", "flatten", "rebuild", "signature"]


def flatten(output: Any, batch: int, where: str) -> tuple[Any, list[torch.Tensor]]:
    """Return ``(spec, leaves)`` of ``output``, checking every tensor has ``batch`` rows.

    Raises:
        frozen.CacheError: a tensor without the batch in dimension 0, or a value that
            is neither a tensor, ``None`` nor a tuple/list/dict of them.
    """
    leaves: list[torch.Tensor] = []

    def visit(value: Any, at: str) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != batch:
                raise CacheError(
                    f"frozen.cache: the part at {where!r} is not batch-separable: its output {at or 'value'} has "
                    f"shape {tuple(value.shape)}, expected {batch} rows in dimension 0 (one per sample). Cache a "
                    f"part whose outputs are per-sample, e.g. the module before the pooling or loss."
                )
            leaves.append(value)  # the returned object itself: its row keys are remembered by identity
            return ("T", value.device)
        if value is None:
            return ("N",)
        if isinstance(value, dict):
            keys = list(value)
            return ("D", type(value), keys, [visit(value[k], f"{at}[{k!r}]") for k in keys])
        if isinstance(value, tuple | list) and type(value) in (tuple, list):
            return ("S", type(value), [visit(v, f"{at}[{i}]") for i, v in enumerate(value)])
        raise CacheError(
            f"frozen.cache: the part at {where!r} returned {at or 'a value'} of type {type(value).__name__}; "
            f"expected tensors, None, tuples, lists, dicts or ModelOutputs. Cache a part with plain outputs "
            f"(for Hugging Face models pass use_cache=False)."
        )

    return visit(output, ""), leaves


def rebuild(spec: Any, leaves: list[torch.Tensor]) -> Any:
    """Return the output described by ``spec`` with ``leaves`` as its tensors, in order."""
    queue = iter(leaves)

    def build(node: Any) -> Any:
        if node[0] == "T":
            return next(queue)
        if node[0] == "N":
            return None
        if node[0] == "S":
            return node[1](build(n) for n in node[2])
        kind, keys, children = node[1], node[2], node[3]
        values = {k: build(n) for k, n in zip(keys, children, strict=True)}
        return values if kind is dict else kind(**values)

    return build(spec)


def signature(spec: Any, leaves: list[torch.Tensor]) -> tuple:
    """What stored rows of an output must share to stack: its structure and each tensor's row shape, dtype, device."""
    return spec, tuple((tuple(leaf.shape[1:]), leaf.dtype, leaf.device) for leaf in leaves)


def assemble(shapes: tuple, batch: int, pieces: list[tuple[torch.Tensor, list[torch.Tensor]]]) -> list[torch.Tensor]:
    """Batched leaves of ``batch`` rows from ``pieces``: ``(positions, leaves)`` pairs, rows put at ``positions``.

    For a batch whose rows are not all in one table (some did not fit in the budget): two
    scatters per output tensor, whatever the batch size.
    """
    leaves = []
    for i, (row_shape, dtype, device) in enumerate(shapes):
        out = torch.empty((batch, *row_shape), dtype=dtype, device=device)
        for positions, rows in pieces:
            out.index_copy_(0, positions, rows[i] if rows[i].device == device else rows[i].to(device))
        leaves.append(out)
    return leaves
