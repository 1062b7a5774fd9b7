"""Two-rank gloo runs for the multi-process tests: one worker loop, results saved per rank.

Each rank joins a process group through a file store, runs every scenario (an error becomes
``{"error": traceback}`` so the test names it instead of hanging the peer), and saves its
results to ``<out_dir>/rank<r>.pt``.
"""

from __future__ import annotations

import datetime
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["run_scenarios"]


def run_scenarios(rank: int, world: int, out_dir: str, scenarios: dict[str, Callable[[int], Any]]) -> None:
    """Run ``scenarios`` on this rank, save the results, and leave the process."""
    store = os.path.join(out_dir, "store")
    timeout = datetime.timedelta(seconds=40)  # a rank that failed must not hang the other forever
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=timeout)
    torch.set_num_threads(1)
    results = {}
    try:
        for name, scenario in scenarios.items():
            try:
                results[name] = scenario(rank)
            except Exception:
                results[name] = {"error": traceback.format_exc()}
            dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (else the peer may abort)
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: a gloo thread still alive at exit makes C++ call
    # std::terminate now and then (SIGABRT after the results were written). Errors still propagate.
    os._exit(0)
