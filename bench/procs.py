"""Starting, waiting for and stopping the benchmark's processes, so that none outlives the run.

Every server is `python -m bench.servers ...` in its own session (process group); it is ready when it
prints `READY`, read with a deadline, never after a fixed sleep. Clients run to completion under a timeout
and hand back the JSON object on their last line. `Processes.close()` (also on SIGINT/SIGTERM, through
the context manager) terminates every group still running, then kills what did not stop.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from bench.payload import READY

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (libzmq's I/O thread too), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    # "pid (comm) state ppid ..." with utime and stime the 14th and 15th fields; comm may hold spaces.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class BenchError(RuntimeError):
    """A process of the benchmark failed: its message ends with the tail of that process's stderr."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def await_ready(process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    """Return once `process` printed READY on its stdout pipe; BenchError (with its log's tail) when it did not
    within `timeout` seconds or exited first."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while READY.encode() not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{what} not ready after {timeout:g}s\n{_tail(log)}")
            if selector.select(remaining):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    raise BenchError(f"{what} exited with {process.wait()} before it was ready\n{_tail(log)}")
                buffer += chunk


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Processes:
    """The servers of one benchmark run; a context manager that stops them all on the way out."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._count = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _log(self, name: str) -> Path:
        self._count += 1
        return self.workdir / f"{self._count:03d}-{name}.err"

    def server(self, name: str, *args: str, timeout: float = READY_TIMEOUT) -> subprocess.Popen[bytes]:
        """Start `python -m bench.servers ARGS` and return once it printed READY (else BenchError)."""
        log = self._log(name)
        with log.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.servers", *args], cwd=ROOT, env=_environment(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self._running.append((name, process))
        await_ready(process, f"server {name}", log, timeout)
        return process

    def client(self, name: str, *args: str, timeout: float) -> dict[str, Any]:
        """Run `python -m bench.clients ARGS` to the end; its figures (the JSON on its last line)."""
        log = self._log(name)
        with log.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.clients", *args], cwd=ROOT, env=_environment(),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        self._running.append((name, process))
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(process)
            raise BenchError(f"client {name} did not finish in {timeout:g}s\n{_tail(log)}") from None
        except BaseException:  # interrupted: leave no client behind
            self.stop(process)
            raise
        finally:
            self._forget(process)
        if process.returncode != 0:
            raise BenchError(f"client {name} exited with {process.returncode}\n{_tail(log)}")
        lines = out.decode(errors="replace").strip().splitlines()
        if not lines:
            raise BenchError(f"client {name} printed no figures\n{_tail(log)}")
        figures: dict[str, Any] = json.loads(lines[-1])
        return figures

    def check_alive(self) -> None:
        """Raise BenchError if a server died: a figure measured against a dead server means nothing."""
        for name, process in self._running:
            if process.poll() is not None:
                raise BenchError(f"server {name} exited with {process.returncode} during the run")

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        self._running = [(n, p) for n, p in self._running if p is not process]

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM the process's group, SIGKILL it if it is still there after STOP_TIMEOUT."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if process.poll() is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                continue
        if process.stdout is not None:
            process.stdout.close()
        self._forget(process)

    def close(self) -> None:
        for _, process in list(reversed(self._running)):
            self.stop(process)
