"""`brubeck-service ping`, `call` and `status` (brubeckservice/cli/), against real services.

Each service is `brubeck-service run --workers 2 --bind tcp://127.0.0.1:PORT apps/operated_service.py` in
a process of its own (test_supervisor.Supervised: which pid serves which worker is read from its log), and
each command runs as `python -m brubeckservice ...`, in a process of its own too, bounded by a timeout.
Nothing waits a fixed time. A stopped worker gets SIGCONT in a `finally`. The tests that count what the
workers served, stop one or hold its CPU get a service of their own; the others share one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from brubeck import __version__
from brubeckservice.cli import DEGRADED, ERROR_STATUS, FAILURE, OK, USAGE
from brubeckservice.cli.client_options import PASSPHRASE_ENV
from brubeckservice.curve import write_keypair
from tests.brubeckservice.test_supervisor import PASSPHRASE, REPO, START_TIMEOUT, Supervised, free_ports, wait_for

APP = "operated_service.py"
#: Bounds each command's process: a fresh Python importing gevent and zmq, on a loaded machine, plus its wait.
RUN_TIMEOUT = 60.0


class Service:
    """Workers of apps/operated_service.py under a supervisor: their addresses and pids."""

    def __init__(self, directory: Path, workers: int = 2) -> None:
        self.supervised = Supervised(directory)
        port = free_ports(workers)
        self.addresses = [f"tcp://127.0.0.1:{port + i}" for i in range(workers)]
        self.supervised.start(APP, "--workers", str(workers), "--bind", self.addresses[0])
        self.pids = self.supervised.wait_serving(workers)

    def close(self) -> None:
        self.supervised.kill_all()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(tmp_path_factory.mktemp("operated"))
    yield service
    service.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    fresh = Service(tmp_path)
    yield fresh
    fresh.close()


def run(*args: str, passphrase: str | None = PASSPHRASE,
        timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`python -m brubeckservice ARGS...`, with $BRUBECK_SERVICE_PASSPHRASE set to `passphrase` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != PASSPHRASE_ENV}
    env["PYTHONPATH"] = str(REPO)
    if passphrase is not None:
        env[PASSPHRASE_ENV] = passphrase
    return subprocess.run([sys.executable, "-m", "brubeckservice", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def status_json(*args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """`status ARGS... --json`: its exit status, and its workers by address."""
    done = run("status", *args, "--json")
    assert done.stderr == "", done.stderr
    return done.returncode, {worker["address"]: worker for worker in json.loads(done.stdout)}


def called(address: str, path: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = run("call", address, path, *args)
    assert done.stderr == "", done.stderr
    return done


# -- status ---------------------------------------------------------------------------------------------

def test_status_shows_a_stopped_worker_dead_and_counts_what_each_served(service: Service) -> None:
    first, second = service.addresses
    for _ in range(3):
        assert called(first, "/echo").returncode == OK
    assert called(first, "/fail").returncode == ERROR_STATUS
    assert called(second, "/echo").returncode == OK
    code, workers = status_json(first)  # the second is learned from the first's PONG
    assert code == OK
    assert [workers[first]["served"], workers[first]["errors"]] == [4, 1]
    assert [workers[second]["served"], workers[second]["errors"]] == [1, 0]
    os.kill(service.pids[1], signal.SIGSTOP)
    try:
        done = run("status", first)
        assert done.returncode == DEGRADED, done
        header, alive, dead, summary = done.stdout.splitlines()
        assert header.split()[:3] == ["WORKER", "STATE", "IN"]
        assert alive.split()[:6] == [first, "alive", "0", "100", "4", "1"]
        assert alive.endswith("answered a PING")
        assert dead.split()[:3] == [second, "dead", "-"]
        assert dead.endswith("no connection within 3 s: stopped, crashed or unreachable")
        assert summary == "1 of 2 workers alive: degraded"
        assert header.index("REASON") == alive.index("answered") == dead.index("no connection")  # aligned

        code, workers = status_json(first, "--timeout", "2")
        assert code == DEGRADED
        assert list(workers) == [first, second]
        assert workers[first] | {"uptime": None, "served_p50_ms": None, "served_p99_ms": None} == {
            "address": first, "state": "alive", "reason": "answered a PING", "load": 0, "capacity": 100,
            "served": 4, "errors": 1, "served_p50_ms": None, "served_p99_ms": None, "uptime": None,
            "version": __version__, "source": "configured"}
        assert workers[first]["uptime"] > 0
        assert 0 < workers[first]["served_p50_ms"] <= workers[first]["served_p99_ms"]
        assert workers[second] == {
            "address": second, "state": "dead", "reason": "no connection within 2 s: stopped, crashed or unreachable",
            "load": None, "capacity": None, "served": None, "errors": None, "served_p50_ms": None,
            "served_p99_ms": None, "uptime": None, "version": None, "source": f"listed by {first}"}

        assert status_json(second, "--timeout", "1")[0] == FAILURE  # none alive
    finally:
        os.kill(service.pids[1], signal.SIGCONT)
    code, workers = status_json(second)
    assert code == OK, workers
    assert workers[second]["served"] == 1


def test_status_shows_a_worker_whose_handler_holds_its_cpu_busy(service: Service) -> None:
    first, second = service.addresses
    holding = subprocess.Popen([sys.executable, "-m", "brubeckservice", "call", first, "/cpu", '{"SECONDS": "8"}',
                                "--timeout", "30"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                                    PASSPHRASE_ENV: PASSPHRASE},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen: list[tuple[int, dict[str, dict[str, Any]]]] = []

        def busy() -> bool:
            seen.append(status_json(first, second, "--timeout", "1"))
            return bool(seen[-1][1][first]["state"] == "busy")

        wait_for(busy, "the first worker busy", timeout=RUN_TIMEOUT, details=lambda: repr(seen[-3:]))
        code, workers = seen[-1]
        assert code == DEGRADED
        assert workers[first]["reason"] == ("connected (ZMTP handshake done) but no PONG within 1 s: a handler "
                                            "holds its CPU, or its event loop is stuck")
        assert workers[second]["state"] == "alive"
        out, err = holding.communicate(timeout=RUN_TIMEOUT)
        assert (holding.returncode, out.splitlines()[0]) == (OK, "200 OK"), err
    finally:
        if holding.poll() is None:
            holding.kill()
            holding.wait(RUN_TIMEOUT)


def test_status_of_a_wrong_passphrase_says_refused(shared: Service) -> None:
    done = run("status", shared.addresses[0], passphrase="not the passphrase", timeout=RUN_TIMEOUT)
    assert done.returncode == FAILURE, done
    assert done.stdout.splitlines()[1].split()[:2] == [shared.addresses[0], "refused"]
    assert "refuses our signature" in done.stdout and "wrong passphrase?" in done.stdout


def watch_status(shared: Service, out_path: Path, refreshed: Callable[[], bool], *flags: str) -> str:
    """Run `status --watch 0.2 [FLAGS]` into `out_path` until `refreshed()`, then Ctrl-C it: it must exit 0.
    Returns what it wrote to stderr."""
    with out_path.open("w") as out:
        watching = subprocess.Popen([sys.executable, "-m", "brubeckservice", "status", shared.addresses[0],
                                     "--watch", "0.2", *flags], cwd=REPO, stdout=out, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "PYTHONPATH": str(REPO), PASSPHRASE_ENV: PASSPHRASE})
    try:
        wait_for(refreshed, "two refreshes", timeout=RUN_TIMEOUT, details=out_path.read_text)
        watching.send_signal(signal.SIGINT)
        assert watching.wait(RUN_TIMEOUT) == OK
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait(RUN_TIMEOUT)
    assert watching.stderr is not None
    return watching.stderr.read()


def test_status_watch_refreshes_until_ctrl_c(shared: Service, tmp_path: Path) -> None:
    out_path = tmp_path / "watch.out"
    errors = watch_status(shared, out_path, lambda: out_path.read_text().count("2 of 2 workers alive") >= 2)
    refreshes = out_path.read_text().split("-" * 40 + "\n")  # (not a terminal: a separator, no clearing)
    assert len(refreshes) >= 2
    for refresh in refreshes:
        lines = refresh.splitlines()
        assert re.fullmatch(r"\d\d:\d\d:\d\d, every 0.2 s \(Ctrl-C to stop\)", lines[0])
        assert lines[1].startswith("WORKER ") and lines[-1] == "2 of 2 workers alive"
    assert "\x1b" not in out_path.read_text()
    assert errors == ""


def test_status_watch_json_prints_one_list_a_line(shared: Service, tmp_path: Path) -> None:
    out_path = tmp_path / "watch.jsonl"
    watch_status(shared, out_path, lambda: out_path.read_text().count("\n") >= 2, "--json")
    for line in out_path.read_text().splitlines():
        assert sorted(w["address"] for w in json.loads(line)) == sorted(shared.addresses)


# -- call -----------------------------------------------------------------------------------------------

def test_call_prints_the_status_and_the_body(shared: Service) -> None:
    done = called(shared.addresses[0], "/echo", '{"name": "ada", "n": [1, 2]}')
    assert done.returncode == OK
    status, *body = done.stdout.splitlines()
    assert status == "200 OK"
    assert json.loads("\n".join(body)) == {"method": "request", "arguments": {"name": "ada", "n": [1, 2]},
                                           "headers": {}, "pid": shared.pids[0], "index": "0"}
    assert body[0] == "{" and body[1].startswith('  "')  # indented


def test_call_takes_a_method_headers_and_prints_json(shared: Service) -> None:
    done = called(shared.addresses[1], "/echo", "post", '{"a": 1}', "--header", "X-Trace=t-1", "-H", "Who=me=you",
                  "--json", "--timeout", "10")
    assert done.returncode == OK
    answer = json.loads(done.stdout)
    assert answer == {"status_code": 200, "status_msg": "OK", "path": "/echo", "method": "response", "headers": {},
                      "body": {"method": "post", "arguments": {"a": 1}, "headers": {"X-Trace": "t-1", "Who": "me=you"},
                               "pid": shared.pids[1], "index": "1"}}


def test_call_prints_a_string_body_as_it_is(shared: Service) -> None:
    assert called(shared.addresses[0], "/text").stdout == "200 OK\nplain text, not JSON\n"


@pytest.mark.parametrize(("path", "status"), [("/nowhere", "404 Not Found"), ("/fail", "500 RuntimeError")])
def test_call_answered_with_an_error_status_exits_3(shared: Service, path: str, status: str) -> None:
    done = called(shared.addresses[0], path)
    assert done.returncode == ERROR_STATUS == 3
    assert done.stdout.startswith(status)
    assert "error" in json.loads(done.stdout.split("\n", 1)[1])


def test_call_with_a_wrong_passphrase_says_so_at_once(shared: Service) -> None:
    started = time.monotonic()
    done = run("call", shared.addresses[0], "/echo", "--timeout", "120", passphrase="not the passphrase")
    took = time.monotonic() - started
    assert done.returncode == FAILURE
    assert done.stdout == ""
    assert done.stderr == (f"brubeck-service call: {shared.addresses[0]}: the service refused our signature: wrong "
                           "passphrase? (BRUBECK_SERVICE_PASSPHRASE / --passphrase-file)\n")
    assert took < 60, took  # (not its 120 s timeout)


def test_call_reads_the_passphrase_from_a_file(shared: Service, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\nthe first line only\n")
    done = run("call", shared.addresses[0], "/echo", "--passphrase-file", str(secret), passphrase=None)
    assert (done.returncode, done.stdout.splitlines()[0], done.stderr) == (OK, "200 OK", "")
    missing = run("call", shared.addresses[0], "/echo", "--passphrase-file", str(tmp_path / "nowhere"),
                  passphrase=None)
    assert missing.returncode == USAGE
    assert f"--passphrase-file {tmp_path}/nowhere: cannot read it: No such file or directory" in missing.stderr


def test_call_arguments_that_are_not_an_object_are_a_usage_error(shared: Service) -> None:
    done = run("call", shared.addresses[0], "/echo", "request", "[1, 2]")
    assert done.returncode == USAGE
    assert "JSON '[1, 2]': the arguments must be a JSON object" in done.stderr


def test_call_to_an_address_nobody_serves_fails_after_its_timeout() -> None:
    address = f"tcp://127.0.0.1:{free_ports(1)}"
    done = run("call", address, "/echo", "--timeout", "1")
    assert done.returncode == FAILURE
    assert done.stderr == f"brubeck-service call: {address}: no connection within 1 s: is it running?\n"


# -- ping -----------------------------------------------------------------------------------------------

def test_ping_prints_one_line(shared: Service) -> None:
    done = run("ping", shared.addresses[1])
    assert (done.returncode, done.stderr) == (OK, "")
    assert re.fullmatch(rf"{shared.addresses[1]} answered: 0/100 in flight, \d+ served, up [\dmhds.]+, version "
                        rf"{re.escape(__version__)}, \d+\.\d ms round trip\n", done.stdout), done.stdout


def test_ping_json_prints_the_pong(shared: Service) -> None:
    done = run("ping", shared.addresses[0], "--json")
    assert done.returncode == OK
    pong = json.loads(done.stdout)
    assert (pong["inflight"], pong["capacity"], pong["draining"], pong["version"]) == (0, 100, False, __version__)
    assert pong["workers"] == shared.addresses
    assert {"served", "errors", "latency_ms", "uptime", "accepts", "stats", "queued"} <= set(pong)


def test_ping_to_an_address_nobody_serves_fails_within_about_its_timeout() -> None:
    address = f"tcp://127.0.0.1:{free_ports(1)}"
    started = time.monotonic()
    done = run("ping", address, "--timeout", "1")
    took = time.monotonic() - started
    assert done.returncode == FAILURE
    assert done.stderr == f"brubeck-service ping: {address}: no connection within 1 s: is it running?\n"
    assert 1 <= took < START_TIMEOUT, took


def test_ping_with_a_wrong_passphrase_is_refused(shared: Service) -> None:
    done = run("ping", shared.addresses[0], "--timeout", "120", passphrase="not the passphrase")
    assert done.returncode == FAILURE
    assert "the service refused our signature: wrong passphrase?" in done.stderr


# -- CURVE ----------------------------------------------------------------------------------------------

def test_curve_keys_are_taken_and_a_refused_key_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    write_keypair(keys, "server")
    write_keypair(keys, "web")
    write_keypair(keys, "intruder")
    (keys / "clients").mkdir()
    (keys / "clients" / "web.key").write_bytes((keys / "web.key").read_bytes())
    monkeypatch.setenv("OPERATED_CURVE_DIR", str(keys))
    service = Service(tmp_path, workers=1)
    try:
        address = service.addresses[0]
        done = run("ping", address, "--curve-server-key", str(keys / "server.key"), "--curve-key",
                   str(keys / "web.key_secret"))
        assert (done.returncode, done.stderr) == (OK, ""), done
        assert done.stdout.startswith(f"{address} answered: ")

        started = time.monotonic()
        done = run("call", address, "/echo", "--timeout", "120", "--curve-server-key", str(keys / "server.key"),
                   "--curve-key", str(keys / "intruder.key_secret"))
        assert done.returncode == FAILURE
        assert done.stderr.startswith(f"brubeck-service call: {address}: its CURVE handshake refused us: ")
        assert done.stderr.endswith(" (--curve-server-key / --curve-key)\n")
        assert time.monotonic() - started < 60  # (not its 120 s timeout)

        code, workers = status_json(address)  # no CURVE at all
        assert code == FAILURE
        assert workers[address]["state"] == "refused"
        assert workers[address]["reason"].startswith("its CURVE handshake refused us: ")
    finally:
        service.close()
