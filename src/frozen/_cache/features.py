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
from .._core import iter_module_uses
from .._errors import UnknownPathError, closest
from .args import CacheError
from .out import flatten, rebuild
from .run import run_members

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


class _Stop(Exception):
    """Raised by a hook on the last module of ``part=``: the model's forward stops there, with that output."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


def _stop(_module: nn.Module, _args: Any, output: Any) -> None:
    raise _Stop(output)


def _target(module: nn.Module, part: str) -> nn.Module:
    """The module whose output ``part`` names: the module at that path, or the last sibling of a run."""
    uses = list(iter_module_uses(module))
    found = next((u.module for u in uses if u.path == part), None)
    if found is None and (run := run_members(part, uses)) is not None:
        found = next(u.module for u in uses if u.path == run[1][-1])
    if found is None:
        raise UnknownPathError(
            f"frozen.features(module, loader, part={part!r}): no module has that path and it names no run of "
            f"siblings ('first-last'). Closest: {closest(part, [u.path for u in uses if u.path])}."
        )
    return found


def features(module: nn.Module, loader: Iterable, *, progress: bool = True, part: str | None = None) -> Any:
    """Run ``module`` over every batch of ``loader`` once, in inference behaviour; return the outputs.

    Each batch is a tensor (the input), a dict (keyword inputs, e.g. a tokenizer's
    output) or a tuple/list ``(inputs, *rest)``; the module runs on the inputs under
    ``torch.no_grad()`` in eval mode (every submodule's mode is restored afterwards).
    Outputs are concatenated along dimension 0, keeping their structure (a tensor, a
    tuple, a dict or a ``ModelOutput``); the ``rest`` (labels...) is concatenated too.

    Args:
        module: the frozen backbone (the whole function of the input the head sees), or a
            whole model with ``part=``.
        loader: an iterable of batches, e.g. a ``DataLoader`` without shuffling.
        progress: show a ``tqdm`` progress bar when ``tqdm`` is installed.
        part: the output to collect instead of ``module``'s own: a module path inside it, or a
            run of siblings ``"first-last"`` (``"conv1-layer4"`` of a torchvision ResNet, whose
            backbone is no single module): ``module`` runs as usual and stops once that module
            (the run's last sibling) has returned, nothing after it computed.

    Returns:
        The concatenated outputs, or ``(outputs, *rest)`` when batches are tuples/lists.

    Raises:
        TypeError: ``module`` is not a module.
        frozen.UnknownPathError: ``part`` names no module and no run.
        frozen.CacheError: the loader is empty, an output is not per-sample, or the forward
            never reached ``part``.

    Example:
        >>> import torch, frozen
        >>> backbone, x, y = torch.nn.Linear(3, 5), torch.randn(10, 3), torch.arange(10)
        >>> loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
        >>> feats, labels = frozen.features(backbone, loader, progress=False)
        >>> tuple(feats.shape), torch.equal(labels, y)
        ((10, 5), True)
    """
    check_model(module, "frozen.features")
    target = _target(module, part) if part is not None else None
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
                out = _run(module, inputs, target, part)
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


def _run(module: nn.Module, inputs: Any, target: nn.Module | None, part: str | None) -> Any:
    """``module``'s output on ``inputs``, or ``target``'s, stopping the forward there."""
    if target is None:
        return module(**inputs) if isinstance(inputs, dict) else module(inputs)
    hook = target.register_forward_hook(_stop)
    try:
        module(**inputs) if isinstance(inputs, dict) else module(inputs)
    except _Stop as stop:
        return stop.output
    finally:
        hook.remove()
    raise CacheError(
        f"frozen.features(module, loader, part={part!r}): the module's forward returned without calling that "
        f"part; expected a part the forward runs. Name a module the forward calls."
    )


def _cat(parts: tuple[Any, ...]) -> Any:
    return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else [x for p in parts for x in p]
