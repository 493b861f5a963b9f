"""Profile the processes of one benchmark case under load with py-spy: `python -m bench.profile CASE`.

Starts the case's server(s) like the bench does, drives them (a bench client, or wrk through Mongrel2),
attaches `py-spy record` to every Python process for `--seconds`, and prints the functions with the most
samples, inclusive and self, per process. The collapsed stacks are kept in `--out` for flame graphs.

    CASE            processes profiled            load
    sync            client, service               one sequential caller
    concurrent      client, service               100 greenlets calling
    pipeline        client, service               nowait sends
    hello           Brubeck hello handler         wrk, 50 connections
    http-service    web handler, echo service     wrk, 50 connections

py-spy samples wall-clock time of running threads (`--nonblocking`: without pausing them). On a busy
machine a thread that is runnable but preempted still counts, so self time right after a call that wakes
another thread (a zmq send) is inflated; `bench.hotpath` gives undisturbed per-step costs. Needs py-spy:
`.venv/bin/pip install py-spy`. Stacks with no Python frame (the gevent hub's C loop, greenlet switches)
are shown as `<native>`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.httpload import wait_http, wrk
from bench.procs import ROOT, Processes

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")
_CLIENT_MODE = {"sync": "sync", "concurrent": "concurrent", "pipeline": "pipeline"}


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("bench.profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def short(frame: str) -> str:
    """`function (path:line)` with the path cut to the package: `Channel.send (brubeck/transports/...)`."""
    match = _FRAME.match(frame)
    if match is None:
        return frame or "<native>"
    path = match["path"]
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['function']} ({path}:{match['line']})"


def summarize(collapsed: Path, top: int) -> str:
    """Inclusive and self shares of samples per function, from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")] if stack else ["<native>"]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "  no samples"
    lines = [f"  {total} samples", "  inclusive:"]
    lines += [f"  {100 * n / total:6.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("  self:")
    lines += [f"  {100 * n / total:6.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def record(pid: int, path: Path, seconds: float, rate: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([py_spy(), "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate),
                             "--function", "--nonblocking", "--format", "raw", "-o", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=[*_CLIENT_MODE, "hello", "http-service"])
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to sample")
    parser.add_argument("--rate", type=int, default=400, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, help="where the collapsed stacks go (default: a temp dir)")
    args = parser.parse_args(argv)
    py_spy()
    out = args.out or Path(tempfile.mkdtemp(prefix="brubeck-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="brubeck-profile-run-"))
    recorded: list[tuple[str, Path]] = []
    with Processes(workdir) as processes:
        if args.case in _CLIENT_MODE:
            address = f"ipc://{workdir}/service.sock"
            service = processes.server("service", "service", address)
            # Enough calls to outlast the sampling; the client is stopped when sampling ends.
            client = subprocess.Popen([sys.executable, "-m", "bench.clients", "service", _CLIENT_MODE[args.case],
                                       address, "--calls=10000000", "--warmup=2000"], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                time.sleep(1.5)  # past the warm-up; sampling a longer window only adds steady state
                spies = [record(p, out / f"{name}.txt", args.seconds, args.rate)
                         for name, p in (("client", client.pid), ("service", service.pid))]
                for spy in spies:
                    spy.wait()
            finally:
                processes.stop(client)
            recorded = [("client", out / "client.txt"), ("service", out / "service.txt")]
        else:
            from brubeck.testing import Mongrel2Server

            with Mongrel2Server() as m2:
                addresses = [m2.send_spec, m2.recv_spec]
                pids: list[tuple[str, int]] = []
                if args.case == "http-service":
                    service_addr = f"ipc://{workdir}/service.sock"
                    pids.append(("service", processes.server("service", "service", service_addr).pid))
                    addresses.append(service_addr)
                kind = "m2-service" if args.case == "http-service" else "m2-hello"
                pids.insert(0, ("handler", processes.server(kind, kind, *addresses).pid))
                wait_http(m2.http_port)
                url = f"http://127.0.0.1:{m2.http_port}/"
                wrk(url, connections=50, seconds=2)
                spies = [record(pid, out / f"{name}.txt", args.seconds, args.rate) for name, pid in pids]
                figures = wrk(url, connections=50, seconds=args.seconds + 2)
                for spy in spies:
                    spy.wait()
                print(f"wrk: {figures['rate']:,.0f} requests/s")
                recorded = [(name, out / f"{name}.txt") for name, _ in pids]
    for name, path in recorded:
        print(f"\n== {name} ({path})")
        print(summarize(path, args.top) if path.exists() else "  py-spy wrote nothing (is ptrace allowed?)")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
