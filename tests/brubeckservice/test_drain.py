"""A worker stopping in order (docs/protocol.md §4 DRAIN, §8): its callers are told, nothing that reached it
is dropped, and it returns when they have settled or its grace period is over.

In-process workers are `test_server.Worker`s on tcp, driven by `RawClient`s (bare DEALERs speaking the
protocol by hand), so each step of a client's side is explicit. The last tests run a service as a
subprocess and stop it with SIGTERM, as a supervisor or an orchestrator does, and close a calling app.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq

from brubeck.application import Brubeck
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeckservice import envelope
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceUnavailable
from brubeckservice.mixin import ServiceClientMixin
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, wait_until
from tests.brubeckservice.test_server import SIGNER, RawClient, Worker

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
START_TIMEOUT = 20.0  # a fresh Python importing gevent and zmq, on a loaded machine

WorkerOf = Callable[..., Worker]


@pytest.fixture
def worker_of() -> Iterator[WorkerOf]:
    """Makes workers (`worker_of(heartbeat=30, ...)`: ServiceConnection's options) and closes them after."""
    made: list[Worker] = []

    def make(**options: Any) -> Worker:
        made.append(Worker(**options))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def drain_in_background(worker: Worker, grace: float | None = None) -> gevent.Greenlet[[], None]:
    return gevent.spawn(worker.connection.drain, grace)


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "brubeckservice.server"]


def acknowledge_the_last_drain(raw: RawClient, ack: object = True) -> None:
    """Expect the DRAIN a worker sends after a client's last answers, and acknowledge it."""
    told = raw.next()
    assert (told.kind, told.body["inflight"]) == (envelope.DRAIN, 0), told
    assert raw.pong({"drain_ack": told.msg_id.decode() if ack == "id" else ack})["draining"] is True


# -- a client that acknowledges --------------------------------------------------------------------------

def test_drain_tells_the_client_answers_its_calls_and_returns_once_it_acknowledged(
        worker_of: WorkerOf, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_of(heartbeat=30)  # a TTL of 3 minutes: only the acknowledgements can end this drain
    raw = worker.client("c1")
    raw.request("before")
    assert worker.board.next_arrival() == "before"
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        drainer = drain_in_background(worker)
        told = raw.next()
        assert (told.kind, told.msg_id) == (envelope.DRAIN, b"drain-1")
        assert told.body == {"grace": 30.0, "inflight": 1}
        # Sent after DRAIN was, but before the client acknowledged: it is still on its way when the drain
        # has begun, and must be served. (One connection keeps its order, so it arrives before the ack.)
        raw.request("crossed")
        info = raw.pong({"drain_ack": True})
        assert (info["draining"], info["inflight"]) == (True, 2)
        assert worker.board.next_arrival() == "crossed"
        assert not drainer.ready()  # acknowledged, but two calls are still running
        worker.board.release("before", "crossed")
        assert sorted(raw.next().body["name"] for _ in range(2)) == ["before", "crossed"]
        assert not drainer.ready()  # the answers may still be unread: ZMQ_IMMEDIATE would drop them
        acknowledge_the_last_drain(raw)
        drainer.get(timeout=WAIT)
    address = worker.connection.service_addr
    started, finished = log_lines(caplog)
    assert started == f"draining {address}: told 1 clients; 1 calls in flight, 0 queued"
    assert finished.startswith(f"drained {address} in ")
    assert finished.endswith("s: 1 clients acknowledged, 0 went silent")
    assert worker.connection.stats["served"] == 2


def test_an_acknowledgement_may_name_the_drain_it_acknowledges(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=30)
    raw = worker.client()
    raw.request("running")
    assert worker.board.next_arrival() == "running"
    drainer = drain_in_background(worker)
    first = raw.next()
    assert raw.pong({"drain_ack": "drain-0"})["draining"] is True  # not the one it was sent: no effect
    raw.pong({"drain_ack": first.msg_id.decode()})
    worker.board.release("running")
    assert raw.next().body == {"name": "running"}
    last = raw.next()
    assert last.kind == envelope.DRAIN
    raw.pong({"drain_ack": first.msg_id.decode()})  # the earlier one's id does not settle the last one
    assert not drainer.ready()
    raw.pong({"drain_ack": last.msg_id.decode()})
    drainer.get(timeout=WAIT)


def test_a_client_without_calls_is_settled_by_one_acknowledgement(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=30)
    raw = worker.client()
    raw.pong()
    drainer = drain_in_background(worker)
    assert raw.next().body == {"grace": 30.0, "inflight": 0}
    raw.pong({"drain_ack": True})  # nothing was answered since its DRAIN: no second one
    drainer.get(timeout=WAIT)


def test_a_client_first_heard_during_the_drain_is_told_too_and_served(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=30)
    first = worker.client("first")
    first.request("running")
    assert worker.board.next_arrival() == "running"
    drainer = drain_in_background(worker)
    assert first.next().kind == envelope.DRAIN
    assert first.pong({"drain_ack": True})["draining"] is True

    late = worker.client("late")  # it had not called before the drain began
    late.request("late-call")
    told = late.next()  # (sent when its request arrived, before it ran)
    assert (told.kind, told.body["inflight"]) == (envelope.DRAIN, 1)
    late.pong({"drain_ack": told.msg_id.decode()})
    assert worker.board.next_arrival() == "late-call"
    worker.board.release("running", "late-call")
    assert first.next().body == {"name": "running"}
    assert late.next().body == {"name": "late-call"}
    acknowledge_the_last_drain(first)
    assert not drainer.ready()  # "late" has not acknowledged its last DRAIN yet
    acknowledge_the_last_drain(late, "id")
    drainer.get(timeout=WAIT)


def test_requests_queued_beyond_capacity_are_run_before_the_drain_returns(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=30, capacity=1)
    raw = worker.client()
    for name in ["q0", "q1", "q2"]:
        raw.request(name)
    assert worker.board.next_arrival() == "q0"
    assert raw.pong()["queued"] == 2
    drainer = drain_in_background(worker)
    assert raw.next().body == {"grace": 30.0, "inflight": 1}
    raw.pong({"drain_ack": True})
    worker.board.release("q0", "q1")
    assert [raw.next().body["name"] for _ in range(2)] == ["q0", "q1"]
    assert [worker.board.next_arrival(), worker.board.next_arrival()] == ["q1", "q2"]
    assert not drainer.ready()
    worker.board.release("q2")
    assert raw.next().body == {"name": "q2"}
    acknowledge_the_last_drain(raw)
    drainer.get(timeout=WAIT)


# -- clients that say nothing, and the grace period ---------------------------------------------------------

def test_a_silent_client_settles_by_its_silence_for_the_heartbeat_ttl(
        worker_of: WorkerOf, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_of(heartbeat=0.05)  # TTL 0.3 s
    raw = worker.client()
    last_sent = time.monotonic()
    raw.pong()
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        drainer = drain_in_background(worker)
        assert raw.next().kind == envelope.DRAIN  # told, and never acknowledges (a 1.1 client)
        drainer.get(timeout=WAIT)
    assert time.monotonic() >= last_sent + worker.connection.heartbeat_ttl  # it waited for the silence
    assert log_lines(caplog)[-1].endswith("s: 0 clients acknowledged, 1 went silent")


def test_a_client_silent_for_the_ttl_before_the_drain_is_not_told(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=0.05)
    raw = worker.client()
    raw.pong()
    assert worker.connection.clients() == [(b"raw",)]
    wait_until(lambda: worker.connection.clients() == [], "the client to be silent for the TTL")
    drain_in_background(worker).get(timeout=WAIT)
    assert raw.pong()["draining"] is True  # no DRAIN came before this PONG


def test_the_grace_period_ends_the_drain_and_says_what_was_still_running(
        worker_of: WorkerOf, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_of(heartbeat=30)
    raw = worker.client()
    raw.request("stuck")
    assert worker.board.next_arrival() == "stuck"
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        drainer = drain_in_background(worker, grace=0.2)
        assert raw.next().body == {"grace": 0.2, "inflight": 1}
        raw.pong({"drain_ack": True})
        drainer.get(timeout=WAIT)
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.getMessage() == (f"drain of {worker.connection.service_addr}: the grace period ended with 1 "
                                    "calls still running, 0 queued and 0 clients yet to acknowledge; closing anyway")
    assert log_lines(caplog)[-1].endswith("s: 1 clients acknowledged, 0 went silent")


def test_a_drain_with_nothing_to_wait_for_returns_at_once_and_a_second_one_too(worker_of: WorkerOf) -> None:
    worker = worker_of(heartbeat=30)
    drain_in_background(worker).get(timeout=WAIT)
    drain_in_background(worker).get(timeout=WAIT)
    assert worker.client().pong()["draining"] is True


def test_closing_the_connection_cuts_a_drain_short(worker_of: WorkerOf, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_of(heartbeat=30)
    raw = worker.client()
    raw.request("stuck")
    assert worker.board.next_arrival() == "stuck"
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        drainer = drain_in_background(worker)
        assert raw.next().kind == envelope.DRAIN
        worker.connection.close()  # what a second SIGTERM does
        drainer.get(timeout=WAIT)
    assert log_lines(caplog) == [f"drain of {worker.connection.service_addr} cut short by close: 1 calls still "
                                 "running, 0 queued"]


def test_the_clients_remembered_are_bounded(worker_of: WorkerOf, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("brubeckservice.server.MAX_CLIENTS", 3)
    worker = worker_of(heartbeat=30)
    clients = [worker.client(f"c{n}") for n in range(5)]
    for raw in clients:
        raw.pong()
    assert worker.connection.clients() == [(b"c2",), (b"c3",), (b"c4",)]  # least recently heard forgotten
    clients[2].pong()
    assert worker.connection.clients() == [(b"c3",), (b"c4",), (b"c2",)]


# -- SIGTERM on a real service process ---------------------------------------------------------------------

@pytest.fixture
def held_service(short_tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """apps/held_service.py on an ipc address in `short_tmp`: (process, address, its log file)."""
    address = f"ipc://{short_tmp}/held"
    log_path = short_tmp / "held_service.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "BRUBECK_SERVICE_PASSPHRASE": PASSPHRASE}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, str(APPS / "held_service.py"), address], env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    yield process, address, log_path
    if process.poll() is None:
        process.kill()
    process.wait(timeout=WAIT)


def ping_sent(raw: RawClient) -> bool:
    """Whether a PING could be queued: with ZMQ_IMMEDIATE, only once the connection is up."""
    try:
        raw.sock.send_multipart(envelope.build_ping(SIGNER, b"ready", now_ms()), zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def test_sigterm_drains_answers_the_call_in_flight_then_exits_0_and_removes_its_socket(
        held_service: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    process, address, log_path = held_service
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"caller")
    sock.setsockopt(zmq.IMMEDIATE, 1)  # as protocol.md §1 advises: unread answers die with the connection
    sock.connect(address)
    try:
        raw = RawClient(sock, "caller")
        wait_until(lambda: ping_sent(raw), "a connection to the service", timeout=START_TIMEOUT)
        assert raw.next().msg_id == b"ready"
        raw.request("held", path="/hold")
        assert raw.pong()["inflight"] == 1

        process.send_signal(signal.SIGTERM)
        told = raw.next()
        assert (told.kind, told.body["inflight"]) == (envelope.DRAIN, 1)
        raw.request("release", path="/release")  # arrives during the drain: still served
        raw.ping(b"ack", {"drain_ack": True})
        answers = {raw.next().msg_id for _ in range(3)}
        assert answers == {b"held", b"release", b"ack"}
        last = raw.next()
        assert (last.kind, last.body["inflight"]) == (envelope.DRAIN, 0), last
        # The worker may close as soon as this arrives, and with ZMQ_IMMEDIATE its PONG may then be lost
        # unread (docs/protocol.md §4): do not wait for one.
        raw.ping(b"last-ack", {"drain_ack": last.msg_id.decode()})
        assert process.wait(timeout=WAIT) == 0, log_path.read_text()
    finally:
        sock.close(linger=0)
        context.destroy(linger=0)
    assert not Path(address[len("ipc://"):]).exists()
    output = log_path.read_text()
    assert "SIGTERM: draining" in output
    assert f"draining {address}: told 1 clients; 1 calls in flight, 0 queued" in output
    assert "1 clients acknowledged, 0 went silent" in output


# -- closing a calling app closes its service clients --------------------------------------------------------

class CallingPage(ServiceClientMixin, WebMessageHandler):
    pass


class IdleConnection:
    """A transport that serves nothing: the calling app's side is not what is tested here."""

    base_handler: type[WebMessageHandler] = WebMessageHandler

    def process_messages(self, application: object) -> None:
        return None

    def reply(self, message: object, response: object) -> None:
        raise AssertionError("nothing to reply to")

    def close(self) -> None:
        return None


def test_closing_an_app_closes_the_service_clients_it_registered(worker_of: WorkerOf) -> None:
    workers = [worker_of(), worker_of()]
    app = Brubeck(msg_conn=IdleConnection())
    page = CallingPage(app, Request("test", "1", "/", {"METHOD": "GET", "PATH": "/"}, b""))
    clients = [page.register_service(worker.address, None, PASSPHRASE) for worker in workers]
    assert clients[0].call("/echo").ok
    app.close()
    for client in clients:
        with pytest.raises(ServiceUnavailable):
            client.call("/echo")
    app.close()  # twice is fine
    clients[0].close()  # and so is closing a client by hand, as code written before 0.4 does
