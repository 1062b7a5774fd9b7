"""Timing and bookkeeping shared by every scenario: interleaved rounds, medians, bytes.

Why interleaved: on a shared 2-core machine the speed drifts over seconds (turbo,
other processes, allocator state). Timing variant A for a minute and then variant B
would fold that drift into the A/B ratio. Here every round runs every variant once
(in a seeded shuffled order with an untimed re-warm step before each variant, so no
variant inherits another's warm state), and a ratio is taken *within* a round before
taking the median over rounds, so slow drift cancels.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Workload",
    "Timing",
    "time_interleaved",
    "saved_activation_bytes",
    "paired_ratio",
    "tensor_bytes",
    "optimizer_state_bytes",
    "gradient_bytes",
    "sync",
]


@dataclass
class Workload:
    """One variant of one scenario, built and ready to step.

    Attributes:
        step: runs one training step (or, for the seed, one gradient computation).
        model: the model, for gradient bytes.
        optimizer: the optimizer, or ``None`` when the scenario has none.
        frozen_state: returns the tensors that must not change (``state_dict`` key to
            tensor); empty when the variant freezes nothing.
        check: optional extra correctness check run after the timed steps, returning
            ``(ok, what it checked)``; overrides the bit-identity check when given.
        probe: returns the model's output on the batch (no grad), to compare the
            variants' outputs before any step.
        figures: optional ``figures() -> {name: number or text}``, extra per-variant figures
            (forward-call counts, cache hits, ...) shown in the scenario's table and usable by
            a :class:`~benchmarks.harness.Bar` as ``measure=name``. Called once, after the
            timed steps; it may run its own untimed work.
        saved: whether a step saves tensors for backward at all (``False`` for workloads that are
            not training steps, e.g. a ``freeze`` call): then no saved-bytes figure is taken.
    """

    step: Callable[[], None]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    frozen_state: Callable[[], dict[str, torch.Tensor]]
    check: Callable[[], tuple[bool | None, str]] | None = None  # None in the verdict: nothing to compare
    probe: Callable[[], torch.Tensor] | None = None
    figures: Callable[[], dict[str, float | int | str]] | None = None
    saved: bool = True
    snapshot: dict[str, torch.Tensor] = field(default_factory=dict)

    def take_snapshot(self) -> None:
        """Remember the frozen tensors' values now, to compare after the steps."""
        self.snapshot = {k: v.detach().clone() for k, v in self.frozen_state().items()}

    def frozen_unchanged(self) -> tuple[bool | None, str]:
        """Whether every frozen tensor is bit-identical to the snapshot (None: nothing frozen)."""
        if self.check is not None:
            return self.check()
        if not self.snapshot:
            return None, "nothing frozen"
        now = self.frozen_state()
        changed = [k for k, v in self.snapshot.items() if not torch.equal(v, now[k])]
        if changed:
            return False, f"{len(changed)}/{len(self.snapshot)} frozen tensors changed, e.g. {changed[0]}"
        return True, f"{len(self.snapshot)} frozen tensors bit-identical"


@dataclass
class Timing:
    """Per-step times (seconds) of one variant, one sample per round."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quartiles(self) -> tuple[float, float]:
        return _quartiles(self.samples)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    workloads: dict[str, Workload],
    *,
    rounds: int,
    inner: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
    clock: str = "wall",
) -> dict[str, Timing]:
    """Time every workload in shuffled rounds; each sample is the median of ``inner`` steps.

    Each round runs every variant once, in an order shuffled with ``random.Random(seed + round)``
    (a fixed cyclic order let the reference always follow the heaviest variant and inherit
    its cache and allocator state). Before a variant's timed steps, one untimed step re-warms
    its own weights and buffers. Every step is timed on its own and a sample is the median
    over ``inner`` of them: a stall on a shared machine spoils one step, not a sample.

    Args:
        workloads: variant name to built workload (all in this process).
        rounds: samples per variant.
        inner: timed steps per sample.
        warmup: untimed steps per variant first (allocator, lazy init, compilation).
        device: where the work runs (CUDA work is synchronised before reading the clock).
        seed: seed of the per-round shuffles (the order is reproducible).
        clock: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: the CPU time
            of every thread of this process, which does not count the time the process waits for a
            core - on a shared CPU machine wall time measures the other users' load).

    Returns:
        variant name to :class:`Timing`.
    """
    read = time.process_time if clock == "cpu" else time.perf_counter
    names = list(workloads)
    for name in names:
        for _ in range(warmup):
            workloads[name].step()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = list(names)
        random.Random(seed + r).shuffle(order)
        for name in order:
            step = workloads[name].step
            step()  # the untimed re-warm
            times = []
            for _ in range(inner):
                sync(device)
                start = read()
                step()
                sync(device)
                times.append(read() - start)
            samples[name].append(statistics.median(times))
    return {name: Timing(s) for name, s in samples.items()}


def saved_activation_bytes(workload: Workload) -> int | None:
    """Bytes that one step saves for backward, each storage once, the model's own tensors excluded.

    Runs one extra step under :func:`torch.autograd.graph.saved_tensors_hooks`. A storage is
    identified by its untyped storage's ``data_ptr`` (views of one tensor count once); the
    model's parameters and buffers are left out, since they exist whether saved or not (a cast
    copy of a weight is counted: it is allocated for the step). Deterministic, unlike RSS.
    Tensors saved inside a checkpointed region are not held, so they are not counted.

    Returns:
        the byte count, or ``None`` when the workload has no autograd step (``saved=False``).
    """
    if not workload.saved:
        return None
    own = {t.untyped_storage().data_ptr() for t in [*workload.model.parameters(), *workload.model.buffers()]}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensors without a storage (sparse, nested)
            return tensor
        pointer = storage.data_ptr()
        if pointer and pointer not in own:
            seen[pointer] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        workload.step()
    return sum(seen.values())


def paired_ratio(a: Timing, b: Timing) -> tuple[float, float, float]:
    """Median and quartiles of ``a/b`` taken round by round (drift cancels within a round)."""
    ratios = [x / y for x, y in zip(a.samples, b.samples)]
    q1, q3 = _quartiles(ratios)
    return statistics.median(ratios), q1, q3


def tensor_bytes(tensors) -> int:
    """Total bytes of the given tensors, counting each storage once."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def optimizer_state_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    """Bytes held in the optimizer's per-parameter state (Adam's moments, steps, ...)."""
    if optimizer is None:
        return 0
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values())


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of every ``.grad`` currently held by the model's parameters."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
