"""Driving the demo as a person does: `bash demos/run --port N` in a terminal of its own, then Ctrl-C.

Every demo a test starts gets a free port (never 6767, the demo's default, so the suite runs beside a demo
someone has open) and therefore its own directory, demos/var/PORT/, which the fixture removes afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

from brubeck.testing import process_alive

REPO = Path(__file__).resolve().parents[2]
DEMOS = REPO / "demos"
VAR = DEMOS / "var"

START_TIMEOUT = 60.0  # the launcher installs what is missing first
STOP_TIMEOUT = 30.0


def runtime_dir(port: int) -> Path:
    """The directory `demos/run --port PORT` runs in."""
    return VAR / str(port)


def session_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def demo_processes(runtime: Path, session: int | None = None) -> list[str]:
    """Live processes of one demo: those in its session (its terminal), and any that run from its directory
    (a Mongrel2 chrooted there, a script given `--dir` it), which outlive a launcher that was killed.

    A zombie is not counted: it has exited, only its exit status is left for its parent to collect.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            pid = int(entry.name)
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not process_alive(pid):
                continue
            command = b" ".join(argv).decode(errors="replace")
            places = set()
            for link in ("root", "cwd"):
                with contextlib.suppress(OSError):
                    places.add(os.readlink(entry / link))
            if (session is not None and session_of(pid) == session) or str(runtime) in places \
                    or f"--dir {runtime}" in command:
                found.append(f"{pid}: {command}")
        except OSError:  # it exited while we looked
            continue
    return found


def runtime_files(runtime: Path) -> dict[str, int]:
    """What a running demo keeps in its directory besides logs, by name, with each file's inode."""
    names = ["config.sqlite", "mongrel2.conf", "run/mongrel2.pid", "run/demo.pid"]
    found = {name: (runtime / name).stat().st_ino for name in names if (runtime / name).exists()}
    if (runtime / "run").is_dir():
        found.update({f"run/{p.name}": p.stat().st_ino for p in (runtime / "run").iterdir() if p.is_socket()})
    return found


def demo_leftovers(runtime: Path) -> list[str]:
    """Files a stopped demo must not leave: pid files, config database and copy, ipc socket files."""
    return sorted(runtime_files(runtime))


class RunningDemo:
    """`bash demos/run --port PORT ...` in its own session (as in a terminal), its output collected."""

    def __init__(self, port: int, *args: str, delay: float) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.runtime = runtime_dir(port)
        env = dict(os.environ, DEMO_SERVICE_DELAY=f"{delay:g}", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            ["bash", str(DEMOS / "run"), "--port", str(port), *args], cwd=REPO, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", start_new_session=True)
        # `demos/run` execs run.py, so this is the launcher's pid, the one it names in its messages.
        self.pid = self.process.pid
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`, waiting for it at most `timeout` seconds."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for m in map(regex.search, self.lines) if m][:1]
            return bool(found) or self.process.poll() is not None

        with self.changed:
            self.changed.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s; demo output:\n"
                                 + self.output())
        return found[0]

    def wait_for_status(self, path: str, status: int, timeout: float) -> requests.Response:
        """GET `path` until it answers `status`; fail if the demo exits or the deadline passes."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited ({self.process.returncode}) while we waited for "
                                     f"{status} from {path}:\n" + self.output())
            try:
                response = requests.get(self.url + path.lstrip("/"), timeout=10)
                if response.status_code == status:
                    return response
                last = str(response.status_code)
            except requests.RequestException as err:
                last = str(err)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{path} did not answer {status} within {timeout:g} s (last: {last}); "
                                     "demo output:\n" + self.output())
            # Woken early by new output (e.g. the demo failing), else retry after a short while.
            with self.changed:
                self.changed.wait(0.2)

    def wait_until_answering(self, timeout: float = START_TIMEOUT) -> None:
        self.wait_for_status("/", 200, timeout)

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ctrl-C, as a terminal sends it: SIGINT to the whole process group. Returns the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the launcher to exit by itself; its exit status."""
        returncode = self.process.wait(timeout)
        self.reader.join(timeout)
        return returncode

    def processes(self) -> list[str]:
        return demo_processes(self.runtime, self.pid)

    def kill(self) -> None:
        """Last resort after a test: everything of this demo, even what outlived its launcher."""
        if self.process.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for line in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
