"""What is measured and against what: the six benchmarks of issue 5, their variants and their targets.

A benchmark runs all of its variants (the library and its baselines) once per run, each against a freshly
started server, in an order that alternates from run to run so a drift in the machine's load does not
always favour the same side. Variant names: `brubeck` is the library (brubeckservice's `ServiceClient` and
`ServiceConnection`, or a Brubeck app behind Mongrel2), `plain`, `pipelined` and `floor` the plain pyzmq
floors (blocking sockets, no gevent), `raw` the same loops over zmq.green with greenlets, `zerorpc` zerorpc.
Benchmarks 7-10 (many workers: scale, detect, rolling, heartbeat-cost) are measured in bench/workers.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import workers
from bench.httpload import wait_http, wrk
from bench.procs import BenchError, Processes, cpu_seconds
from bench.stats import median

Figures = dict[str, Any]


@dataclass(frozen=True)
class Settings:
    """How much work each measurement does; `quick()` is a smoke run of a couple of minutes."""

    runs: int = 5
    warmup: int = 2_000
    sync_calls: int = 10_000
    concurrent_calls: int = 50_000
    concurrency: int = 100
    pipeline_calls: int = 10_000
    wrk_connections: int = 50
    wrk_seconds: float = 10.0  # per variant and run, in `wrk_slices` slices
    wrk_slices: int = 2
    wrk_warmup_seconds: float = 2.0
    inflight_calls: int = 10_000
    inflight_warmup: int = 100
    soak_calls: int = 1_000_000
    soak_warmup: int = 50_000
    soak_runs: int = 3  # the soak takes minutes: it runs in the first `soak_runs` runs only
    # many workers (bench/workers.py)
    scale_seconds: float = 10.0  # per variant and run
    scale_warmup_seconds: float = 2.0
    scale_concurrency: int = 8
    scale_cpu_ms: float = 20.0  # CPU time per call of the CPU-bound handler
    detect_repeats: int = 10  # per fault
    detect_runs: int = 1  # the repetitions are the sample: detect runs in the first `detect_runs` runs only
    rolling_concurrency: int = 16
    rolling_before_seconds: float = 5.0
    rolling_after_seconds: float = 2.0
    heartbeat_pairs: int = 3  # per run: each variant this many times, alternating which goes first

    @classmethod
    def quick(cls) -> Settings:
        return cls(runs=1, warmup=300, sync_calls=2_000, concurrent_calls=10_000, pipeline_calls=5_000,
                   wrk_seconds=3.0, wrk_slices=1, wrk_warmup_seconds=1.0, soak_calls=50_000, soak_warmup=10_000,
                   soak_runs=1, scale_seconds=2.0, scale_warmup_seconds=0.5, detect_repeats=2,
                   rolling_before_seconds=2.0, rolling_after_seconds=1.0, heartbeat_pairs=1)


@dataclass
class Context:
    """What a benchmark's run needs: where to put sockets, who starts processes, how much to do."""

    workdir: Path
    processes: Processes
    settings: Settings
    run: int  # 0-based index of this run
    errors: list[str] = field(default_factory=list)
    _sockets: int = 0

    def ipc(self, name: str) -> str:
        self._sockets += 1
        return f"ipc://{self.workdir}/{name}-{self._sockets}.sock"

    def ordered(self, variants: list[str]) -> list[str]:
        return variants if self.run % 2 == 0 else variants[::-1]

    def each(self, variants: list[str], measure: Callable[[str], Figures]) -> dict[str, Figures]:
        """`measure` every variant (alternating the order by run); a failing one is noted in `errors`
        and the others are still measured."""
        found: dict[str, Figures] = {}
        for variant in self.ordered(variants):
            try:
                found[variant] = measure(variant)
            except (BenchError, RuntimeError, OSError) as err:
                self.errors.append(f"{variant}: {err}")
        return found


@dataclass(frozen=True)
class Benchmark:
    """One of the issue's benchmarks: `run(ctx)` measures every variant once, `{variant: figures}`."""

    name: str
    number: str
    title: str
    variants: tuple[str, ...]
    metrics: tuple[str, ...]
    run: Callable[[Context], dict[str, Figures]]


@dataclass(frozen=True)
class Target:
    """A target of the issue: `subject`'s `metric` as a ratio to `baseline`'s (at least `minimum`), or,
    without a baseline, the figure itself (at most `maximum`)."""

    benchmark: str
    subject: str
    metric: str
    baseline: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    label: str = field(default="")

    def met(self, value: float) -> bool:
        if self.minimum is not None and not value >= self.minimum:
            return False
        return not (self.maximum is not None and not value <= self.maximum)


# -- RPC benchmarks ----------------------------------------------------------------------------------------

#: The server and the client (bench.clients IMPL) of each RPC variant. `plain` (case 1) and `pipelined`
#: (case 2) are the same plain pyzmq client, called one at a time or kept `concurrency` calls in flight.
SERVER_OF = {"brubeck": "service", "plain": "plain-router", "pipelined": "plain-router", "raw": "raw-router",
             "zerorpc": "zerorpc"}
CLIENT_OF = {"brubeck": "service", "plain": "plain", "pipelined": "plain", "raw": "raw", "zerorpc": "zerorpc"}


def _rpc(ctx: Context, variant: str, mode: str, *options: str, timeout: float = 900.0,
         client_impl: str | None = None) -> Figures:
    """Start the variant's server, run one client against it, stop the server."""
    server = SERVER_OF[variant]
    address = ctx.ipc(server)
    process = ctx.processes.server(server, server, address)
    try:
        cpu = cpu_seconds(process.pid)
        figures = ctx.processes.client(f"{variant}-{mode}", client_impl or CLIENT_OF[variant], mode, address,
                                       *options, timeout=timeout)
        cpu = cpu_seconds(process.pid) - cpu
        ctx.processes.check_alive()
    finally:
        ctx.processes.stop(process)
    if "client_cpu_us" in figures and mode != "soak":
        # The server's CPU covers the client's warm-up too: divide by every call it served.
        served = figures["calls"] + _option(options, "--warmup") + 1
        figures["server_cpu_us"] = cpu / served * 1e6
    return figures


def _option(options: tuple[str, ...], name: str) -> int:
    for option in options:
        if option.startswith(f"{name}="):
            return int(option.partition("=")[2])
    return 0


def _sync(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    return ctx.each(["brubeck", "plain", "raw", "zerorpc"],
                    lambda v: _rpc(ctx, v, "sync", f"--calls={s.sync_calls}", f"--warmup={s.warmup}"))


def _concurrent(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    return ctx.each(["brubeck", "pipelined", "raw", "zerorpc"],
                    lambda v: _rpc(ctx, v, "concurrent", f"--calls={s.concurrent_calls}", f"--warmup={s.warmup}",
                                   f"--concurrency={s.concurrency}"))


def _pipeline(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    return ctx.each(["brubeck", "raw"],
                    lambda v: _rpc(ctx, v, "pipeline", f"--calls={s.pipeline_calls}", f"--warmup={s.warmup}"))


def _inflight(ctx: Context) -> dict[str, Figures]:
    """`call`: a greenlet per ServiceClient.call; `send`: ServiceClient.send; `raw`: a greenlet per raw call."""
    s = ctx.settings
    options = (f"--calls={s.inflight_calls}", f"--warmup={s.inflight_warmup}")
    return ctx.each(["call", "send", "raw"],
                    lambda v: _rpc(ctx, "raw" if v == "raw" else "brubeck", "inflight", *options,
                                   *(("--nowait",) if v == "send" else ())))


def _soak(ctx: Context) -> dict[str, Figures]:
    s = ctx.settings
    if ctx.run >= s.soak_runs:
        return {}
    return ctx.each(["brubeck"],
                    lambda v: _rpc(ctx, v, "soak", f"--calls={s.soak_calls}", f"--warmup={s.soak_warmup}",
                                   f"--concurrency={s.concurrency}", timeout=3600.0))


# -- HTTP through Mongrel2 ---------------------------------------------------------------------------------

#: Handler process per HTTP variant: raw floor, Brubeck hello, Brubeck calling the echo service, the floor
#: of a handler calling a service (plain pyzmq, one zmq.Poller loop, no gevent: `floor`) and, for
#: orientation, the same over zmq.green with two greenlets (`raw+call`), no greenlet per request either.
HANDLER_OF = {"raw": "raw-m2", "hello": "m2-hello", "service": "m2-service", "raw+call": "raw-m2-call",
              "floor": "floor-m2-call"}
#: The service process behind the variants that call one.
SERVICE_OF = {"service": "service", "raw+call": "raw-router", "floor": "plain-router"}
#: The HTTP variants, all up at once.
HTTP_VARIANTS = ["hello", "service", "raw", "raw+call", "floor"]


@dataclass
class _Site:
    """One HTTP variant, up: its Mongrel2, its processes, and what its wrk slices added up to."""

    url: str
    pids: list[int]  # handler, echo service (or the handler again), Mongrel2
    calls: float = 0.0
    seconds: float = 0.0
    errors: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


def _start_site(ctx: Context, stack: ExitStack, variant: str) -> _Site:
    from brubeck.testing import Mongrel2Server

    m2 = stack.enter_context(Mongrel2Server())
    addresses = [m2.send_spec, m2.recv_spec]
    started = []
    if variant in SERVICE_OF:
        service = SERVICE_OF[variant]
        service_addr = ctx.ipc(service)
        started.append(ctx.processes.server(service, service, service_addr))
        stack.callback(ctx.processes.stop, started[-1])
        addresses.append(service_addr)
    handler = HANDLER_OF[variant]
    started.append(ctx.processes.server(handler, handler, *addresses))
    stack.callback(ctx.processes.stop, started[-1])
    wait_http(m2.http_port)
    site = _Site(f"http://127.0.0.1:{m2.http_port}/", [started[-1].pid, started[0].pid, m2.pid or 0])
    wrk(site.url, connections=ctx.settings.wrk_connections, seconds=ctx.settings.wrk_warmup_seconds)
    return site


def _load(ctx: Context, site: _Site, seconds: float) -> None:
    """One wrk slice against `site`, added to its totals (CPU of its processes over the slice included)."""
    before = [cpu_seconds(pid) for pid in site.pids]
    figures = wrk(site.url, connections=ctx.settings.wrk_connections, seconds=seconds)
    site.cpu = [total + cpu_seconds(pid) - start for total, pid, start in zip(site.cpu, site.pids, before,
                                                                                strict=True)]
    site.calls += figures["calls"]
    site.seconds += figures["seconds"]
    site.errors += figures["errors"]
    site.p50.append(figures.get("p50_us", math.nan))
    site.p99.append(figures.get("p99_us", math.nan))


def _http(ctx: Context) -> dict[str, Figures]:
    """Every variant is up at once, and wrk visits them in turn, `wrk_slices` times (alternating the
    order), so that a change in the machine's load during the run falls on all of them alike."""
    s = ctx.settings
    with ExitStack() as stack:
        sites = ctx.each(HTTP_VARIANTS, lambda v: {"site": _start_site(ctx, stack, v)})
        order = [v for v in ctx.ordered(HTTP_VARIANTS) if v in sites]
        for index in range(s.wrk_slices):
            for variant in order if index % 2 == 0 else order[::-1]:
                try:
                    _load(ctx, sites[variant]["site"], s.wrk_seconds / s.wrk_slices)
                except (BenchError, RuntimeError, OSError) as err:
                    ctx.errors.append(f"{variant}: {err}")
                    del sites[variant]
            order = [v for v in order if v in sites]
        ctx.processes.check_alive()
        found: dict[str, Figures] = {}
        for variant in order:
            site: _Site = sites[variant]["site"]
            requests = max(1.0, site.calls)
            figures: Figures = {"rate": site.calls / site.seconds, "calls": site.calls, "seconds": site.seconds,
                                "errors": site.errors, "p50_us": median(site.p50), "p99_us": median(site.p99),
                                "server_cpu_us": site.cpu[0] / requests * 1e6,
                                "mongrel2_cpu_us": site.cpu[2] / requests * 1e6}
            if variant in SERVICE_OF:
                figures["service_cpu_us"] = site.cpu[1] / requests * 1e6
            found[variant] = figures
    return found


BENCHMARKS = (
    Benchmark("sync", "1", "sync calls, one caller", ("brubeck", "plain", "raw", "zerorpc"),
              ("rate", "p50_us", "p99_us", "client_cpu_us", "server_cpu_us"), _sync),
    Benchmark("concurrent", "2", "100 concurrent callers", ("brubeck", "pipelined", "raw", "zerorpc"),
              ("rate", "p50_us", "p99_us", "client_cpu_us", "server_cpu_us"), _concurrent),
    Benchmark("pipeline", "3", "nowait sends, replies counted", ("brubeck", "raw"),
              ("rate", "client_cpu_us", "server_cpu_us"), _pipeline),
    Benchmark("http", "4-5", "HTTP via Mongrel2 (wrk, 50 conns)", tuple(HTTP_VARIANTS),
              ("rate", "p50_us", "p99_us", "errors", "server_cpu_us", "service_cpu_us"), _http),
    Benchmark("inflight", "6a", "RSS per in-flight call (10k held)", ("call", "send", "raw"),
              ("bytes_per_call",), _inflight),
    Benchmark("soak", "6b", "RSS growth over 1M calls, 100 in flight", ("brubeck",),
              ("rate", "rss_before", "rss_after", "growth_pct"), _soak),
    Benchmark("scale", "7", "CPU-bound 20 ms handler, capacity 1, 8 callers", tuple(workers.SCALE_WORKERS),
              ("rate", "p50_ms", "cores", "client_cpu_us", "failed"), workers.scale),
    Benchmark("detect", "8", "ms from a fault to: failed call, dead", tuple(workers.FAULTS),
              ("fail_ms", "fail_max_ms", "dead_ms", "dead_max_ms", "alive_ms", "alive_max_ms"), workers.detect),
    Benchmark("rolling", "9", "SIGHUP rolling restart, 16 callers", (workers.ROLLING,),
              ("failed", "calls", "roll_s", "rate_before", "rate_during", "during_pct"), workers.rolling),
    Benchmark("heartbeat-cost", "10", "case 1 with client heartbeats on / off", tuple(workers.HEARTBEATS),
              ("rate", "p50_us", "client_cpu_us", "server_cpu_us", "cost_pct"), workers.heartbeat_cost),
)

TARGETS = (
    Target("sync", "brubeck", "rate", baseline="plain", minimum=0.8, label="1 sync vs plain pyzmq"),
    Target("sync", "brubeck", "rate", baseline="zerorpc", minimum=2.5, label="1 sync vs zerorpc"),
    Target("sync", "brubeck", "rate", baseline="raw", label="1 sync vs raw zmq.green (no target)"),
    Target("concurrent", "brubeck", "rate", baseline="pipelined", minimum=0.5, label="2 x100 vs pipelined pyzmq"),
    Target("concurrent", "brubeck", "rate", baseline="zerorpc", minimum=3.0, label="2 x100 vs zerorpc"),
    Target("concurrent", "brubeck", "rate", baseline="raw", label="2 x100 vs raw zmq.green (no target)"),
    Target("pipeline", "brubeck", "rate", baseline="raw", label="3 nowait vs raw (no target)"),
    Target("http", "hello", "rate", baseline="raw", minimum=0.85, label="4 HTTP hello vs raw handler"),
    Target("http", "service", "rate", baseline="floor", minimum=0.6, label="5 HTTP+service call vs floor"),
    Target("http", "service", "rate", baseline="raw", label="5 HTTP+service vs raw handler (no target)"),
    Target("http", "floor", "rate", baseline="raw", label="5 floor vs raw handler (no target)"),
    Target("http", "raw+call", "rate", baseline="raw", label="5 raw+call vs raw handler (no target)"),
    Target("http", "service", "rate", baseline="raw+call", label="5 HTTP+service vs raw+call (no target)"),
    Target("inflight", "call", "bytes_per_call", maximum=10 * 1024, label="6 bytes per in-flight call()"),
    Target("inflight", "send", "bytes_per_call", maximum=10 * 1024, label="6 bytes per in-flight send()"),
    Target("soak", "brubeck", "growth_pct", maximum=5.0, label="6 RSS growth over the soak, %"),
    Target("scale", "2 workers", "rate", baseline="1 worker", minimum=1.8, label="7 CPU-bound: 2 workers vs 1"),
    Target("detect", "SIGSTOP", "fail_ms", label="8 SIGSTOP to failed call, ms (no target)"),
    Target("detect", "cut link", "fail_ms", label="8 cut link to failed call, ms (no target)"),
    Target("rolling", workers.ROLLING, "failed", label="9 failed calls, rolling restart (0 expected)"),
    Target("heartbeat-cost", "hb on", "cost_pct", maximum=5.0, label="10 cost of heartbeats on case 1, %"),
)


def _names(benchmark: Benchmark) -> set[str]:
    """What `--only` accepts for a benchmark: its name, its number, and the issue's numbers it covers."""
    parts = benchmark.number.split("-")
    return {benchmark.name, benchmark.number, *parts, *(part.rstrip("ab") for part in parts)}


def select(only: list[str] | None) -> list[Benchmark]:
    """The benchmarks named in `only` (by name or number: `http`, `4`, `6` for 6a and 6b); all when empty."""
    if not only:
        return list(BENCHMARKS)
    wanted = set(only)
    unknown = wanted - set().union(*(_names(b) for b in BENCHMARKS))
    if unknown:
        names = ", ".join(f"{b.name} ({b.number})" for b in BENCHMARKS)
        raise ValueError(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {names}")
    return [b for b in BENCHMARKS if _names(b) & wanted]
