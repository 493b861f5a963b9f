"""What the demo's launcher prints: each process's lines, tagged, and Mongrel2's log files, followed.

Lines from different threads never mix: every line goes through `emit`, under one lock. Mongrel2 writes
its logs to files, not to a pipe we could read, so `LogFollower` reads them as `tail -F` would, and puts
its access log (tnetstring lists) in words.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import tnetstring  # a dependency of brubeck; the demo runs with the virtualenv's Python

_print_lock = threading.RLock()  # reentrant: never a deadlock, whatever thread or handler prints


def emit(tag: str, text: str) -> None:
    """Print lines tagged with the process they come from; lines from different threads never mix."""
    with _print_lock, contextlib.suppress(BrokenPipeError, ValueError):
        for line in text.splitlines() or [""]:
            print(f"[{tag}] {line}", flush=True)


def say(text: str) -> None:
    emit("demo", text)


def pump(tag: str, stream: IO[str]) -> None:
    """Copy a child's output, line by line, until it closes its end."""
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            emit(tag, line.rstrip("\n"))


#: Paths whose requests are not echoed: the status page polls its data once a second.
QUIET_PATHS = frozenset({b"/status"})  # (as tnetstring reads a path: bytes)


def access_line(line: str) -> str | None:
    """Mongrel2's access log line (a tnetstring list) in words: "127.0.0.1 GET /path HTTP/1.1 (...)"; None
    for a request to one of QUIET_PATHS.

    Without the status it records, which is not the response's: for a request routed to a handler, Mongrel2
    1.12.2 logs 200, and the request body's size, the moment it hands the request on (src/connection.c,
    connection_http_to_handler), before the web app has answered. The web app's own line, tagged [client],
    has the status it sent.
    """
    try:
        _host, remote_addr, _port, _time, method, path, version, *_ = tnetstring.loads(line.encode())
    except Exception:  # a line we cannot read is shown as it is
        return line
    if path in QUIET_PATHS:
        return None
    words = " ".join(str(part, "utf-8", "replace") if isinstance(part, bytes) else str(part)
                     for part in (remote_addr, method, path, version))
    return f"{words} (handed to the web app)"


class LogFollower(threading.Thread):
    """`tail -F` for Mongrel2's log files: it writes to files, not to a pipe we could read."""

    def __init__(self, tag: str, paths: Iterable[Path], access_log: Path) -> None:
        super().__init__(name=f"follow-{tag}", daemon=True)
        self.tag = tag
        self.access_log = access_log
        # Lines already there are an earlier run's: start at the current end of each file.
        self.offsets = {path: _size(path) for path in (*paths, access_log)}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.read_new()
        self.read_new()  # what was written just before we were told to stop

    def read_new(self) -> None:
        for path, known in self.offsets.items():
            size = _size(path)
            start = 0 if size < known else known  # a file that shrank was truncated or replaced
            if size == start:
                continue
            with contextlib.suppress(OSError), path.open("rb") as file:
                file.seek(start)
                data = file.read()
                # Keep a partial last line for the next round.
                complete = data[: data.rfind(b"\n") + 1]
                self.offsets[path] = start + len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    if line.strip():
                        shown = access_line(line) if path == self.access_log else line
                        if shown is not None:
                            emit(self.tag, shown)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=2)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
