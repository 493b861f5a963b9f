#!/usr/bin/env python3
"""Run the whole demo in one terminal: Mongrel2, the slow service and the web app, until Ctrl-C.

    bash demos/run [--port 6767] [--delay SECONDS] [--wsgi]

`demos/run` sets up the virtualenv and Mongrel2 when they are missing, then runs this file with the venv's
Python. In order, it:

1. claims demos/var/PORT/, the run's own directory (Mongrel2's chroot, with its log/ and run/, and every
   ipc:// socket of the three processes), so demos on two ports share nothing. A directory another run owns
   (a lock file, run/demo.pid, held while that run lives), or a port something holds, is left alone: we say
   who holds it and stop;
2. starts Mongrel2 in the foreground from demos/mongrel2.conf (a copy with the port changed for another
   --port) through brubeck.testing.Mongrel2Server;
3. starts demo_service.py and demo_service_client.py, and prints every line the three write, tagged
   [mongrel2] (its log files, followed), [service] and [client]. The service is told Mongrel2's handler
   (its recv_spec and send_ident, read back from the loaded config, under the server's name) so that it
   can answer browsers itself (the forwarded and streamed pages), and the web app is told that name;
4. prints the URL once the index page answers;
5. watches them: when the service exits (a crash, a `kill`), says so and keeps the web app up, whose pages
   that call the service then answer 503; when Mongrel2 or the web app exits, nothing can serve, so it stops;
6. on Ctrl-C or SIGTERM stops the web app, the service and Mongrel2 (politely, then by force after a
   deadline) and removes the ipc sockets, the pid files and the config database. The logs stay.

Without Mongrel2 (not installed, or it fails to start) the web app serves HTTP itself over WSGI on the
same port, and the service runs as usual. `--wsgi` asks for that. `--delay` (or DEMO_SERVICE_DELAY) sets
how long the service takes per request, 5 s by default.

Beside it: logs.py (what it prints; Mongrel2's log files, followed) and claims.py (who holds a port or a
run's directory).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

# This runs with the virtualenv's Python (brubeck installed), from demos/ (its neighbours importable).
from claims import RuntimeDir, pick_another, port_taken
from logs import LogFollower, pump, say

from brubeck.testing import Mongrel2Error, Mongrel2Server, mongrel2_available, port_in_use, process_alive

DEMOS_DIR = Path(__file__).resolve().parent
# Each run's directory is VAR_DIR/PORT. Not under demos/ itself: demos/run is the launcher script, so
# Mongrel2's run/ directory cannot be there.
VAR_DIR = DEMOS_DIR / "var"
CONFIG = DEMOS_DIR / "mongrel2.conf"
DEFAULT_PORT = 6767
#: demos/mongrel2.conf's Server(name=...): the name the service and the web app know the handler by.
MONGREL2_NAME = "brubeck-demo"

START_TIMEOUT = 10.0  # for Mongrel2 to serve
READY_TIMEOUT = 30.0  # for the index page to answer once everything is started
STOP_TIMEOUT = 5.0  # for each process to stop politely before it is killed
MAX_DELAY = 3600.0  # demo_service.py's bound on DEMO_SERVICE_DELAY


class DemoError(Exception):
    """Something the person running the demo must fix (or be told about); the message says what."""


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while the demo was starting: unwinds whatever was starting, then the demo stops."""


# -- the command line -----------------------------------------------------------------------------------


def port_number(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port: pick one from 1 to 65535")
    return port


def delay_seconds(text: str) -> float:
    try:
        delay = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= delay <= MAX_DELAY:
        raise argparse.ArgumentTypeError(f"{text} is out of range: pick 0 to {MAX_DELAY:g} seconds")
    return delay


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="demos/run", description="Run the brubeck-service demo until Ctrl-C.")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="HTTP port (default 6767)")
    parser.add_argument("--delay", type=delay_seconds, default=None,
                        help="seconds the service takes per request (default: DEMO_SERVICE_DELAY, else 5)")
    parser.add_argument("--wsgi", action="store_true", help="do not use Mongrel2: the web app serves HTTP itself")
    return parser.parse_args(argv)


# -- processes ------------------------------------------------------------------------------------------


def how_it_ended(status: int | None) -> str:
    if status is None:
        return "exited"
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def stop_process(process: subprocess.Popen[str], name: str) -> None:
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


Exited = tuple[str, int | None]  # which process ("mongrel2", "service", "client"), and its exit status


class Child:
    """A Python process of the demo, its output tagged and copied to ours, its exit reported to `exits`."""

    def __init__(self, tag: str, script: str, args: list[str], env: dict[str, str],
                 exits: queue.Queue[Exited]) -> None:
        self.tag = tag
        self.process = subprocess.Popen(  # noqa: S603 - our own scripts
            [sys.executable, str(DEMOS_DIR / script), *args], cwd=DEMOS_DIR, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            errors="replace", bufsize=1)
        self.name = f"{script}, pid {self.process.pid}"
        stream = self.process.stdout
        if stream is None:  # cannot happen with stdout=PIPE; narrows the type
            raise RuntimeError(f"no output stream for {tag}")
        self.reader = threading.Thread(target=pump, args=(tag, stream), name=f"pump-{tag}", daemon=True)
        self.reader.start()
        threading.Thread(target=lambda: exits.put((tag, self.process.wait())), name=f"wait-{tag}",
                         daemon=True).start()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, self.tag)
        self.reader.join(timeout=STOP_TIMEOUT)


# -- the demo -------------------------------------------------------------------------------------------


class Demo:
    """One run of the demo: Mongrel2 (or not), then the service and the web app; stopped in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port: int = args.port
        self.use_mongrel2 = not args.wsgi
        self.url = f"http://127.0.0.1:{self.port}/"
        self.runtime = RuntimeDir(VAR_DIR / str(self.port))
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.delay is not None:
            self.env["DEMO_SERVICE_DELAY"] = f"{args.delay:g}"
        self.signal_name = ""  # set by Ctrl-C / SIGTERM; the main thread acts on it
        self.starting = False  # while set, a signal raises Interrupted to cut the start short
        self.exits: queue.Queue[Exited] = queue.Queue()
        self.follower: LogFollower | None = None
        self.mongrel2: Mongrel2Server | None = None
        self.children: dict[str, Child] = {}

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name
        if self.starting:
            self.starting = False
            raise Interrupted(self.signal_name)

    def run(self) -> int:
        """Claim the port and its directory, or say who has them; serve until Ctrl-C; the exit status."""
        owner = self.runtime.claim()
        if owner is not None:
            who = f"another demo (pid {owner})" if owner else "another demo"
            say(f"{who} is serving on port {self.port}, from {self.runtime.path}; {pick_another(self.port)}")
            return 1
        try:
            if port_in_use(self.port):
                say(port_taken(self.port, self.runtime))
                return 1
            return self.serve()
        finally:
            self.runtime.release()

    def serve(self) -> int:
        try:
            self.starting = True
            if self.signal_name:  # a Ctrl-C before we were starting
                raise Interrupted(self.signal_name)
            self.start()
            self.starting = False
            say(f"ready: open {self.url}   (Ctrl-C stops everything)")
            self.supervise()
        except Interrupted:
            pass
        except DemoError as err:
            say(str(err))
            return 0 if self.signal_name else 1
        finally:
            self.starting = False
            self.stop()
        return 0

    def start(self) -> None:
        if self.use_mongrel2:
            self.mongrel2 = self.start_mongrel2()
        where = ["--dir", str(self.runtime.path)]
        server = self.mongrel2
        # Behind Mongrel2 the service answers the forwarded pages' browsers through the handler's recv_spec
        # (an ipc:// path relative to the run's directory, where the service runs too); over WSGI the web app
        # relays what the service answers.
        forward = ["--no-mongrel2"] if server is None else ["--mongrel2", MONGREL2_NAME, server.recv_spec,
                                                              server.send_ident]
        self.children["service"] = Child("service", "demo_service.py", where + forward, self.env, self.exits)
        web = ["--forward-server", MONGREL2_NAME] if server is not None else ["--wsgi", "--port", str(self.port)]
        self.children["client"] = Child("client", "demo_service_client.py", where + web, self.env, self.exits)
        say(f"the service is {self.children['service'].name}; the web app is {self.children['client'].name}")
        self.wait_until_answering()

    def start_mongrel2(self) -> Mongrel2Server | None:
        """A serving Mongrel2, or None (said why) when the web app must serve HTTP itself."""
        try:
            if not mongrel2_available():
                raise DemoError("Mongrel2 is not installed (Debian: apt-get install mongrel2-core)")
            # In the foreground: our child, so we learn when it dies, and Ctrl-C reaches it.
            server = Mongrel2Server(workdir=self.runtime.path, config=self.config_file(), daemonize=False,
                                    start_timeout=START_TIMEOUT)
            self.follower = LogFollower("mongrel2", [server.output_log, server.error_log], server.access_log)
            self.follower.start()
            self.mongrel2 = server  # stopped by stop() even if a Ctrl-C interrupts its start
            server.start()
        except (DemoError, Mongrel2Error) as err:
            self.mongrel2 = None  # a failed start has stopped what it started
            say(f"cannot use Mongrel2: {err}")
            say(f"running the web app over WSGI on port {self.port} instead")
            return None
        threading.Thread(target=lambda: self.exits.put(("mongrel2", server.wait())), name="wait-mongrel2",
                         daemon=True).start()
        say(f"Mongrel2 is serving on port {self.port} (pid {server.pid}, chroot {self.runtime.path})")
        return server

    def config_file(self) -> Path:
        if self.port == DEFAULT_PORT:
            return CONFIG
        # Another port: the same config with its port replaced, kept in the run's directory.
        text, count = re.subn(rf"\bport={DEFAULT_PORT}\b", f"port={self.port}", CONFIG.read_text())
        if count != 1:
            raise DemoError(f"cannot find port={DEFAULT_PORT} in {CONFIG} to change it")
        copy = self.runtime.path / "mongrel2.conf"
        copy.write_text(text)
        return copy

    def wait_until_answering(self) -> None:
        """Until GET / answers 200: the whole chain (Mongrel2, web app, templates) works end to end."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self.check_front()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:  # noqa: S310 - our own http URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise DemoError(f"{self.url} did not answer within {READY_TIMEOUT:g} s")
            time.sleep(0.1)

    def check_front(self) -> None:
        """Raise DemoError when what answers HTTP (Mongrel2, the web app) has exited."""
        client = self.children["client"]
        if not client.running():
            raise DemoError(f"the web app ({client.name}) {how_it_ended(client.process.returncode)} "
                            "before the demo was ready")
        pid = self.mongrel2.pid if self.mongrel2 is not None else None
        if pid is not None and not process_alive(pid):
            raise DemoError(f"Mongrel2 (pid {pid}) exited before the demo was ready")

    def supervise(self) -> None:
        """Until Ctrl-C: report each process that exits; stop when nothing can serve any more."""
        while not self.signal_name:
            try:
                tag, status = self.exits.get(timeout=0.5)
            except queue.Empty:
                continue
            # Ctrl-C reaches the children too, and one may exit before our handler has run: give it a moment.
            if self.signalled_within(0.5):
                return
            if tag == "service":
                say(f"the service ({self.children['service'].name}) {how_it_ended(status)}")
                say(f"the web app keeps running: {self.url} still answers, and the pages that call the service "
                    "(/service/sync, /service/async, /service/forwarded, /service/streamed) answer 503 Service "
                    "Unavailable. Ctrl-C stops the demo.")
                continue
            what = "Mongrel2" if tag == "mongrel2" else f"the web app ({self.children['client'].name})"
            raise DemoError(f"{what} {how_it_ended(status)}: nothing serves {self.url} any more; stopping the demo")

    def signalled_within(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.signal_name and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(self.signal_name)

    def stop(self) -> None:
        if self.signal_name:
            say(f"{self.signal_name}: stopping")
        # The web app first (no new calls), then the service, then the front door.
        for child in reversed(self.children.values()):
            child.stop()
        if self.mongrel2 is not None:
            try:
                self.mongrel2.stop()
            except Mongrel2Error as err:
                say(f"Mongrel2 would not stop: {err}")
        if self.follower is not None:
            self.follower.stop()
        self.runtime.clean()
        say(f"stopped; Mongrel2's logs are in {self.runtime.path}" if self.mongrel2 is not None else "stopped")


def main(argv: list[str] | None = None) -> int:
    demo = Demo(parse_args(argv))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, demo.on_signal)
    return demo.run()


if __name__ == "__main__":
    sys.exit(main())
