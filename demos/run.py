#!/usr/bin/env python3
"""Run the whole demo in one terminal: Mongrel2, the slow service and the web app, until Ctrl-C.

    bash demos/run [--port 6767] [--delay SECONDS] [--wsgi]

`demos/run` sets up the virtualenv and Mongrel2 when they are missing, then runs this file with the venv's
Python. In order, it:

1. checks the HTTP port is free, and makes demos/var/ with Mongrel2's log/ and run/ directories;
2. loads demos/mongrel2.conf into demos/var/config.sqlite and starts Mongrel2 there (`m2sh load`,
   `m2sh start`, in demos/var/: the config's chroot is '.'). As root Mongrel2 chroots into demos/var/ and
   daemonizes, so we know it by its pid file; as another user it stays in the foreground;
3. starts demo_service.py and demo_service_client.py, and prints every line the three write, tagged
   [mongrel2] (its log files, followed), [service] and [client];
4. prints the URL once the index page answers;
5. on Ctrl-C or SIGTERM stops the web app, the service and Mongrel2 (politely, then by force after a
   deadline) and removes the pid file, the ipc sockets and config.sqlite. The logs stay in demos/var/log/.

Without Mongrel2 (not installed, or it fails to start) the web app serves HTTP itself over WSGI on the
same port, and the service runs as usual. `--wsgi` asks for that. `--delay` (or DEMO_SERVICE_DELAY) sets
how long the service takes per request, 5 s by default.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import getpass
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import IO

import tnetstring  # a dependency of brubeck; this runs with the virtualenv's Python

from brubeck.testing import port_in_use, process_alive

DEMOS_DIR = Path(__file__).resolve().parent
# Where m2sh runs, so Mongrel2's chroot ('.'); the services' relative ipc:// paths resolve here too. Not
# demos/ itself: demos/run is the launcher script, so Mongrel2's run/ directory cannot be there.
RUNTIME_DIR = DEMOS_DIR / "var"
CONFIG = DEMOS_DIR / "mongrel2.conf"
DB = RUNTIME_DIR / "config.sqlite"
LOG_DIR = RUNTIME_DIR / "log"
RUN_DIR = RUNTIME_DIR / "run"
PID_FILE = RUN_DIR / "mongrel2.pid"
M2SH_LOG = LOG_DIR / "m2sh.log"
ERROR_LOG = LOG_DIR / "error.log"
ACCESS_LOG = LOG_DIR / "access.log"
MONGREL2_LOGS = (M2SH_LOG, ERROR_LOG, ACCESS_LOG)
# Socket files left in run/: the service's (it removes its own on a clean stop, not when killed) and
# Mongrel2's control port, which Mongrel2 never removes.
SOCKET_FILES = (RUN_DIR / "slow", RUN_DIR / "slow_response", RUN_DIR / "control")

DEFAULT_PORT = 6767
HANDLER_PORTS = (9999, 9998)  # demos/mongrel2.conf's send_spec and recv_spec
HOST = "localhost"  # the Mongrel2 host the config names

START_TIMEOUT = 10.0  # for Mongrel2 to serve, and for each m2sh command
READY_TIMEOUT = 30.0  # for the index page to answer once everything is started
STOP_TIMEOUT = 5.0  # for each process to stop politely before it is killed

# Lines Mongrel2 writes when it will not serve (its m2sh start still exits 0).
FATAL_MARKERS = ("Exiting due to error", "Aborting since", "Failed to bind send socket",
                 "Failed to bind recv socket", "HANDLER TASK DIED")

PR_SET_CHILD_SUBREAPER = 36


class DemoError(Exception):
    """Something the person running the demo must fix (or be told about); the message says what."""


# -- output ---------------------------------------------------------------------------------------------

_print_lock = threading.RLock()  # reentrant: never a deadlock, whatever thread or handler prints


def emit(tag: str, text: str) -> None:
    """Print one line tagged with the process it comes from; lines from different threads never mix."""
    with _print_lock, contextlib.suppress(BrokenPipeError, ValueError):
        print(f"[{tag}] {text}", flush=True)


def say(text: str) -> None:
    emit("demo", text)


def pump(tag: str, stream: IO[str]) -> None:
    """Copy a child's output, line by line, until it closes its end."""
    with contextlib.suppress(OSError, ValueError):
        for line in stream:
            emit(tag, line.rstrip("\n"))


def access_line(line: str) -> str:
    """Mongrel2's access log line (a tnetstring list) in words: "127.0.0.1 GET /path HTTP/1.1 200"."""
    try:
        entry = tnetstring.loads(line.encode())
        _host, remote_addr, _port, _time, method, path, version, status, *_ = entry
    except Exception:  # a line we cannot read is shown as it is
        return line
    return " ".join(str(part, "utf-8", "replace") if isinstance(part, bytes) else str(part)
                    for part in (remote_addr, method, path, version, status))


class LogFollower(threading.Thread):
    """`tail -F` for Mongrel2's log files: it writes to files, not to a pipe we could read."""

    def __init__(self, tag: str, paths: Iterable[Path]) -> None:
        super().__init__(name=f"follow-{tag}", daemon=True)
        self.tag = tag
        # Lines already there are an earlier run's: start at the current end of each file.
        self.offsets = {path: _size(path) for path in paths}
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
                        emit(self.tag, access_line(line) if path == ACCESS_LOG else line)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=2)


# -- processes ------------------------------------------------------------------------------------------


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def is_our_mongrel2(pid: int) -> bool:
    """Whether pid is a mongrel2 confined to (or working in) demos/var: never signal a recycled pid."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
        places = {Path(os.readlink(f"/proc/{pid}/{link}")) for link in ("root", "cwd")}
    except OSError:
        return False
    return b"mongrel2" in command and RUNTIME_DIR in places


def reap(pid: int) -> None:
    """Collect a child's exit status (a daemon we adopted as subreaper); ignore anyone else's pid."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        reap(pid)
        if not process_alive(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def become_subreaper() -> None:
    """Adopt the processes our children leave behind (Linux): Mongrel2 daemonizes, and whoever adopts it
    must collect its exit status or it stays a zombie. With us as subreaper, that is us, not init."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Mongrel2:
    """Mongrel2 loaded from demos/mongrel2.conf, started with m2sh, found (and stopped) by its pid file."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pid: int | None = None
        self.m2sh: subprocess.Popen[bytes] | None = None
        self.m2sh_path = shutil.which("m2sh") or "m2sh"
        self.env = dict(os.environ)
        if not self.env.get("LOGNAME"):  # m2sh refuses to load a config without it
            self.env["LOGNAME"] = _login_name()

    def start(self, stopping: threading.Event) -> None:
        if shutil.which("mongrel2") is None or shutil.which(self.m2sh_path) is None:
            raise DemoError("Mongrel2 is not installed (Debian: apt-get install mongrel2-core)")
        for port in HANDLER_PORTS:
            if port_in_use(port):
                raise DemoError(f"port {port}, which demos/mongrel2.conf gives its handler, is in use")
        running = running_mongrel2()
        if running is not None:
            raise DemoError(f"a Mongrel2 of this demo is already running (pid {running})")
        self._m2sh("load", "-config", os.path.relpath(self._config(), RUNTIME_DIR), "-db", DB.name)
        # Judge this start by what it writes: the logs may hold an earlier run's failures.
        logs = [(path, _size(path)) for path in (M2SH_LOG, ERROR_LOG)]
        with M2SH_LOG.open("ab") as log:
            # Popen, not run: as root m2sh daemonizes the server and exits, but as another user it *is*
            # the server, in the foreground. Its output goes to a file because the daemon inherits it:
            # a pipe would stay open for as long as Mongrel2 runs.
            self.m2sh = subprocess.Popen(  # noqa: S603 - a fixed command
                [self.m2sh_path, "start", "-db", DB.name, "-host", HOST], cwd=RUNTIME_DIR, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid = self._wait_until_serving(logs, stopping)

    def _config(self) -> Path:
        if self.port == DEFAULT_PORT:
            return CONFIG
        # Another port: the same config with its port replaced, kept beside the logs.
        text, count = re.subn(rf"\bport={DEFAULT_PORT}\b", f"port={self.port}", CONFIG.read_text())
        if count != 1:
            raise DemoError(f"cannot find port={DEFAULT_PORT} in {CONFIG} to change it")
        custom = RUNTIME_DIR / "mongrel2.conf"
        custom.write_text(text)
        return custom

    def _m2sh(self, *args: str) -> None:
        try:
            result = subprocess.run(  # noqa: S603 - a fixed command
                [self.m2sh_path, *args], cwd=RUNTIME_DIR, env=self.env, stdin=subprocess.DEVNULL,
                capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise DemoError(f"m2sh {args[0]} did not finish within {START_TIMEOUT:g} s") from None
        for line in (result.stdout + result.stderr).splitlines():
            if line.strip():
                emit("mongrel2", line)
        if result.returncode != 0:
            raise DemoError(f"m2sh {args[0]} failed (exit status {result.returncode})")

    def _wait_until_serving(self, logs: list[tuple[Path, int]], stopping: threading.Event) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while not stopping.is_set():
            fatal = _fatal_line(logs)
            if fatal is not None:
                raise DemoError(f"Mongrel2 did not start: {fatal}")
            status = self.m2sh.poll() if self.m2sh is not None else None
            if status:
                raise DemoError(f"m2sh start failed (exit status {status}); see {M2SH_LOG}")
            pid = _read_pid()
            if pid is not None and process_alive(pid) and port_in_use(self.port) and port_in_use(HANDLER_PORTS[0]):
                return pid
            if time.monotonic() >= deadline:
                raise DemoError(f"Mongrel2 was not serving on port {self.port} after {START_TIMEOUT:g} s")
            stopping.wait(0.05)
        raise DemoError("stopped while Mongrel2 was starting")

    def stop(self) -> None:
        pid = self.pid if self.pid is not None else _read_pid()
        if DB.exists():
            with contextlib.suppress(DemoError):
                self._m2sh("stop", "-db", DB.name, "-host", HOST)
        if pid is not None and not wait_gone(pid, STOP_TIMEOUT):
            self._signal_until_gone(pid)
        if self.m2sh is not None:  # the daemonizing parent, or a foreground server that never wrote its pid
            _stop_process(self.m2sh, "m2sh")
        self.pid = None
        PID_FILE.unlink(missing_ok=True)

    @staticmethod
    def _signal_until_gone(pid: int) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if process_alive(pid) and is_our_mongrel2(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if wait_gone(pid, STOP_TIMEOUT):
                return
        say(f"Mongrel2 (pid {pid}) would not stop")


def running_mongrel2() -> int | None:
    """The pid of a Mongrel2 already serving from demos/var (started by hand, or left by a killed run)."""
    pid = _read_pid()
    return pid if pid is not None and process_alive(pid) and is_our_mongrel2(pid) else None


def _read_pid() -> int | None:
    try:
        return int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def _fatal_line(logs: list[tuple[Path, int]]) -> str | None:
    for path, offset in logs:
        with contextlib.suppress(OSError), path.open("rb") as file:
            file.seek(offset)
            for line in file.read().decode(errors="replace").splitlines():
                if any(marker in line for marker in FATAL_MARKERS):
                    return line.strip()
    return None


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root" if os.geteuid() == 0 else str(os.geteuid())


def _stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], name: str) -> None:
    """SIGTERM (it may already have Ctrl-C's SIGINT), then SIGKILL after STOP_TIMEOUT."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"{name} did not stop within {STOP_TIMEOUT:g} s: killing it")
        process.kill()
        process.wait()


class Child:
    """A Python process of the demo, its output tagged and copied to ours."""

    def __init__(self, tag: str, script: str, args: list[str], env: dict[str, str],
                 exited: threading.Event) -> None:
        self.tag = tag
        self.process = subprocess.Popen(  # noqa: S603 - our own scripts
            [sys.executable, str(DEMOS_DIR / script), *args], cwd=DEMOS_DIR, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", bufsize=1)
        stream = self.process.stdout
        if stream is None:  # cannot happen with stdout=PIPE; narrows the type
            raise RuntimeError(f"no output stream for {tag}")
        self.reader = threading.Thread(target=pump, args=(tag, stream), name=f"pump-{tag}", daemon=True)
        self.reader.start()
        self.watcher = threading.Thread(target=self._watch, args=(exited,), name=f"wait-{tag}", daemon=True)
        self.watcher.start()

    def _watch(self, exited: threading.Event) -> None:
        self.process.wait()
        exited.set()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        _stop_process(self.process, self.tag)
        self.reader.join(timeout=STOP_TIMEOUT)


# -- the demo -------------------------------------------------------------------------------------------


def exited(children: list[Child]) -> str | None:
    """Which child has exited, and how; None while all run."""
    for child in children:
        if not child.running():
            return f"{child.tag} exited (status {child.process.returncode})"
    return None


def wait_until_answering(url: str, children: list[Child], stopping: threading.Event) -> None:
    """Until GET url answers 200: the whole chain (Mongrel2, web app, templates) works end to end."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if stopping.is_set():
            raise DemoError(f"{exited(children) or 'stopped'} before the demo was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http URL
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise DemoError(f"{url} did not answer within {READY_TIMEOUT:g} s")
        stopping.wait(0.1)


def remove_leftovers() -> None:
    for path in SOCKET_FILES:
        with contextlib.suppress(FileNotFoundError):
            if path.is_socket():
                path.unlink()
    DB.unlink(missing_ok=True)
    (RUNTIME_DIR / "mongrel2.conf").unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demos/run", description="Run the brubeck-service demo until Ctrl-C.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 6767)")
    parser.add_argument("--delay", type=float, default=None,
                        help="seconds the service takes per request (default: DEMO_SERVICE_DELAY, else 5)")
    parser.add_argument("--wsgi", action="store_true", help="do not use Mongrel2: the web app serves HTTP itself")
    return parser.parse_args(argv)


class Demo:
    """One run of the demo: Mongrel2 (or not), then the service and the web app; stopped in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port: int = args.port
        self.use_mongrel2 = not args.wsgi
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.delay is not None:
            self.env["DEMO_SERVICE_DELAY"] = f"{args.delay:g}"
        self.stopping = threading.Event()  # by Ctrl-C / SIGTERM, or when a process of the demo exits
        self.signalled = threading.Event()  # only by Ctrl-C / SIGTERM: stopping then is no failure
        self.follower = LogFollower("mongrel2", MONGREL2_LOGS)
        self.signal_name = ""
        self.mongrel2: Mongrel2 | None = None
        self.children: list[Child] = []

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: the main thread, woken by the event, says what happens next.
        self.signal_name = signal.Signals(signum).name
        self.signalled.set()
        self.stopping.set()

    def run(self) -> int:
        """Start, serve until Ctrl-C (or until a process dies), stop; the exit status."""
        if port_in_use(self.port):
            running = running_mongrel2()
            if running is not None:
                say(f"port {self.port} is in use by a Mongrel2 of this demo (pid {running}), started by hand or "
                    f"left by a run that was killed: stop it (kill {running}) and run again")
            else:
                say(f"port {self.port} is already in use (another demo still running?): stop that, or pass --port")
            return 1
        for directory in (LOG_DIR, RUN_DIR):
            directory.mkdir(parents=True, exist_ok=True)
        become_subreaper()
        self.follower.start()
        try:
            self.start()
            say(f"ready: open {self.url}   (Ctrl-C stops everything)")
            self.stopping.wait()
            if not self.signalled.is_set():
                raise DemoError(f"{exited(self.children)}: stopping the demo")
        except DemoError as err:
            say(str(err))
            return 0 if self.signalled.is_set() else 1
        finally:
            self.stop()
        return 0

    def start(self) -> None:
        if self.use_mongrel2:
            self.mongrel2 = self.start_mongrel2()
        client_args = [] if self.mongrel2 is not None else ["--wsgi", "--port", str(self.port)]
        self.children.append(Child("service", "demo_service.py", [], self.env, self.stopping))
        self.children.append(Child("client", "demo_service_client.py", client_args, self.env, self.stopping))
        wait_until_answering(self.url, self.children, self.stopping)

    def start_mongrel2(self) -> Mongrel2 | None:
        """A serving Mongrel2, or None (said why) when the web app must serve HTTP itself."""
        mongrel2 = Mongrel2(self.port)
        self.mongrel2 = mongrel2  # stopped by stop() even if a Ctrl-C interrupts its start
        try:
            mongrel2.start(self.stopping)
        except DemoError as err:
            if self.stopping.is_set():
                raise
            mongrel2.stop()
            say(f"cannot use Mongrel2: {err}")
            say(f"running the web app over WSGI on port {self.port} instead")
            return None
        say(f"Mongrel2 is serving on port {self.port} (pid {mongrel2.pid}, chroot {RUNTIME_DIR})")
        return mongrel2

    def stop(self) -> None:
        if self.signalled.is_set():
            say(f"{self.signal_name}: stopping")
        # The web app first (no new calls), then the service, then the front door.
        for child in reversed(self.children):
            child.stop()
        if self.mongrel2 is not None:
            self.mongrel2.stop()
        remove_leftovers()
        self.follower.stop()
        say(f"stopped; the logs are in {LOG_DIR}")


def main(argv: list[str] | None = None) -> int:
    demo = Demo(parse_args(argv))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, demo.on_signal)
    return demo.run()


if __name__ == "__main__":
    sys.exit(main())
