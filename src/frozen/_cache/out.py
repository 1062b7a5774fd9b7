"""Splitting a part's output into per-sample rows, and putting rows back together.

An output is a tree of tensors, ``None`` and containers (tuple, list, dict, and dict
subclasses such as Hugging Face ``ModelOutput``). Its *spec* records the containers and
each tensor's device; its *leaves* are the tensors, each with the batch in dimension 0.
"""

from __future__ import annotations

from typing import Any

import torch

from .keys import CacheError

__all__ = ["assemble", "flatten", "rebuild"]


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


def assemble(spec: Any, rows: list[tuple[torch.Tensor, ...]]) -> list[torch.Tensor]:
    """Stack per-sample ``rows`` (one tuple per sample) into batched leaves on their devices."""
    devices = []

    def walk(node: Any) -> None:
        if node[0] == "T":
            devices.append(node[1])
        elif node[0] == "S":
            for n in node[2]:
                walk(n)
        elif node[0] == "D":
            for n in node[3]:
                walk(n)

    walk(spec)
    leaves = []
    for i, device in enumerate(devices):
        stacked = torch.stack([r[i] for r in rows])
        leaves.append(stacked if stacked.device == device else stacked.to(device, non_blocking=True))
    return leaves
