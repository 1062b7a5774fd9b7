"""The linear-probe shortcut: a frozen backbone's features over a dataset, computed once.

When only a head trains on top of a frozen backbone and the inputs are not augmented,
the backbone's outputs never change: compute them once, then train the head on the
stored features (epochs cost the head only). :func:`frozen.cache` does the same lazily
inside an unchanged training loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .._checks import check_model
from .keys import CacheError
from .out import flatten, rebuild

__all__ = ["features"]


def _bar(loader: Iterable, progress: bool) -> Iterable:
    if not progress:
        return loader
    try:
        from tqdm.auto import tqdm  # the demo extra; without it, no bar
    except ImportError:
        return loader
    return tqdm(loader, desc="frozen.features", unit="batch", leave=False)


def _split(batch: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(inputs, rest)`` of one loader batch: a tensor, a dict of inputs, or ``(inputs, *rest)``."""
    if isinstance(batch, tuple | list):
        return batch[0], tuple(batch[1:])
    return batch, ()


def features(module: nn.Module, loader: Iterable, *, progress: bool = True) -> Any:
    """Run ``module`` over every batch of ``loader`` once, in inference behaviour; return the outputs.

    Each batch is a tensor (the input), a dict (keyword inputs, e.g. a tokenizer's
    output) or a tuple/list ``(inputs, *rest)``; the module runs on the inputs under
    ``torch.no_grad()`` in eval mode (every submodule's mode is restored afterwards).
    Outputs are concatenated along dimension 0, keeping their structure (a tensor, a
    tuple, a dict or a ``ModelOutput``); the ``rest`` (labels...) is concatenated too.

    Args:
        module: the frozen backbone (the whole function of the input the head sees).
        loader: an iterable of batches, e.g. a ``DataLoader`` without shuffling.
        progress: show a ``tqdm`` progress bar when ``tqdm`` is installed.

    Returns:
        The concatenated outputs, or ``(outputs, *rest)`` when batches are tuples/lists.

    Raises:
        TypeError: ``module`` is not a module.
        frozen.CacheError: the loader is empty, or an output is not per-sample.

    Example:
        >>> import torch, frozen
        >>> backbone, x, y = torch.nn.Linear(3, 5), torch.randn(10, 3), torch.arange(10)
        >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
        >>> feats, labels = frozen.features(backbone, loader, progress=False)
        >>> tuple(feats.shape), torch.equal(labels, y)
        ((10, 5), True)
    """
    check_model(module, "frozen.features")
    modes = [(m, m.training) for m in module.modules()]
    outputs: list[list[torch.Tensor]] = []
    rests: list[tuple[Any, ...]] = []
    spec, tupled = None, False
    try:
        module.eval()
        with torch.no_grad():
            for batch in _bar(loader, progress):
                inputs, rest = _split(batch)
                tupled = tupled or isinstance(batch, tuple | list)
                out = module(**inputs) if isinstance(inputs, dict) else module(inputs)
                rows = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
                spec, leaves = flatten(out, len(rows), "frozen.features")
                outputs.append(leaves)
                rests.append(rest)
    finally:
        for sub, training in modes:
            sub.training = training
    if spec is None:
        raise CacheError("frozen.features(module, loader): the loader yielded no batch; expected at least one.")
    result = rebuild(spec, [torch.cat(parts) for parts in zip(*outputs, strict=True)])
    if not tupled:
        return result
    return (result, *(_cat(parts) for parts in zip(*rests, strict=True)))


def _cat(parts: tuple[Any, ...]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for p in parts for x in p]
