"""Who holds what: a run's claim on its directory, and the process listening on a port.

One run of the demo owns demos/var/PORT/ through an flock'ed file, which the kernel releases when that run
dies, however it dies. When a port is taken, Linux's /proc tells which process listens on it, so the person
running the demo learns whether that is another demo (leave it be, take another port), a Mongrel2 a killed
demo left behind (stop it), or some other program.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from brubeck.testing import port_in_use
from brubeckservice.addresses import listening_pid


class RuntimeDir:
    """A run's directory (demos/var/PORT/): everything one run creates, owned by one run at a time through
    an flock'ed file, run/demo.pid, holding its pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_file = self.path / "run" / "demo.pid"
        self._fd: int | None = None

    def claim(self) -> int | None:
        """Own the directory; None when we do, else the pid of the run that does (0 if it is not written yet)."""
        while True:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # a run that owned it just removed the empty directory
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                return int(text) if text.isdigit() else 0
            # The owner before us removes the file, then unlocks: a lock on a file it already removed is
            # worth nothing, so take the one now at that path.
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == self.lock_file.stat().st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self._fd = fd
                    return None
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            self.lock_file.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            # A run that never got as far as Mongrel2 (a refusal, --wsgi) leaves only empty directories.
            with contextlib.suppress(OSError):
                self.lock_file.parent.rmdir()
                self.path.rmdir()

    def clean(self) -> None:
        """Remove what a stopped run leaves behind: the config database and copy, socket files (a killed
        process leaves its own). The logs stay."""
        for name in ("config.sqlite", "mongrel2.conf"):
            (self.path / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            for path in (self.path / "run").iterdir():
                if path.is_socket():
                    path.unlink(missing_ok=True)


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _places(pid: int) -> set[Path]:
    """The root and working directory of pid (a chrooted Mongrel2's root is its directory)."""
    places = set()
    for link in ("root", "cwd"):
        with contextlib.suppress(OSError):
            places.add(Path(os.readlink(f"/proc/{pid}/{link}")))
    return places


def pick_another(port: int) -> str:
    spare = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_in_use(p)), None)
    return f"pick another with --port (e.g. --port {spare})" if spare else "pick another with --port"


def port_taken(port: int, runtime: RuntimeDir) -> str:
    """What to tell someone whose port is taken: who holds it, when we can tell, and what to do."""
    advice = pick_another(port)
    holder = listening_pid(port)
    if holder is None:
        return f"port {port} is already in use; {advice}"
    # A demo's listener (its Mongrel2, or its web app with --wsgi) is a child of that demo's run.py.
    for pid in (holder, _parent(holder)):
        if any(arg.endswith("demos/run.py") for arg in _argv(pid)):
            return f"another demo (pid {pid}) is serving on port {port}; {advice}"
    command = " ".join(_argv(holder)) or "?"
    if runtime.path in _places(holder) or str(runtime.path) in command:
        return (f"port {port} is held by pid {holder} ({command}), left behind by a demo that did not stop: "
                f"stop it (kill {holder}) and run again, or {advice}")
    return f"port {port} is in use by pid {holder} ({command}); {advice}"
