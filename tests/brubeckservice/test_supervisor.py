"""`brubeck-service run`: N real worker processes of apps/supervised_echo.py, on ipc:// and tcp://.

The supervisor runs as `python -m brubeckservice run ...`, its log (and its workers' output) in a file
the tests read: which pid serves which worker is taken from its "worker I (pid P) serving ADDR" lines.
Workers are reached directly on their addresses: with raw DEALER sockets and the envelope functions (a
PING and its PONG; a REQ and its REP, acknowledging a DRAIN on the way, as protocol.md says a client
should), or with a ServiceClient per address. Nothing waits a fixed time: each wait polls its
condition until a deadline. Every process started, and every worker it logged, is killed at teardown.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq

from brubeck.testing import free_port, port_in_use, process_alive
from brubeckservice import envelope
from brubeckservice.addresses import accepts, advertised_address, worker_addresses
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer
from brubeckservice.supervisor import Backoff, Supervisor, describe_exit

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
PASSPHRASE = "my_shared_secret"
START_TIMEOUT = 30.0  # N fresh Pythons importing gevent and zmq at once, on a loaded machine
WAIT = 15.0
SERVING = re.compile(r"worker (\d+) \(pid (\d+)\) serving (\S+)")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT,
             details: Callable[[], str] = lambda: "") -> None:
    """Poll `predicate` until it holds, letting gevent run meanwhile (a ServiceClient reads its replies in
    the hub); fail after `timeout` seconds, with `details()`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}\n{details()}")
        gevent.sleep(0.01)


# -- a worker, reached directly ---------------------------------------------------------------------------

def ping(address: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """The PONG body of the worker at `address`, or None when none came within `timeout`."""
    signer = Signer(PASSPHRASE)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        sock.send_multipart(envelope.build_ping(signer, b"test-ping", now_ms()))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(max(1, round(left * 1000))):
                break
            found = envelope.parse_envelope(sock.recv_multipart())
            if found.kind == envelope.PONG and found.msg_id == b"test-ping":
                body: dict[str, Any] = envelope.parse_control(found, signer, now_ms(), 30_000)[1]
                return body
        return None
    finally:
        sock.close()
        context.term()


class Peer:
    """A raw DEALER to one worker: sends REQs, acknowledges a DRAIN as a client should, returns the REPs."""

    def __init__(self, address: str) -> None:
        self.signer = Signer(PASSPHRASE)
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.session = os.urandom(8).hex()
        self.seq = 0
        self.drained = False

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        self.context.term()

    def request(self, path: str, arguments: dict[str, Any]) -> None:
        self.seq += 1
        request = ServiceRequest(path=path, method="request", arguments=arguments)
        self.socket.send_multipart(envelope.build_request(self.signer, f"req-{self.seq}".encode(), request, now_ms(),
                                                          self.session, self.seq))

    def reply(self, timeout: float) -> ServiceResponse | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(max(1, round(left * 1000))):
                break
            found = envelope.parse_envelope(self.socket.recv_multipart())
            if found.kind == envelope.DRAIN:
                self.drained = True
                self.socket.send_multipart(envelope.build_ping(self.signer, b"ack", now_ms(), {"drain_ack": True}))
            elif found.kind == envelope.REP:
                return envelope.parse_reply(found, self.signer, now_ms(), 30_000)
        return None


def call_echo(address: str, data: str = "hello") -> dict[str, Any]:
    """What /echo answers at `address`: RETURN_DATA, pid and index."""
    with ServiceClient(address, None, PASSPHRASE, timeout=WAIT) as client:
        response = client.call("/echo", arguments={"RETURN_DATA": data})
    assert response.status_code == 200, response
    body: dict[str, Any] = response.body
    return body


# -- the supervisor, in its own process ---------------------------------------------------------------------

class Supervised:
    """`python -m brubeckservice run APP ARGS...` in `directory`, its output in `directory/supervisor.log`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.log_path = directory / "supervisor.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, app: str, *args: str) -> Supervised:
        return self.launch("-m", "brubeckservice", "run", str(APPS / app), *args)

    def launch(self, *args: str) -> Supervised:
        """`python ARGS...`, as the supervisor."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
               "BRUBECK_SERVICE_PASSPHRASE": PASSPHRASE}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, *args], cwd=self.directory, env=env,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def serving(self) -> dict[int, tuple[int, str]]:
        """Each worker's latest "serving" line: index -> (pid, address)."""
        return {int(index): (int(pid), address) for index, pid, address in SERVING.findall(self.log())}

    def wait_serving(self, count: int, unlike: dict[int, int] | None = None,
                     timeout: float = START_TIMEOUT) -> dict[int, int]:
        """Wait until workers 0..count-1 have each logged "serving" (by a pid not in `unlike`, when given);
        index -> pid."""
        def ready() -> bool:
            now = self.serving()
            return all(i in now and (unlike is None or now[i][0] != unlike[i]) for i in range(count))
        wait_for(ready, f"{count} workers serving", timeout, self.log)
        return {i: pid for i, (pid, _) in self.serving().items()}

    def serving_own(self) -> int:
        """The pid of the single worker serving the app's own address (started without --bind)."""
        found = re.findall(r"worker 0 \(pid (\d+)\) serving the app's own address", self.log())
        assert found, self.log()
        return int(found[-1])

    def wait_log(self, text: str, count: int = 1, timeout: float = WAIT) -> None:
        wait_for(lambda: self.log().count(text) >= count, f"{count} x {text!r} in the log", timeout, self.log)

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the supervisor did not exit within {timeout}s\n{self.log()}") from None

    def logged_pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"\(pid (\d+)\)", self.log())}

    def kill_all(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(WAIT)
        for pid in self.logged_pids() - {self.pid if self.process else 0}:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervised(short_tmp: Path) -> Iterator[Supervised]:
    launched = Supervised(short_tmp)
    yield launched
    launched.kill_all()


def free_ports(count: int) -> int:
    """A port P such that P .. P+count-1 are all free now."""
    for _ in range(100):
        base = free_port()
        if base + count - 1 <= 65535 and not any(port_in_use(base + i) for i in range(count)):
            return base
    raise AssertionError(f"found no {count} free ports in a row")


@pytest.fixture(params=["ipc", "tcp"])
def bind(request: pytest.FixtureRequest, short_tmp: Path) -> str:
    if request.param == "ipc":
        return f"ipc://{short_tmp}/svc"
    return f"tcp://127.0.0.1:{free_ports(3)}"


# -- addresses, back-off, exit statuses (no processes) ------------------------------------------------------

def test_tcp_workers_bind_consecutive_ports() -> None:
    assert worker_addresses("tcp://127.0.0.1:6001", 3) == [
        "tcp://127.0.0.1:6001", "tcp://127.0.0.1:6002", "tcp://127.0.0.1:6003"]
    assert worker_addresses("tcp://[::1]:7000", 2) == ["tcp://[::1]:7000", "tcp://[::1]:7001"]


def test_ipc_worker_0_binds_the_path_and_the_others_add_their_number(short_tmp: Path) -> None:
    assert worker_addresses(f"ipc://{short_tmp}/svc", 3) == [
        f"ipc://{short_tmp}/svc", f"ipc://{short_tmp}/svc.1", f"ipc://{short_tmp}/svc.2"]
    assert worker_addresses("ipc://@svc", 2) == ["ipc://@svc", "ipc://@svc.1"]


def test_a_relative_ipc_path_is_made_absolute(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(short_tmp)
    assert worker_addresses("ipc://run/svc", 2) == [f"ipc://{short_tmp}/run/svc", f"ipc://{short_tmp}/run/svc.1"]


@pytest.mark.parametrize(("bind", "count", "problem"), [
    ("tcp://127.0.0.1:65535", 2, "past 65535"),
    ("tcp://127.0.0.1", 1, "tcp://HOST:PORT"),
    ("tcp://127.0.0.1:*", 1, "tcp://HOST:PORT"),
    ("tcp://:6000", 1, "tcp://HOST:PORT"),
    ("inproc://svc", 1, "tcp://HOST:PORT or ipc://PATH"),
    ("ipc://", 1, "ipc://PATH"),
    ("ipc:///" + "x" * 110, 1, "longer than a Unix socket path"),
    ("tcp://127.0.0.1:6000", 0, "at least one worker"),
])
def test_addresses_that_cannot_be_served_are_refused(bind: str, count: int, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        worker_addresses(bind, count)


def test_a_wildcard_host_is_advertised_as_the_host_the_client_reached() -> None:
    assert advertised_address("tcp://0.0.0.0:6001") == "tcp://:6001"
    assert advertised_address("tcp://*:6001") == "tcp://:6001"
    assert advertised_address("tcp://[::]:6001") == "tcp://:6001"
    assert advertised_address("tcp://10.0.0.5:6001") == "tcp://10.0.0.5:6001"
    assert advertised_address("ipc:///run/svc.1") == "ipc:///run/svc.1"


def test_accepts_tells_a_listening_address_from_a_silent_one(short_tmp: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert accepts(f"tcp://127.0.0.1:{port}")
        assert accepts(f"tcp://0.0.0.0:{port}")  # a wildcard is probed on loopback
    assert not accepts(f"tcp://127.0.0.1:{port}")
    path = short_tmp / "sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(str(path))
        unix.listen()
        assert accepts(f"ipc://{path}")
    assert not accepts(f"ipc://{path}")  # the file is left, but nobody listens
    assert not accepts(f"ipc://{short_tmp}/missing")


def test_backoff_doubles_to_its_maximum_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, stable=10.0)
    assert [backoff.delay(uptime=0.5) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(uptime=10.0) == 0.1
    assert backoff.delay(uptime=0.5) == 0.2


def test_exit_statuses_are_described_with_signal_names() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-15) == "killed by SIGTERM"


def test_many_workers_need_a_bind_address() -> None:
    with pytest.raises(ValueError, match="bind address"):
        Supervisor(APPS / "supervised_echo.py", workers=2)


# -- the command line ---------------------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "brubeckservice", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=START_TIMEOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
                          check=False)


def test_many_workers_without_bind_is_a_usage_error() -> None:
    done = run_cli("run", str(APPS / "supervised_echo.py"), "--workers", "2")
    assert done.returncode == 2
    assert "--workers 2 needs --bind ADDR" in done.stderr


def test_a_missing_app_file_is_a_usage_error(short_tmp: Path) -> None:
    done = run_cli("run", str(short_tmp / "nowhere.py"))
    assert done.returncode == 2
    assert "nowhere.py: no such file" in done.stderr


def test_a_bind_address_of_another_kind_is_a_usage_error() -> None:
    done = run_cli("run", str(APPS / "supervised_echo.py"), "--bind", "inproc://svc")
    assert done.returncode == 2
    assert "--bind 'inproc://svc': workers bind tcp://HOST:PORT or ipc://PATH" in done.stderr


def test_an_address_already_served_fails_at_once_with_status_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        done = run_cli("run", str(APPS / "supervised_echo.py"), "--bind", f"tcp://127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"tcp://127.0.0.1:{port} is already served (pid {os.getpid()}" in done.stderr


def test_help_for_the_program_and_for_run() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "run" in top.stdout
    assert "exit status: 0 ok, 1 failure, 2 usage error" in top.stdout
    run = run_cli("run", "--help")
    assert run.returncode == 0
    assert "--workers N" in run.stdout
    assert "ipc://PATH.i" in run.stdout


def test_the_brubeck_service_command_is_installed() -> None:
    command = Path(sys.executable).parent / "brubeck-service"
    assert command.exists(), "reinstall: pip install -e . (pyproject.toml [project.scripts])"
    done = subprocess.run([str(command), "run", "--help"], capture_output=True, text=True, timeout=START_TIMEOUT,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "usage: brubeck-service run" in done.stdout


# -- workers, in real processes -----------------------------------------------------------------------------

def test_every_worker_answers_on_its_own_address(bind: str, supervised: Supervised) -> None:
    supervised.start("supervised_echo.py", "--workers", "2", "--bind", bind)
    pids = supervised.wait_serving(2)
    addresses = worker_addresses(bind, 2)
    for index, address in enumerate(addresses):
        answer = call_echo(address, f"to {index}")
        assert answer == {"RETURN_DATA": f"to {index}", "pid": pids[index], "index": str(index)}
        pong = ping(address, WAIT)
        assert pong is not None
        assert pong.get("workers") == addresses  # a client given one address learns the others


def test_a_killed_worker_is_restarted_and_serves_again(supervised: Supervised, short_tmp: Path) -> None:
    bind = f"ipc://{short_tmp}/svc"
    supervised.start("supervised_echo.py", "--workers", "2", "--bind", bind)
    pids = supervised.wait_serving(2)
    os.kill(pids[1], signal.SIGKILL)
    supervised.wait_log(f"worker 1 (pid {pids[1]}) died: killed by SIGKILL; restarting in 0.1s")
    again = supervised.wait_serving(2, unlike={0: 0, 1: pids[1]})
    assert again[0] == pids[0]
    assert call_echo(worker_addresses(bind, 2)[1])["pid"] == again[1]


def test_sighup_rolls_the_workers_one_at_a_time(bind: str, supervised: Supervised) -> None:
    count = 3
    supervised.start("supervised_echo.py", "--workers", str(count), "--bind", bind)
    before = supervised.wait_serving(count)
    addresses = worker_addresses(bind, count)
    assert all(accepts(address) for address in addresses)
    supervised.send(signal.SIGHUP)
    # Sampled every 10 ms (a step takes a few hundred): a tighter loop of connects floods the workers'
    # listen backlogs, and then a probe fails for want of room, not of a worker.
    down: list[list[str]] = []
    deadline = time.monotonic() + START_TIMEOUT * count
    while "rolling restart done" not in supervised.log():
        assert time.monotonic() < deadline, f"the rolling restart did not finish\n{supervised.log()}"
        down.append([address for address in addresses if not accepts(address)])
        gevent.sleep(0.01)
    assert any(down), "no worker was seen down: the roll was not observed"
    assert max(len(d) for d in down) <= 1, f"workers down at once: {max(down, key=len)}\n{supervised.log()}"
    after = supervised.wait_serving(count, unlike=before)
    assert all(after[i] != before[i] for i in range(count))
    assert not any(process_alive(pid) for pid in before.values())
    for index, address in enumerate(addresses):
        assert call_echo(address)["pid"] == after[index]


def test_a_call_in_flight_when_its_worker_rolls_is_answered(supervised: Supervised, short_tmp: Path) -> None:
    bind = f"ipc://{short_tmp}/svc"
    supervised.start("supervised_echo.py", "--workers", "2", "--bind", bind)
    before = supervised.wait_serving(2)
    with Peer(worker_addresses(bind, 2)[0]) as peer:
        peer.request("/echo", {"RETURN_DATA": "slow", "SLEEP": "1"})
        wait_for(lambda: f"pid {before[0]} received slow" in supervised.log(), "the call to reach worker 0",
                 details=supervised.log)
        supervised.send(signal.SIGHUP)
        reply = peer.reply(WAIT)
    assert reply is not None, f"no reply\n{supervised.log()}"
    assert peer.drained, "the worker sent no DRAIN"
    assert reply.status_code == 200
    assert reply.body["pid"] == before[0]
    supervised.wait_log("rolling restart done", timeout=START_TIMEOUT)


def test_sigterm_stops_every_worker_and_exits_0(supervised: Supervised, short_tmp: Path) -> None:
    bind = f"ipc://{short_tmp}/svc"
    supervised.start("supervised_echo.py", "--workers", "2", "--bind", bind)
    pids = supervised.wait_serving(2)
    supervised.send(signal.SIGTERM)
    assert supervised.wait() == 0, supervised.log()
    assert not any(process_alive(pid) for pid in pids.values())
    assert not (short_tmp / "svc").exists()
    assert not (short_tmp / "svc.1").exists()
    log = supervised.log()
    assert "SIGTERM: stopping 2 workers" in log
    assert f"worker 1 (pid {pids[1]}) stopped: exit status 0" in log
    assert "all workers stopped; exiting" in log


def test_sigint_stops_them_too(supervised: Supervised, short_tmp: Path) -> None:
    supervised.start("supervised_echo.py", "--bind", f"tcp://127.0.0.1:{free_ports(1)}")
    pids = supervised.wait_serving(1)
    supervised.send(signal.SIGINT)
    assert supervised.wait() == 0, supervised.log()
    assert not process_alive(pids[0])


def test_workers_exit_when_the_supervisor_is_killed(supervised: Supervised, short_tmp: Path) -> None:
    supervised.start("supervised_echo.py", "--workers", "2", "--bind", f"ipc://{short_tmp}/svc")
    pids = supervised.wait_serving(2)
    supervised.send(signal.SIGKILL)
    supervised.wait()
    wait_for(lambda: not any(process_alive(pid) for pid in pids.values()), "the orphaned workers to exit",
             details=supervised.log)


def test_an_app_that_crashes_at_start_is_restarted_with_back_off(supervised: Supervised, short_tmp: Path) -> None:
    supervised.start("supervised_crash.py", "--workers", "2", "--bind", f"ipc://{short_tmp}/svc")
    for delay in ("0.1s", "0.2s", "0.4s", "0.8s"):
        supervised.wait_log(f"died: exit status 1; restarting in {delay}", count=2)
    assert "failing at start, on purpose" in supervised.log()
    assert supervised.process is not None
    assert supervised.process.poll() is None
    supervised.send(signal.SIGTERM)
    assert supervised.wait() == 0, supervised.log()


def test_without_bind_the_one_worker_serves_the_apps_own_address(supervised: Supervised, short_tmp: Path) -> None:
    supervised.start("supervised_echo.py")
    supervised.wait_log("worker 0 (pid ")
    assert "serving the app's own address" in supervised.log()
    own = f"ipc://{short_tmp}/supervised_echo"  # the app's relative address, in the working directory
    wait_for(lambda: accepts(own), f"the app to serve {own}", START_TIMEOUT, supervised.log)
    pong = ping(own, WAIT)
    assert pong is not None
    assert not pong.get("workers")  # no supervisor's list: BRUBECK_SERVICE_WORKERS is not set
    supervised.send(signal.SIGTERM)
    assert supervised.wait() == 0, supervised.log()


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(supervised: Supervised) -> None:
    # In-process Supervisor with a short margin, so the test does not wait the command's 5 s.
    script = ("import logging, sys; from brubeckservice.supervisor import Supervisor; "
              "logging.basicConfig(level=logging.INFO, format='%(message)s'); "
              f"sys.exit(Supervisor({str(APPS / 'supervised_stubborn.py')!r}, grace=0.2, kill_margin=0.1).run())")
    supervised.launch("-c", script)
    supervised.wait_log("stubborn: ignoring SIGTERM", timeout=START_TIMEOUT)
    pid = supervised.serving_own()
    supervised.send(signal.SIGTERM)
    assert supervised.wait() == 0, supervised.log()
    log = supervised.log()
    assert f"worker 0 (pid {pid}) did not stop within 0.3s: SIGKILL" in log
    assert f"worker 0 (pid {pid}) stopped: killed by SIGKILL" in log


def test_a_second_sigterm_kills_the_workers_at_once(supervised: Supervised) -> None:
    supervised.start("supervised_stubborn.py", "--grace", "3600")
    supervised.wait_log("stubborn: ignoring SIGTERM", timeout=START_TIMEOUT)
    pid = supervised.serving_own()
    supervised.send(signal.SIGTERM)
    supervised.wait_log("SIGTERM: stopping 1 worker ")
    supervised.send(signal.SIGTERM)
    assert supervised.wait() == 0, supervised.log()
    assert "SIGTERM again: killing the 1 worker still running now" in supervised.log()
    assert f"worker 0 (pid {pid}) stopped: killed by SIGKILL" in supervised.log()


def test_a_client_given_one_address_reaches_every_worker_and_a_rolling_restart_fails_no_call(
        bind: str, supervised: Supervised) -> None:
    count = 3
    supervised.start("supervised_echo.py", "--workers", str(count), "--bind", bind)
    before = supervised.wait_serving(count)
    with ServiceClient(bind, None, PASSPHRASE, timeout=WAIT) as client:
        # Worker 0's PONG lists its siblings: the client connects to each, through no broker.
        wait_for(lambda: sum(i.state == "alive" for i in client.workers) == count, "every worker through one address",
                 details=lambda: f"{client.workers}\n{supervised.log()}")
        assert {i.address for i in client.workers} == set(worker_addresses(bind, count))
        served: dict[int, int] = {}
        failures: list[BaseException] = []
        stop = False

        def load() -> None:
            while not stop:
                try:
                    pid = client.call("/echo", arguments={"SLEEP": "0.05"}).body["pid"]
                    served[pid] = served.get(pid, 0) + 1
                except Exception as exc:  # every one fails the test below
                    failures.append(exc)

        loaders = [gevent.spawn(load) for _ in range(6)]
        try:
            wait_for(lambda: set(before.values()) <= set(served), "calls on every worker")
            supervised.send(signal.SIGHUP)
            wait_for(lambda: "rolling restart done" in supervised.log(), "the rolling restart",
                     timeout=START_TIMEOUT * count, details=supervised.log)
            after = supervised.wait_serving(count, unlike=before)
            wait_for(lambda: set(after.values()) <= set(served), "calls on every new worker")
        finally:
            stop = True
            gevent.joinall(loaders, timeout=WAIT)
        assert failures == [], failures[:3]
        assert client.stats["drains"] == count and client.stats["lost"] == 0
