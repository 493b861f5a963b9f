"""`bench/run [--runs N] [--quick] [--only NAME ...]`: every benchmark with its baselines, in one run.

Each of the `--runs` rounds runs every selected benchmark once (library and baselines, alternating which
goes first), so a ratio compares figures taken minutes apart on the same machine. Prints a table, writes
`bench/results/latest.json` (every run's figures, medians, ratios, verdicts, versions) and
`bench/results/latest.png`. Benchmarks are not tests: the exit status is 0 whether targets are met or not,
and non-zero only when a benchmark could not be measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.cases import BENCHMARKS, TARGETS, Benchmark, Context, Figures, Settings, select
from bench.procs import ROOT, BenchError, Processes
from bench.report import draw, judge, summarize, table, write_json

RESULTS = ROOT / "bench" / "results"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import zmq

    found = {"python": platform.python_version(), "libzmq": zmq.zmq_version()}
    for package in ("pyzmq", "gevent", "msgspec", "zerorpc", "brubeck-service"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "missing"
    import brubeckservice

    found["library"] = str(Path(brubeckservice.__file__).resolve().parent.parent)
    found["wrk"] = shutil.which("wrk") or "missing"
    found["mongrel2"] = shutil.which("mongrel2") or "missing"
    return found


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "brubeck", "brubeckservice"],
                               cwd=ROOT, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (brubeck/brubeckservice modified)' if dirty else ''}"


def _short(benchmark: Benchmark, figures: dict[str, Figures]) -> str:
    metric = benchmark.metrics[0]
    parts = []
    for variant in benchmark.variants:
        value = figures.get(variant, {}).get(metric)
        if value is not None:
            parts.append(f"{variant} {value:,.0f}" if metric != "growth_pct" else f"{variant} {value:+.2f}%")
    unit = {"rate": "/s", "bytes_per_call": " B/call", "fail_ms": " ms to a failed call", "failed": " failed"}.get(
        metric, "")
    return ", ".join(parts) + unit


def _check_tools(chosen: list[Benchmark]) -> None:
    if any(b.name == "http" for b in chosen):
        from bench.httpload import wrk_available
        from brubeck.testing import mongrel2_available

        if not (wrk_available() and mongrel2_available()):
            raise SystemExit("bench: the http benchmark needs wrk and mongrel2-core (bench/run installs them)")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int,
                        help="rounds of every benchmark (default 5, the 1M-call soak in 3 of them; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer calls, shorter wrk, 50k soak")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only these (repeat or comma-separate): {', '.join(b.name for b in BENCHMARKS)}"
                             " or their numbers")
    parser.add_argument("--soak-calls", type=int, help="calls of the soak (default 1,000,000; 50,000 quick)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    parser.add_argument("--label", help="what is measured, for the JSON and the chart (default: git HEAD)")
    args = parser.parse_args(argv)

    settings = Settings.quick() if args.quick else Settings()
    if args.runs is not None:
        settings = replace(settings, runs=max(1, args.runs))
    if args.soak_calls is not None:
        settings = replace(settings, soak_calls=args.soak_calls)
    only = [name.strip() for item in args.only or [] for name in item.split(",") if name.strip()]
    try:
        chosen = select(only)
    except ValueError as err:
        parser.error(str(err))
    _check_tools(chosen)
    args.output.mkdir(parents=True, exist_ok=True)

    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="brubeck-bench-"))
    runs: dict[str, list[dict[str, Figures]]] = {b.name: [] for b in chosen}
    errors: dict[str, list[str]] = {b.name: [] for b in chosen}
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    print(f"bench: {settings.runs} run(s) of {', '.join(b.name for b in chosen)}"
          f"{' (quick)' if args.quick else ''}; logs in {workdir}", flush=True)
    interrupted = False
    try:
        with Processes(workdir) as processes:
            for run in range(settings.runs):
                for benchmark in chosen:
                    begun = time.monotonic()
                    context = Context(workdir, processes, settings, run)
                    try:
                        figures = benchmark.run(context)
                    except (BenchError, RuntimeError, OSError) as err:
                        figures = {}
                        context.errors.append(str(err))
                    errors[benchmark.name].extend(f"run {run + 1}: {e}" for e in context.errors)
                    if figures:
                        runs[benchmark.name].append(figures)
                    if not figures and not context.errors:
                        continue  # not measured in this run (the soak runs in the first `soak_runs` only)
                    print(f"run {run + 1}/{settings.runs} {benchmark.name:<10} {_short(benchmark, figures)}"
                          f"  ({time.monotonic() - begun:.0f} s)", flush=True)
                    for error in context.errors:
                        print(f"    FAILED {error}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("bench: interrupted; reporting what was measured", file=sys.stderr)

    summaries = {b.name: summarize(b, runs[b.name], errors[b.name]) for b in chosen if runs[b.name] or errors[b.name]}
    chosen_names = {b.name for b in chosen}
    verdicts = [judge(t, runs[t.benchmark]) for t in TARGETS if t.benchmark in chosen_names]
    print()
    print(table(summaries, chosen, verdicts, settings.runs))
    finished = datetime.now(UTC)
    document: dict[str, Any] = {
        "meta": {"started": started.isoformat(timespec="seconds"), "finished": finished.isoformat(timespec="seconds"),
                 "command": " ".join(["bench/run", *(argv if argv is not None else sys.argv[1:])]),
                 "host": platform.node(), "cpus": os.cpu_count(), "loadavg_before": load_before,
                 "loadavg_after": os.getloadavg(), "git": args.label or _git(), "versions": _versions(),
                 "interrupted": interrupted},
        "settings": asdict(settings),
        "benchmarks": summaries,
        "targets": verdicts,
    }
    json_path = args.output / "latest.json"
    png_path = args.output / "latest.png"
    write_json(json_path, document)
    draw(png_path, summaries, chosen, verdicts,
         f"brubeck-service {document['meta']['git']}, {started:%Y-%m-%d %H:%M} UTC, {settings.runs} run(s),"
         f" {os.cpu_count()} CPUs, load {load_before[0]:.1f}")
    print(f"\nwrote {json_path.relative_to(ROOT) if json_path.is_relative_to(ROOT) else json_path} and "
          f"{png_path.relative_to(ROOT) if png_path.is_relative_to(ROOT) else png_path}")
    failed = any(errors.values()) or interrupted
    if failed:
        print(f"bench: some measurements failed; process logs kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
