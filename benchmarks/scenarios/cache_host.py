"""The host time of a cache hit with sample ids, at batch 8 and batch 256 (``cache-host-ids``).

A hit with sample ids reads no input: its work is the cache's own host-side bookkeeping
(snapshot check, the ids' table lookup, one gather). Before, it grew with the batch -- per-sample
store lookups and key loops: 190 us at batch 8 and 1,024 us at batch 256 on an H100 host. The
part here is one small ``Linear`` whose rows are stored on the device, so a step is nearly all
host time; each variant is one all-hit call of the cached part inside ``handle.samples(ids)``.
The bar: batch 256 / batch 8 <= 1.5. Content keys are shown beside (they hash the rows: work
grows with the batch's bytes, on the device).
"""

from __future__ import annotations

import torch
from torch import nn

import frozen

from ..harness import Bar, Scenario, Setup, Workload

__all__ = ["SCENARIOS"]

_VARIANTS = {"ids, batch 8": (8, True), "ids, batch 256": (256, True), "content, batch 8": (8, False),
             "content, batch 256": (256, False)}  # fmt: skip


def _build(variant: str, setup: Setup) -> Workload:
    batch, by_ids = _VARIANTS.get(variant.removesuffix(" (A/A)"), (8, True))
    torch.manual_seed(0)
    model = frozen.freeze(nn.Sequential(nn.Sequential(nn.Linear(16, 16)), nn.Linear(16, 2)), "0").to(setup.device)
    handle = frozen.cache(model, "0", store="device", verify=False)
    data = torch.randn(4 * batch, 16, device=setup.device)
    rows = torch.arange(4 * batch).split(batch)  # host ids, as a DataLoader gives them
    part = model[0]
    for index in rows:  # fill: every later call hits
        with handle.samples(index):
            part(data[index.to(setup.device)])
    batches = [(index, data[index.to(setup.device)]) for index in rows]
    state = [0]

    def step() -> None:
        index, x = batches[state[0] % len(batches)]
        state[0] += 1
        with torch.no_grad():
            if by_ids:
                with handle.samples(index):
                    part(x)
            else:
                part(x)

    def figures() -> dict[str, float | int | str]:
        stats = handle.stats()["0"]
        return {"hits": stats["hits"], "misses": stats["misses"]}

    return Workload(step, model, None, dict, figures=figures, saved=False)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        key="cache-host-ids",
        title="Host time of a cache hit with sample ids, batch 8 against 256",
        about="One cached `Linear(16, 16)` part (store on the device), every call a hit: the step is the cache's own "
        "host work. `ids` = keyed by `handle.samples(ids)` (host ids, as a DataLoader yields them); `content` = "
        "rows hashed on the device.",
        build=_build,
        variants=tuple(_VARIANTS),
        bars=(Bar("hit with ids: batch 256 / batch 8 (host time)", "ids, batch 256", "ids, batch 8", 1.5),),
        reference="ids, batch 8",
        inner=20,
        rounds=(10, 30),
        rss=False,
    ),
)
