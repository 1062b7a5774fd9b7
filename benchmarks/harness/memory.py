"""Peak memory of a training step, measured in a fresh process per variant (secondary figure).

The deterministic memory figure is the saved-activation bytes (``timing.saved_activation_bytes``);
RSS deltas on CPU move by a few MiB from run to run.

CPU: the peak resident set size (``VmHWM``) while ``steps`` steps run, minus the
resident size just before them. The high-water mark is reset first (Linux
``/proc/self/clear_refs``), so model construction does not mask the steps' peak; the
number includes everything a step allocates and keeps (gradients, optimizer state,
saved activations) plus allocator slack - it is what the operating system sees.
CUDA: ``torch.cuda.max_memory_allocated()`` over the steps minus the memory
allocated before them (exact tensor bytes, no allocator cache).

Run as ``python -m benchmarks.harness.memory SCENARIO VARIANT DEVICE THREADS STEPS``; prints
one JSON object.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

__all__ = ["peak_memory", "measure_all"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(scenario_key: str, variant: str, device_name: str, threads: int, steps: int) -> dict:
    """Build one variant here and return ``{"peak_bytes": ..., "how": ...}`` for ``steps`` steps."""
    import torch

    from .declare import Setup
    from .registry import scenarios

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    scenario = next(s for s in scenarios() if s.key == scenario_key)
    workload = scenario.build(variant, Setup(device, "full"))
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            workload.step()
        torch.cuda.synchronize(device)
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - before, "how": "cuda max_memory_allocated"}
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    for _ in range(steps):
        workload.step()
    return {"peak_bytes": (_status_kib("VmHWM") - before) * 1024, "how": "peak RSS (VmHWM) delta"}


def _run_one(job: tuple[str, str, str, int, int]) -> dict | None:
    scenario, variant, device, threads, steps = job
    command = [sys.executable, "-m", "benchmarks.harness.memory", scenario, variant, device, str(threads), str(steps)]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        print(f"memory worker failed for {scenario}/{variant}:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_all(
    scenario: str, variants: list[str], device: str, threads: int, steps: int, parallel: int
) -> dict[str, dict | None]:
    """Peak memory of every variant, each in its own fresh process.

    Memory does not depend on timing, so on CPU two workers may run side by side;
    on CUDA they run one at a time (they would share the card).
    """
    jobs = [(scenario, v, device, threads, steps) for v in variants]
    workers = 1 if device.startswith("cuda") else max(1, parallel)
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(variants, pool.map(_run_one, jobs)))


if __name__ == "__main__":
    key, variant_name, device_arg, threads_arg, steps_arg = sys.argv[1:6]
    print(json.dumps(peak_memory(key, variant_name, device_arg, int(threads_arg), int(steps_arg))))
