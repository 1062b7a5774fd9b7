"""Shuffled epochs over a fixed dataset, and the replay bound of a cached chain (the cache families).

Every variant of a cached-prefix scenario draws the same batches in the same order from an
:class:`Epochs`; :func:`replay` turns a model into the best any cache of a chain of its parts
can do -- the chain's last output recorded per dataset row and replayed by index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Epochs", "replay"]

_SEED = 0  # epoch 1's order, in every variant


class Epochs:
    """Batches of a fixed dataset, reshuffled each epoch with a seeded generator (same order in every variant)."""

    def __init__(self, data: Sequence[torch.Tensor], batch: int) -> None:
        self.data, self.batch = data, batch
        self.generator = torch.Generator().manual_seed(_SEED)
        self.queue: list[torch.Tensor] = []
        self.rows = torch.arange(0)  # the dataset rows of the last batch, on the data's device
        self.host_rows = self.rows  # the same on the CPU, as a DataLoader gives indices (no device copy)

    def __len__(self) -> int:
        return len(self.data[0]) // self.batch

    def next(self) -> tuple[torch.Tensor, ...]:
        if not self.queue:
            order = torch.randperm(len(self.data[0]), generator=self.generator)
            self.queue = list(order.split(self.batch))
        self.host_rows = self.queue.pop(0)
        self.rows = self.host_rows.to(self.data[0].device)
        return tuple(t[self.rows] for t in self.data)

    def rewind(self) -> None:
        """Back to the start of epoch 1: the same batches in the same order again."""
        self.queue.clear()
        self.generator.manual_seed(_SEED)

    def first_batch(self) -> tuple[torch.Tensor, ...]:
        """Epoch 1's first batch (a probe's: the same samples in every variant); then rewind."""
        batch = self.next()
        self.rewind()
        return batch

    def fill(self, run: Callable[[tuple[torch.Tensor, ...]], object]) -> None:
        """``run`` each batch of epoch 1 without gradients (a cache's filling pass, a recording); then rewind.

        ``rows`` / ``host_rows`` name each batch's dataset rows while ``run`` sees it.
        """
        with torch.no_grad():
            for _ in range(len(self)):
                run(self.next())
        self.rewind()


def replay(
    model: nn.Module,
    chain: list[nn.Module],
    epochs: Epochs,
    loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
) -> None:
    """The best any cache of ``chain`` can do: its last output, recorded per dataset row, replayed by index.

    The first part of the chain returns the recorded output of the last for the batch's rows (no
    hashing, no store, no per-sample work), the others pass it on; everything outside the chain runs.
    """
    recorded: list[torch.Tensor] = []
    hook = chain[-1].register_forward_hook(lambda _m, _a, out: recorded.append(out))
    epochs.fill(lambda batch: loss_fn(model, batch))
    hook.remove()
    order = torch.cat([torch.as_tensor(rows) for rows in _epoch_rows(epochs)])
    table = torch.empty_like(torch.cat(recorded))
    table[order] = torch.cat(recorded)
    chain[0].__dict__["forward"] = lambda *args, **kwargs: table[epochs.rows]
    for part in chain[1:]:
        part.__dict__["forward"] = lambda hidden, *args, **kwargs: hidden


def _epoch_rows(epochs: Epochs) -> list[torch.Tensor]:
    """The row order of the first epoch (what the recording pass saw), from the same seeded generator."""
    generator = torch.Generator().manual_seed(_SEED)
    return list(torch.randperm(len(epochs.data[0]), generator=generator).split(epochs.batch))
