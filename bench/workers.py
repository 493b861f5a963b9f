"""Benchmarks 7-10, many workers (docs/protocol.md §8): what cases.py registers as `scale`, `detect`,
`rolling` and `heartbeat-cost`.

    7  scale           a CPU-bound handler (`/cpu`: 20 ms of CPU per call, never yielding) on workers of
                       capacity 1, one worker and then two (processes of their own, on ipc), called by one
                       ServiceClient with 8 callers for a fixed time: calls/s of each, and their ratio
    8  detect          ms from a fault (SIGKILL, SIGSTOP, the worker's network link cut) until the call in
                       flight there fails with ServiceUnavailable, and until `client.workers` says dead;
                       after SIGCONT or the link's restore, until it is alive again (median and max over
                       `detect_repeats` repetitions, measured in the first `detect_runs` runs)
    9  rolling         3 workers under `python -m brubeckservice run`, 16 callers making short calls, SIGHUP:
                       calls made, calls failed (0 expected), how long the roll took, calls/s during it
                       against before it
    10 heartbeat-cost  case 1 (sync calls, one caller: its own client and server) with the client's
                       heartbeats at their default (0.5 s) and effectively off: calls/s of each, and the cost
                       in %, over `heartbeat_pairs` pairs per run, alternating which goes first

The workers are `bench/worker_app.py`; the client side is `bench/worker_clients.py`, one process per
measurement (for `detect` and `rolling` it starts the workers and inflicts the fault itself, so that the
fault and its noticing are read off one clock). Sockets are ipc in the run's temporary directory, except for
the cut link: a tcp worker inside a network namespace (tests/brubeckservice/netns.py, root only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import READY_TIMEOUT, ROOT, BenchError, _environment, _tail, await_ready
from bench.stats import median

if TYPE_CHECKING:
    from bench.cases import Context

Figures = dict[str, Any]

APP = ROOT / "bench" / "worker_app.py"
#: The client heartbeat that stands for "off": the longest a ServiceClient takes. (heartbeat=3600 raises
#: EINVAL: libzmq takes a ZMQ_HEARTBEAT_TTL, which the pool sets to 6 x heartbeat, of at most 6553.5 s.)
HEARTBEAT_OFF = 1000.0
#: The variants of each benchmark, as cases.py registers them.
SCALE_WORKERS = {"1 worker": 1, "2 workers": 2}
FAULTS = {"SIGKILL": "kill", "SIGSTOP": "stop", "cut link": "cut"}
ROLLING = "3 workers"
HEARTBEATS = {"hb on": None, "hb off": HEARTBEAT_OFF}  # None: the client's default

_logs = count(1)


def _log(ctx: Context, name: str) -> Path:
    return ctx.workdir / f"w{next(_logs):03d}-{name}.err"


def _start_worker(ctx: Context, name: str, address: str, capacity: int) -> subprocess.Popen[bytes]:
    """`python bench/worker_app.py ADDRESS --capacity N`, in a session of its own, once it printed READY."""
    log = _log(ctx, name)
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, str(APP), address, "--capacity", str(capacity)], cwd=ROOT,
                                   env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=err, start_new_session=True)
    try:
        await_ready(process, f"worker {name}", log, READY_TIMEOUT)
    except BaseException:
        ctx.processes.stop(process)
        raise
    return process


def _client(ctx: Context, name: str, *args: str, timeout: float) -> Figures:
    """Run `python -m bench.worker_clients ARGS` to the end (in a session of its own, so that stopping it
    stops what it started); its figures, the JSON on its last line."""
    log = _log(ctx, name)
    with log.open("wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "bench.worker_clients", *args], cwd=ROOT,
                                   env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=err, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ctx.processes.stop(process)
        raise BenchError(f"client {name} did not finish in {timeout:g}s\n{_tail(log)}") from None
    except BaseException:  # interrupted: leave nothing behind
        ctx.processes.stop(process)
        raise
    if process.returncode != 0:
        raise BenchError(f"client {name} exited with {process.returncode}\n{_tail(log)}")
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines:
        raise BenchError(f"client {name} printed no figures\n{_tail(log)}")
    figures: Figures = json.loads(lines[-1])
    return figures


# -- 7 scale -----------------------------------------------------------------------------------------------


def scale(ctx: Context) -> dict[str, Figures]:
    return ctx.each(list(SCALE_WORKERS), lambda v: _scale(ctx, SCALE_WORKERS[v]))


def _scale(ctx: Context, workers: int) -> Figures:
    s = ctx.settings
    addresses = [ctx.ipc(f"scale{workers}-w{i}") for i in range(workers)]
    started: list[subprocess.Popen[bytes]] = []
    try:
        for i, address in enumerate(addresses):
            started.append(_start_worker(ctx, f"scale{workers}-w{i}", address, capacity=1))
        figures = _client(ctx, f"scale{workers}", "load", ",".join(addresses), f"--expect={workers}",
                          "--path=/cpu", f"--ms={s.scale_cpu_ms:g}", f"--concurrency={s.scale_concurrency}",
                          f"--seconds={s.scale_seconds:g}", f"--warmup={s.scale_warmup_seconds:g}",
                          f"--pids={','.join(str(p.pid) for p in started)}",
                          timeout=s.scale_seconds + s.scale_warmup_seconds + 120)
        for i, process in enumerate(started):
            if process.poll() is not None:
                raise BenchError(f"worker {i} exited with {process.returncode} during the run")
    finally:
        for process in started:
            ctx.processes.stop(process)
    figures.update(workers=workers, cpu_ms=s.scale_cpu_ms, cpus=os.cpu_count() or 0)
    return figures


# -- 8 detect ----------------------------------------------------------------------------------------------


def detect(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    if ctx.run >= s.detect_runs:
        return {}
    return ctx.each(list(FAULTS), lambda v: _client(
        ctx, f"detect-{FAULTS[v]}", "detect", FAULTS[v], f"--repeats={s.detect_repeats}", f"--workdir={ctx.workdir}",
        timeout=60.0 * s.detect_repeats + 120))


# -- 9 rolling ---------------------------------------------------------------------------------------------


def rolling(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    return ctx.each([ROLLING], lambda v: _client(
        ctx, "rolling", "rolling", f"--workdir={ctx.workdir}", "--workers=3",
        f"--concurrency={s.rolling_concurrency}", f"--before={s.rolling_before_seconds:g}",
        f"--after={s.rolling_after_seconds:g}", timeout=s.rolling_before_seconds + s.rolling_after_seconds + 300))


# -- 10 heartbeat-cost -------------------------------------------------------------------------------------


def heartbeat_cost(ctx: Context) -> dict[str, Figures]:
    """Case 1's own client and server (cases._rpc), `heartbeat_pairs` times each variant, alternating which
    goes first; per variant the median of each figure, and for `hb on` the median of the pairs' costs."""
    from bench.cases import _rpc
    from brubeckservice.pool import DEFAULT_HEARTBEAT

    s = ctx.settings
    pairs: list[dict[str, Figures]] = []
    for pair in range(s.heartbeat_pairs):
        order = ctx.ordered(list(HEARTBEATS))
        found: dict[str, Figures] = {}
        for variant in order if pair % 2 == 0 else order[::-1]:
            beat = HEARTBEATS[variant]
            try:
                found[variant] = _rpc(ctx, "brubeck", "sync", f"--calls={s.sync_calls}", f"--warmup={s.warmup}",
                                      *([f"--heartbeat={beat:g}"] if beat is not None else []))
            except (BenchError, RuntimeError, OSError) as err:
                ctx.errors.append(f"{variant} (pair {pair + 1}): {err}")
        pairs.append(found)
    result: dict[str, Figures] = {}
    for variant, beat in HEARTBEATS.items():
        measured = [p[variant] for p in pairs if variant in p]
        if not measured:
            continue
        metrics = {k for f in measured for k, v in f.items() if isinstance(v, int | float)}
        result[variant] = {k: median([float(f.get(k, float("nan"))) for f in measured]) for k in sorted(metrics)}
        result[variant].update(pairs=len(measured), heartbeat_s=DEFAULT_HEARTBEAT if beat is None else beat)
    costs = [100 * (1 - p["hb on"]["rate"] / p["hb off"]["rate"]) for p in pairs if "hb on" in p and "hb off" in p]
    if costs and "hb on" in result:
        result["hb on"].update(cost_pct=median(costs), cost_pct_each=costs)
    return result
