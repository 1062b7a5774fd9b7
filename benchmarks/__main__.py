"""``python -m benchmarks [--quick] [--device cuda] [--scenario KEY ...] [--out DIR]``.

Runs every registered scenario (with its A/A control), prints a one-line-per-variant
summary and each bar's verdict (met, missed, inconclusive), and writes one markdown
table per scenario, ``summary.md`` and ``chart.png`` to the output folder:
``benchmarks/results/<machine>/`` in full mode, ``out/benchmarks/<machine>/`` (git-
ignored, so a quick run never overwrites committed results) with ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from .harness import FAMILIES, Settings, missing, report, run_scenario, scenarios

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["main"]


def _parse(argv: list[str]) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    families = "; ".join(f"{name}: {what}" for name, what in FAMILIES.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[1],
        epilog=f"Scenario families (benchmarks/scenarios/<family>.py), in the order of the results: {families}.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few rounds, no peak-RSS subprocesses (a few minutes on 2 cores)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=cores, help=f"torch.set_num_threads (default: the {cores} usable cores)"
    )
    parser.add_argument(
        "--scenario", action="append", choices=[s.key for s in scenarios()], help="run only these (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: see above)")
    parser.add_argument("--rounds-scale", type=float, default=1.0, help="multiply every scenario's round count")
    parser.add_argument(
        "--memory",
        choices=("auto", "on", "off"),
        default="auto",
        help="peak memory per variant in a fresh process (auto: full mode only)",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="cpu: process CPU time (robust on a shared machine); wall: perf_counter; auto: cpu on CPU, wall on CUDA",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the seed scenario's profile section")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"--device {args.device}: CUDA is not available in this torch build ({torch.__version__}); use --device cpu.",
            file=sys.stderr,
        )
        return 2
    chosen = [s for s in scenarios() if not args.scenario or s.key in args.scenario]
    if args.scenario:  # asked for by key: a scenario whose stack is missing is an error, not a gap
        for scenario in chosen:
            if gone := missing(scenario):
                print(
                    f"--scenario {scenario.key}: it requires {', '.join(gone)}, which cannot be imported here; "
                    "install it (or leave this scenario out).",
                    file=sys.stderr,
                )
                return 2
    torch.set_num_threads(args.threads)
    memory = args.memory == "on" or (args.memory == "auto" and not args.quick)
    settings = Settings(
        full=not args.quick,
        warmup=3,
        inner_scale=1.0,
        rounds_scale=args.rounds_scale,
        memory_steps=3 if memory else 0,
        threads=args.threads,
        device=device,
        clock=("wall" if device.type == "cuda" else "cpu") if args.clock == "auto" else args.clock,
    )
    slug = report.machine_slug(device)
    out = args.out or (ROOT / "out" / "benchmarks" / slug if args.quick else ROOT / "benchmarks" / "results" / slug)
    out.mkdir(parents=True, exist_ok=True)
    machine = (
        report.machine(device)
        + f"; load average at start {os.getloadavg()[0]:.2f}; clock: {settings.clock}"
        + (" (process CPU time)" if settings.clock == "cpu" else " (perf_counter)")
    )
    command = "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"{machine}\nwriting to {out}", flush=True)
    started = time.perf_counter()
    results, left_out = [], []
    for scenario in chosen:
        if gone := missing(scenario):
            left_out.append(f"`{scenario.key}` was left out: it requires {', '.join(gone)}, not installed here.")
            print(f"\n{scenario.title}: LEFT OUT: it requires {', '.join(gone)}", flush=True)
            continue
        if device.type not in scenario.devices and not args.scenario:
            left_out.append(f"`{scenario.key}` runs on {', '.join(scenario.devices)} only (its sizes)")
            continue
        if args.quick and not scenario.quick and not args.scenario:
            left_out.append(f"`{scenario.key}` is not in `--quick`: {scenario.quick_note}")
            print(f"\n{scenario.title}: LEFT OUT of --quick: {scenario.quick_note}", flush=True)
            continue
        t0 = time.perf_counter()
        result = run_scenario(scenario, settings)
        results.append(result)
        text = report.scenario_markdown(result, machine, command.strip())
        if scenario.key == "seed" and not args.no_profile and device.type == "cpu":
            from .scenarios.seed import seed_profile

            text += "\n" + seed_profile(full=not args.quick)
        (out / f"{scenario.key}.md").write_text(text)
        _print(result, time.perf_counter() - t0)
    notes = [
        "Variants, scenarios, method and the verdict rule: [../../README.md](../../README.md).",
        f"Load average at the end: {os.getloadavg()[0]:.2f} (the machine is shared; see the A/A spreads).",
        "Peak RSS: "
        + ("one fresh process per variant, 3 steps." if memory else "not measured in this run (--quick).")
        + " The deterministic memory figure is the saved-activation bytes in each scenario's table.",
        *left_out,
    ]
    (out / "summary.md").write_text(report.summary_markdown(results, machine, command.strip(), notes))
    try:
        report.write_chart(results, out / "chart.png", machine)
    except ImportError as error:  # the tables are the result; the chart is a view of them
        print(f"chart.png not written: {error} (pip install matplotlib)", file=sys.stderr)
    print(f"\ndone in {time.perf_counter() - started:.0f} s; tables in {out}")
    return 0


def _print(result, seconds: float) -> None:
    print(f"\n{result.scenario.title}  ({seconds:.0f} s)")
    for row in result.rows:
        step = f"{row.timing.median * 1e3:9.3f} ms" if row.timing.samples else "measured once"
        figures = "" if row.timing.samples else "  " + ", ".join(f"{k}: {v}" for k, v in row.figures.items())
        ratio = "" if row.vs_ideal is None else f"{row.vs_ideal[0]:6.3f}x {result.scenario.reference}"
        saved = "" if row.saved_bytes is None else f"saved {row.saved_bytes / 2**20:8.2f} MiB"
        ok = {True: "correct", False: "NOT CORRECT: " + row.correct_note, None: ""}[row.correct]
        print(f"  {row.variant:20s} {step}  {ratio}  {saved}  {ok}{figures}")
    for variant, why in result.skipped.items():
        print(f"  {variant:20s} SKIPPED: {why}")
    if result.spread is not None:
        print(f"  A/A spread: ±{result.spread:.3f}")
    for line in report.verdict_lines(result):
        print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
