"""The client side of the many-workers benchmarks (bench/workers.py), one process per measurement:
`python -m bench.worker_clients MODE ...`. The workers are `bench/worker_app.py`, in processes of their own.

    load ADDR[,ADDR]  `--concurrency` greenlets of one ServiceClient call `--path` in a loop for `--seconds`
                      after `--warmup` seconds: calls/s, p50/p99 latency, the CPU the workers (`--pids`) and
                      this client used over that time, in cores
    detect FAULT      `--repeats` times: a call in flight on a worker, then the fault (`kill`: SIGKILL,
                      `stop`: SIGSTOP, `cut`: its network namespace's link set down), and the ms from the
                      fault until that call fails with ServiceUnavailable, until `client.workers` says the
                      worker is dead, and (stop, cut) after SIGCONT or the link's restore until it is alive
    rolling           `python -m brubeckservice run bench/worker_app.py --workers 3` under load from
                      `--concurrency` callers making short calls, then SIGHUP: calls made, calls failed, how
                      long the roll took (SIGHUP to the supervisor's "rolling restart done"), calls/s before,
                      during and after it

`detect` and `rolling` start the worker processes (or the supervisor) themselves and inflict the fault
themselves, so that the fault and the client noticing it are read off one clock in one process, with no
message between processes in the measured interval. The result is one JSON object on the last line of
stdout.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import gevent
import gevent.select
import msgspec
from greenlet import getcurrent

from bench.payload import ECHO_PATH, PASSPHRASE, PAYLOAD, READY
from bench.procs import ROOT, cpu_seconds
from bench.stats import median, percentile

APP = ROOT / "bench" / "worker_app.py"
#: The longest any one wait (a worker starting, a state changing, a fault being noticed) may take before
#: the measurement is reported as failed.
WAIT = 30.0
#: The port a worker binds inside its network namespace (each namespace has all its ports free).
NETNS_PORT = 7000
#: A caller whose call failed waits this long before its next one, so that a worker that refuses calls at
#: once does not turn one failure into thousands.
AFTER_FAILURE = 0.01

Figures = dict[str, Any]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT, poll: float = 0.001) -> float:
    """Poll `predicate` every `poll` s, yielding to other greenlets; the time.monotonic() it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout:g}s for {what}")
        gevent.sleep(poll)
    return time.monotonic()


def _alive(client: Any) -> int:
    return sum(info.state == "alive" for info in client.workers)


# -- worker processes -------------------------------------------------------------------------------------

Popen = Callable[..., "subprocess.Popen[bytes]"]


def start_worker(address: str, capacity: int | None, popen: Popen = subprocess.Popen) -> subprocess.Popen[bytes]:
    """`python bench/worker_app.py ADDRESS` (through `popen`: a network namespace's, say), once it printed
    READY. Its stderr is ours (this process's log)."""
    argv = [sys.executable, str(APP), address, *(["--capacity", str(capacity)] if capacity is not None else [])]
    process: subprocess.Popen[bytes] = popen(argv, cwd=ROOT, env=_environment(), stdin=subprocess.DEVNULL,
                                             stdout=subprocess.PIPE)
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + WAIT
    buffer = b""
    while READY.encode() not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stop_worker(process)
            raise RuntimeError(f"worker {address} not ready after {WAIT:g}s")
        if gevent.select.select([fd], [], [], remaining)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"worker {address} exited with {process.wait()} before it was ready")
            buffer += chunk
    return process


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGCONT)
            process.kill()
        except ProcessLookupError:
            pass
    process.wait(WAIT)
    if process.stdout is not None:
        process.stdout.close()


# -- load: throughput over a fixed time ------------------------------------------------------------------


def run_load(addresses: Sequence[str], expect: int, path: str, arguments: dict[str, Any], concurrency: int,
             seconds: float, warmup: float, pids: Sequence[int]) -> Figures:
    from brubeckservice import ServiceClient, ServiceError

    client = ServiceClient(list(addresses), passphrase=PASSPHRASE, timeout=WAIT)
    _wait_until(lambda: _alive(client) >= expect, f"{expect} workers alive")
    finished: array[float] = array("d")  # when each successful call returned
    latencies: array[float] = array("d")
    served: list[int] = []  # the pid that served each
    failures: list[float] = []
    stopping = [False]

    def caller() -> None:
        while not stopping[0]:
            begin = time.monotonic()
            try:
                response = client.call(path, "request", arguments)
            except ServiceError:
                failures.append(time.monotonic())
                gevent.sleep(AFTER_FAILURE)
                continue
            end = time.monotonic()
            if response.status_code != 200:
                failures.append(end)
                continue
            finished.append(end)
            latencies.append(end - begin)
            served.append(int(response.body.get("pid", 0)))

    callers = [gevent.spawn(caller) for _ in range(concurrency)]
    gevent.sleep(warmup)
    started = time.monotonic()
    cpu = [cpu_seconds(pid) for pid in pids]
    own = time.process_time()
    gevent.sleep(seconds)
    ended = time.monotonic()
    cpu = [cpu_seconds(pid) - before for pid, before in zip(pids, cpu, strict=True)]
    own = time.process_time() - own
    stopping[0] = True
    gevent.joinall(callers, timeout=WAIT)
    client.close()
    first, last = bisect.bisect_left(finished, started), bisect.bisect_right(finished, ended)
    calls = last - first
    window = ended - started
    ordered = sorted(latencies[first:last])
    by_pid = Counter(served[first:last])
    return {"calls": calls, "seconds": window, "rate": calls / window, "concurrency": concurrency,
            "p50_ms": percentile(ordered, 50) * 1000, "p99_ms": percentile(ordered, 99) * 1000,
            "cores": sum(cpu) / window, "client_cores": own / window,
            "client_cpu_us": own / max(1, calls) * 1e6, "workers_used": len(by_pid),
            "failed": len(failures), "served_by": sorted(by_pid.values())}


# -- detect: a fault, and how long the client takes to notice it --------------------------------------------


def _netns_host(stack: ExitStack) -> tuple[Any, str | None]:
    """A network namespace (tests/brubeckservice/netns.py) to put the worker in, or why there is none."""
    try:
        from tests.brubeckservice import netns
    except ImportError as err:
        return None, f"tests/brubeckservice/netns.py cannot be imported: {err}"
    reason = netns.netns_available()
    if reason is not None:
        return None, reason
    host = stack.enter_context(netns.hosts(1))[0]
    return host, None


def run_detect(fault: str, repeats: int, workdir: Path, hold: float) -> Figures:
    from brubeckservice import ServiceClient, ServiceError, ServiceUnavailable

    with ExitStack() as stack:
        popen: Popen = subprocess.Popen
        host: Any = None
        if fault == "cut":
            host, reason = _netns_host(stack)
            if host is None:
                return {"note": f"not measured: {reason}"}
            popen = host.popen
            bind, address = f"tcp://0.0.0.0:{NETNS_PORT}", f"tcp://{host.address}:{NETNS_PORT}"
        else:
            bind = address = f"ipc://{workdir}/detect-{fault}-{os.getpid()}.sock"
        worker = [start_worker(bind, None, popen)]
        stack.callback(lambda: stop_worker(worker[0]))
        client = ServiceClient(address, passphrase=PASSPHRASE, timeout=WAIT)
        stack.callback(client.close, 0)

        def state() -> str:
            return str(client.workers[0].state)

        fail_ms: list[float] = []
        dead_ms: list[float] = []
        alive_ms: list[float] = []
        for _ in range(repeats):
            _wait_until(lambda: state() == "alive", "the worker to be alive", poll=0.005)
            outcome: dict[str, Any] = {}

            def one_call(outcome: dict[str, Any] = outcome) -> None:
                try:
                    client.call("/sleep", "request", {"seconds": hold}, timeout=hold + WAIT)
                    outcome["error"] = "the call in flight was answered: the fault was not noticed"
                except ServiceUnavailable:
                    outcome["failed_at"] = time.monotonic()
                except ServiceError as err:
                    outcome["error"] = f"the call in flight failed with {type(err).__name__}: {err}"

            caller = gevent.spawn(one_call)
            _wait_until(lambda: client.workers[0].inflight == 1, "the call to be sent")
            # ZeroMQ keeps order on a connection: once the worker answers this PING, it has the call.
            client.ping(timeout=WAIT)
            dead_at: list[float] = []

            def watch(dead_at: list[float] = dead_at) -> None:
                dead_at.append(_wait_until(lambda: state() == "dead", "the worker to be seen dead"))

            watcher = gevent.spawn(watch)
            process = worker[0]
            if fault == "cut":
                host.cut("down")
                faulted = time.monotonic()  # (the link is down once `ip` returns)
            else:
                faulted = time.monotonic()
                os.kill(process.pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
            caller.join(WAIT + 1)
            watcher.join(WAIT + 1)
            if "failed_at" not in outcome:
                raise RuntimeError(outcome.get("error", f"the call in flight did not fail within {WAIT:g}s"))
            if not dead_at:
                raise RuntimeError(f"the worker was not seen dead within {WAIT:g}s: {watcher.exception}")
            fail_ms.append((outcome["failed_at"] - faulted) * 1000)
            dead_ms.append((dead_at[0] - faulted) * 1000)
            if fault == "kill":
                process.wait(WAIT)
                stop_worker(process)
                worker[0] = start_worker(bind, None, popen)  # the next repetition waits for it to be alive
                continue
            if fault == "cut":
                host.restore()
                restored = time.monotonic()
            else:
                restored = time.monotonic()
                os.kill(process.pid, signal.SIGCONT)
            back = _wait_until(lambda: state() == "alive", "the worker to be alive again")
            alive_ms.append((back - restored) * 1000)
        stats = client.stats
        figures: Figures = {"repeats": repeats, "fail_ms": median(fail_ms), "fail_max_ms": max(fail_ms),
                            "dead_ms": median(dead_ms), "dead_max_ms": max(dead_ms),
                            "fail_ms_each": fail_ms, "dead_ms_each": dead_ms, "lost": stats["lost"]}
        if alive_ms:
            figures.update(alive_ms=median(alive_ms), alive_max_ms=max(alive_ms), alive_ms_each=alive_ms)
        return figures


# -- rolling: a rolling restart under load -----------------------------------------------------------------


class _Log:
    """The lines a process writes to a file, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[str]:
        with self.path.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.lines.extend(line.decode(errors="replace") for line in complete)
        return self.lines

    def wait_for(self, text: str, count: int = 1, after: int = 0, timeout: float = WAIT,
                 process: subprocess.Popen[bytes] | None = None) -> float:
        """Poll (every 10 ms) until `count` lines after the first `after` hold `text`; when that was seen."""
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.read()[after:]) < count:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the supervisor exited ({process.returncode}) before logging {text!r}:\n"
                                   + "\n".join(self.lines[-10:]))
            if time.monotonic() > deadline:
                raise RuntimeError(f"the supervisor did not log {text!r} within {timeout:g}s:\n"
                                   + "\n".join(self.lines[-10:]))
            gevent.sleep(0.01)
        return time.monotonic()


def run_rolling(workdir: Path, workers: int, capacity: int, concurrency: int, warmup: float, before: float,
                after: float, grace: float) -> Figures:
    from brubeckservice import ServiceClient, ServiceError

    bind = f"ipc://{workdir}/rolling-{os.getpid()}.sock"
    log = _Log(workdir / f"rolling-{os.getpid()}-supervisor.log")
    with log.path.open("wb") as err:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "brubeckservice", "run", str(APP), "--workers", str(workers), "--bind", bind,
             "--grace", f"{grace:g}", "--", "--capacity", str(capacity)],
            cwd=ROOT, env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    client = None
    try:
        log.wait_for(" serving ", count=workers, process=supervisor)
        # Given worker 0's address only, as `brubeck-service run --help` says: it learns the others from PONG.
        client = ServiceClient(bind, passphrase=PASSPHRASE, timeout=WAIT)
        _wait_until(lambda: _alive(client) >= workers, f"{workers} workers alive")
        finished: array[float] = array("d")
        served: array[int] = array("q")
        failed: array[float] = array("d")
        failures: Counter[str] = Counter()
        stopping = [False]

        def caller() -> None:
            while not stopping[0]:
                try:
                    response = client.call(ECHO_PATH, "request", PAYLOAD)
                except ServiceError as exc:
                    failed.append(time.monotonic())
                    failures[f"{type(exc).__name__}: {exc}"] += 1
                    gevent.sleep(AFTER_FAILURE)
                    continue
                if response.status_code != 200:
                    failed.append(time.monotonic())
                    failures[f"status {response.status_code} {response.status_msg}"] += 1
                    continue
                finished.append(time.monotonic())
                served.append(int(response.body.get("pid", 0)))

        callers = [gevent.spawn(caller) for _ in range(concurrency)]
        gevent.sleep(warmup)
        started = time.monotonic()
        gevent.sleep(before)
        logged = len(log.read())
        hup = time.monotonic()
        os.kill(supervisor.pid, signal.SIGHUP)
        done = log.wait_for("rolling restart done", after=logged, timeout=workers * (grace + WAIT),
                            process=supervisor)
        gevent.sleep(after)
        ended = time.monotonic()
        stopping[0] = True
        gevent.joinall(callers, timeout=WAIT)
        alive_after = _alive(client)
    finally:
        if client is not None:
            client.close()
        supervisor.terminate()
        try:
            supervisor.wait(grace + WAIT)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait()

    def ok(low: float, high: float) -> int:
        return bisect.bisect_left(finished, high) - bisect.bisect_left(finished, low)

    def pids(low: float, high: float) -> set[int]:
        return set(served[bisect.bisect_left(finished, low):bisect.bisect_left(finished, high)])

    during = finished[bisect.bisect_left(finished, hup):bisect.bisect_left(finished, done)]
    gaps = [b - a for a, b in zip([hup, *during], [*during, done], strict=True)]
    rate_before = ok(started, hup) / (hup - started)
    rate_during = ok(hup, done) / (done - hup)
    before_pids, after_pids = pids(started, hup), pids(done, ended)
    figures: Figures = {
        "calls": ok(started, ended) + sum(1 for t in failed if started <= t <= ended), "failed": len(failed),
        "roll_s": done - hup, "rate_before": rate_before, "rate_during": rate_during,
        "rate_after": ok(done, ended) / (ended - done), "during_pct": 100 * rate_during / rate_before,
        "max_gap_ms": max(gaps) * 1000, "workers_after": len(after_pids),
        "replaced": len(after_pids - before_pids), "alive_after": alive_after, "concurrency": concurrency,
        "failures": [f"{count} x {what}" for what, count in failures.most_common(5)],
        "supervisor_log": [line for line in log.lines if "rolling restart" in line],
    }
    if failed:
        figures["note"] = f"{len(failed)} calls failed, most often {failures.most_common(1)[0][0]}"
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_clients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    load = modes.add_parser("load", help="calls/s of --concurrency callers for --seconds")
    load.add_argument("addresses", help="the workers' addresses, comma-separated")
    load.add_argument("--expect", type=int, default=1, help="how many workers to wait for")
    load.add_argument("--path", default="/cpu")
    load.add_argument("--ms", type=float, default=20.0, help="/cpu: milliseconds of CPU per call")
    load.add_argument("--concurrency", type=int, default=8)
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--warmup", type=float, default=1.0)
    load.add_argument("--pids", default="", help="the workers' pids (comma-separated), for their CPU time")
    detect = modes.add_parser("detect", help="ms from a fault to the client noticing")
    detect.add_argument("fault", choices=["kill", "stop", "cut"])
    detect.add_argument("--repeats", type=int, default=5)
    detect.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    detect.add_argument("--hold", type=float, default=10.0, help="seconds the call in flight sleeps")
    rolling = modes.add_parser("rolling", help="a SIGHUP rolling restart under load")
    rolling.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    rolling.add_argument("--workers", type=int, default=3)
    rolling.add_argument("--capacity", type=int, default=8)
    rolling.add_argument("--concurrency", type=int, default=16)
    rolling.add_argument("--warmup", type=float, default=1.0)
    rolling.add_argument("--before", type=float, default=5.0, help="seconds of load before the SIGHUP")
    rolling.add_argument("--after", type=float, default=2.0, help="seconds of load after the roll")
    rolling.add_argument("--grace", type=float, default=30.0, help="the supervisor's --grace (its default)")
    args = parser.parse_args(argv)
    # The log (stderr, kept by bench/run when something fails) says what the client saw happen to each worker.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, datefmt="%H:%M:%S",
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s")
    logging.getLogger("brubeckservice.pool").setLevel(logging.INFO)
    # Stopped by bench/run (SIGTERM to our session): unwind, so that what we started (workers, a supervisor,
    # a network namespace) is stopped and removed on the way out.
    gevent.signal_handler(signal.SIGTERM, gevent.kill, getcurrent(), SystemExit(128 + signal.SIGTERM))

    if args.mode == "load":
        arguments = {"ms": args.ms} if args.path == "/cpu" else dict(PAYLOAD)
        figures = run_load(args.addresses.split(","), args.expect, args.path, arguments, args.concurrency,
                           args.seconds, args.warmup, [int(p) for p in args.pids.split(",") if p])
    elif args.mode == "detect":
        figures = run_detect(args.fault, args.repeats, args.workdir, args.hold)
    else:
        figures = run_rolling(args.workdir, args.workers, args.capacity, args.concurrency, args.warmup,
                              args.before, args.after, args.grace)
    sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
