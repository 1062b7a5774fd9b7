"""Layer-wise learning-rate decay over a model's blocks (BEiT / ELECTRA fine-tuning; docs/optimizers.md).

``param_groups(model, lr=..., layer_decay=d)`` gives each block of
:func:`frozen.blocks` its own level: with ``M`` blocks, block ``j`` (0 = the stem)
gets ``lr * d ** (M - 1 - j)``. For the usual [stem, L transformer blocks, top] that is
BEiT's ``optim_factory.LayerDecayValueAssigner`` (and MAE's ``param_groups_lrd``) exactly:
the stem ``lr * d ** (L + 1)``, block ``i`` ``lr * d ** (L - i)``, the final norm and
head ``lr``. The levels come from the model's structure, frozen or not, so a block keeps
its rate when it is frozen and thawed again (``frozen.optim.sync`` puts it back in its group).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._errors import FrozenError
from .._select import layout

__all__ = ["check_layer_decay", "layer_levels"]


def check_layer_decay(layer_decay: Any, lr: Any, parts: Any, lr_decay: Any) -> None:
    """Refuse a ``layer_decay`` that is not a positive number, or that comes without a number ``lr``."""
    call = f"frozen.optim.param_groups(layer_decay={layer_decay!r}, lr={lr!r})"
    if isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) or not layer_decay > 0:
        raise FrozenError(
            f"{call}: expected layer_decay to be a positive number (BEiT and ELECTRA use 0.65-0.9), received "
            f"{layer_decay!r}. Pass e.g. layer_decay=0.75."
        )
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise FrozenError(
            f"{call}: layer-wise decay needs the head's learning rate as a number, received lr={lr!r}. Pass "
            f"e.g. lr=1e-3 (the stem then gets lr * layer_decay ** (number of blocks - 1))."
        )
    if parts is not None or lr_decay is not None:
        raise FrozenError(
            f"{call}: layer_decay picks the levels itself (frozen.blocks(model)), so it does not combine with "
            f"parts= or lr_decay= (received parts={parts!r}, lr_decay={lr_decay!r}). Pass either layer_decay=, or "
            f"parts=[...] with lr_decay= for levels of your own."
        )


def layer_levels(
    model: nn.Module, paths: list[str], lr: float, layer_decay: float
) -> tuple[dict[str, int], list[str], list[float]]:
    """Each parameter path's level (its block), the levels' labels and their learning rates.

    Labels are ``"stem"``, the path of each repeated block, and ``"head"`` for the top; an
    ``nn.Sequential`` model's levels are named by its children. A parameter outside every
    block (one an ``nn.Sequential`` subclass holds itself) counts with the top level.
    """
    cut = layout(model, f"frozen.optim.param_groups(model, layer_decay={layer_decay!r})")
    groups = cut.groups()
    labels = ["stem" if group is cut.stem else "head" if group is cut.top else ",".join(group) for group in groups]
    level_of_entry = {entry: level for level, group in enumerate(groups) for entry in group}
    level_of: dict[str, int] = {}
    for path in paths:
        segments = path.split(".")
        for end in range(1, len(segments) + 1):  # the block holding it: one of its own path's prefixes
            level = level_of_entry.get(".".join(segments[:end]))
            if level is not None:
                level_of[path] = level
                break
    count = len(groups)
    return level_of, labels, [lr * layer_decay ** (count - 1 - level) for level in range(count)]
