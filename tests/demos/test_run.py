"""demos/run (demos/run.py), the launcher: demos side by side, taken ports, a dying service, its log echo.

Real Mongrel2, real HTTP, real signals: each test runs `bash demos/run --port N` as a person would, on a free
port (see helpers.py), and waits on what it prints or serves, each wait with a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from brubeck.testing import port_in_use, process_alive
from tests.demos.conftest import StartDemo
from tests.demos.helpers import DEMOS, REPO, VAR, RunningDemo, demo_leftovers, runtime_dir, runtime_files

#: A short delay: these tests call the service, but never time it.
QUICK = 0.2
EXIT_TIMEOUT = 60.0  # for a launcher that refuses to start: it still runs scripts/setup first
DEATH_TIMEOUT = 20.0  # for the launcher to notice a process died, and the web app to answer 503


def stopped_cleanly(demo: RunningDemo) -> None:
    assert demo.interrupt() == 0, demo.output()
    assert "[demo] stopped" in demo.output()
    assert demo.processes() == []
    assert demo_leftovers(demo.runtime) == []


def test_two_demos_run_side_by_side_and_stop_apart(start_demo: StartDemo) -> None:
    first = start_demo(delay=QUICK)
    second = start_demo(delay=QUICK)
    for demo in (first, second):
        demo.wait_for_status("/service/sync", 200, DEATH_TIMEOUT)
        assert demo.wait_for_line(rf"\[demo\] Mongrel2 is serving on port {demo.port} \(pid \d+, chroot "
                                  rf"{re.escape(str(demo.runtime))}\)", 1)
    # Nothing shared: each has its own pid file, database and sockets, in its own directory.
    files = runtime_files(first.runtime)
    assert {"config.sqlite", "run/mongrel2.pid", "run/demo.pid", "run/requests", "run/replies",
            "run/slow"} <= set(files)
    mongrel2_pid = int((first.runtime / "run" / "mongrel2.pid").read_text())

    stopped_cleanly(second)

    # The first one still serves, through its own Mongrel2 and its own service socket, and its files are
    # the very same files.
    assert process_alive(mongrel2_pid)
    assert runtime_files(first.runtime) == files
    first.wait_for_status("/service/sync", 200, DEATH_TIMEOUT)
    assert first.process.poll() is None
    stopped_cleanly(first)


def test_a_port_another_demo_serves_is_refused_and_that_demo_left_alone(start_demo: StartDemo) -> None:
    first = start_demo(delay=QUICK)
    files = runtime_files(first.runtime)

    second = start_demo(port=first.port, ready=False)
    assert second.finish(EXIT_TIMEOUT) == 1, second.output()
    assert f"[demo] another demo (pid {first.pid}) is serving on port {first.port}" in second.output()
    assert "pick another with --port (e.g. --port " in second.output()
    assert "kill" not in second.output()
    assert "Traceback" not in second.output()

    assert runtime_files(first.runtime) == files
    first.wait_for_status("/service/sync", 200, DEATH_TIMEOUT)
    stopped_cleanly(first)


def test_a_port_another_program_holds_names_that_program(start_demo: StartDemo) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = start_demo(port=port, ready=False)
        assert demo.finish(EXIT_TIMEOUT) == 1, demo.output()
    line = demo.wait_for_line(r"\[demo\] port \d+ .*", 1).group(0)
    assert line.startswith(f"[demo] port {port} is in use by pid {os.getpid()} ("), line
    assert "pytest" in line  # its command line
    assert "pick another with --port" in line
    assert "kill" not in line
    assert "Traceback" not in demo.output()
    assert demo_leftovers(demo.runtime) == []


def test_a_mongrel2_left_by_a_killed_demo_is_named_with_how_to_stop_it(start_demo: StartDemo) -> None:
    killed = start_demo(delay=QUICK)
    mongrel2 = int(killed.wait_for_line(r"\[demo\] Mongrel2 is serving on port \d+ \(pid (\d+)", 1).group(1))
    killed.process.send_signal(signal.SIGKILL)  # the launcher only: what it started lives on
    killed.finish()
    assert process_alive(mongrel2)

    again = start_demo(port=killed.port, ready=False)
    assert again.finish(EXIT_TIMEOUT) == 1, again.output()
    line = again.wait_for_line(rf"\[demo\] port {killed.port} .*", 1).group(0)
    assert f"is held by pid {mongrel2} (mongrel2 " in line, line
    assert "left behind by a demo that did not stop" in line
    assert f"kill {mongrel2}" in line
    assert process_alive(mongrel2), "the second demo must not stop the first one's Mongrel2 itself"


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGKILL, "was killed by SIGKILL"),
                                          (signal.SIGTERM, "exited with status 0")])
def test_the_web_app_outlives_the_service_and_answers_503(demo: RunningDemo, sig: signal.Signals,
                                                          how: str) -> None:
    pids = demo.wait_for_line(r"\[demo\] the service is demo_service\.py, pid (\d+); the web app is "
                              r"demo_service_client\.py, pid (\d+)", 1)
    service, web_app = int(pids.group(1)), int(pids.group(2))
    demo.wait_for_status("/service/sync", 200, DEATH_TIMEOUT)

    os.kill(service, sig)
    demo.wait_for_line(rf"\[demo\] the service \(demo_service\.py, pid {service}\) {how}$", DEATH_TIMEOUT)
    demo.wait_for_line(r"\[demo\] the web app keeps running: .* answer 503 Service Unavailable", 1)
    page = demo.wait_for_status("/service/sync", 503, DEATH_TIMEOUT)
    assert "cannot be reached" in page.text
    demo.wait_for_status("/service/async", 503, DEATH_TIMEOUT)
    demo.wait_for_status("/", 200, DEATH_TIMEOUT)
    assert demo.process.poll() is None
    assert process_alive(web_app)
    # What the killed service left (its socket file) goes with the rest on Ctrl-C.
    stopped_cleanly(demo)


def test_a_404_page_is_not_echoed_as_200(demo: RunningDemo) -> None:
    demo.wait_for_status("/no/such/page", 404, DEATH_TIMEOUT)
    # Mongrel2 logs 200 for every request it hands to a handler, so its echo claims no status...
    echo = demo.wait_for_line(r"\[mongrel2\] 127\.0\.0\.1 GET /no/such/page .*", DEATH_TIMEOUT).group(0)
    assert echo == "[mongrel2] 127.0.0.1 GET /no/such/page HTTP/1.1 (handed to the web app)"
    # ...and the web app's access log line has the status it sent (docs/operating.md §2).
    demo.wait_for_line(r"\[client\] .* brubeck\.access: GET /no/such/page 404 \d+B [\d.]+ms 127\.0\.0\.1 trace "
                       r"[0-9a-f]{32}$", DEATH_TIMEOUT)
    demo.wait_for_line(r"\[client\] .* brubeck\.access: GET / 200 ", 1)
    stopped_cleanly(demo)


@pytest.fixture
def port_6767_taken() -> Iterator[None]:
    """Port 6767 held, as by a demo someone has open (if one already holds it, so much the better)."""
    if port_in_use(6767):
        yield
        return
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 6767))
        taken.listen()
        yield


def test_the_tests_run_beside_a_demo_on_6767(port_6767_taken: None, start_demo: StartDemo) -> None:
    demo = start_demo(delay=QUICK)
    assert demo.port != 6767
    demo.wait_for_status("/service/sync", 200, DEATH_TIMEOUT)
    assert runtime_dir(6767) != demo.runtime
    stopped_cleanly(demo)


@pytest.mark.parametrize(("value", "message"), [
    ("80000", "argument --port: 80000 is not a TCP port: pick one from 1 to 65535"),
    ("0", "argument --port: 0 is not a TCP port: pick one from 1 to 65535"),
    ("http", "argument --port: 'http' is not a port number"),
])
def test_a_bad_port_is_a_usage_error(value: str, message: str) -> None:
    # run.py itself (demos/run only adds the set-up before it): what parses the arguments.
    before = set(VAR.iterdir())
    result = subprocess.run([sys.executable, str(DEMOS / "run.py"), "--port", value], cwd=REPO,
                            capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: demos/run ")
    assert result.stderr.endswith(f"demos/run: error: {message}\n")
    assert "Traceback" not in result.stderr
    assert set(VAR.iterdir()) == before, "nothing is created before the arguments are checked"
