"""ServiceConnection: a Brubeck app as a service that answers every caller and survives any input.

Real calls go through `pair.client`; hand-made messages through a bare DEALER (`pair.raw_socket()`), which
receives whatever the service sends back. The tests of many workers' needs (capacity, queue, PONG's
report, the supervisor's environment) use a `Worker` on tcp and `RawClient`s, each a DEALER speaking the
protocol by hand; test_drain.py uses them too.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from gevent.event import Event
from gevent.pool import Pool
from gevent.queue import Queue

import brubeck
from brubeck.application import Brubeck
from brubeck.errors import ConfigurationError
from brubeck.testing import free_port
from brubeckservice import envelope
from brubeckservice.addresses import BIND_ENV, WORKERS_ENV
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceTimeout
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection
from brubeckservice.signing import Signer
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import (
    PASSPHRASE,
    ROUTES,
    WAIT,
    EchoHandler,
    Gate,
    assert_next_is_pong,
    receive,
    signed_request,
    wait_until,
)

SIGNER = Signer(PASSPHRASE)


def error_of(frames: list[bytes]) -> tuple[bytes, int, str]:
    """(correlation id, status, message) of an ERR the service sent."""
    env = envelope.parse_envelope(frames)
    assert env.kind == envelope.ERR
    header, _ = envelope.parse_control(env, None, now_ms(), 30_000)
    return env.msg_id, header.status, header.msg


def reply_of(frames: list[bytes]) -> ServiceResponse:
    return envelope.parse_reply(envelope.parse_envelope(frames), SIGNER, now_ms(), 30_000)


# -- routing to handlers ------------------------------------------------------------------------------------

def test_a_request_is_routed_by_path_and_answered_under_its_id(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/echo", msg_id=b"my-id", arguments={"RETURN_DATA": "raw"}))
    reply = reply_of(receive(raw))
    assert (reply.msg_id, reply.status_code, reply.body["RETURN_DATA"]) == (b"my-id", 200, "raw")


def test_an_unknown_path_is_a_404_reply(pair: ServicePair) -> None:
    response = pair.client.call("/nope")
    assert (response.status_code, response.status_msg, response.path) == (404, "Not Found", "/nope")
    assert response.body == {"error": {"type": "NotFound", "message": "Not Found (request /nope)"}}


def test_an_unknown_method_is_a_405_reply_with_the_allowed_methods(pair: ServicePair) -> None:
    response = pair.client.call("/echo", method="frobnicate")
    assert (response.status_code, response.status_msg) == (405, "Method 'frobnicate' not supported")
    assert response.body["error"]["allow"] == ["REQUEST"]
    assert response.headers == {"Allow": "REQUEST"}


def test_a_route_for_other_methods_only_is_a_405_reply_naming_them(pair: ServicePair) -> None:
    pair.app.add_route_rule(r"^/restricted", EchoHandler, method="request")
    assert pair.client.call("/restricted").ok
    response = pair.client.call("/restricted", method="get")
    assert (response.status_code, response.headers) == (405, {"Allow": "REQUEST"})
    assert response.body["error"]["allow"] == ["REQUEST"]  # the same answer as a handler's own 405


def test_a_handler_exception_is_a_500_reply_with_type_and_message(pair: ServicePair,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = pair.client.call("/fail")
    assert (response.status_code, response.status_msg) == (500, "ValueError: the handler broke")
    assert response.body == {"error": {"type": "ValueError", "message": "the handler broke"}}
    assert "the handler broke" in caplog.text
    assert pair.client.call("/echo").ok  # and the service goes on


def test_a_handler_that_returns_no_render_is_a_500_reply(pair: ServicePair) -> None:
    response = pair.client.call("/no-render")
    assert (response.status_code, response.body) == (
        500, {"error": {"type": "TypeError", "message": "handler did not return render()"}})


def test_a_slow_request_does_not_hold_up_others(pair: ServicePair, gate: Gate) -> None:
    slow = gevent.spawn(pair.client.call, "/block")
    gate.next_arrival()
    assert pair.client.call("/echo", timeout=1).ok
    assert not slow.ready()
    gate.release.set()
    assert slow.get(timeout=WAIT).ok


def test_a_handler_returning_none_answers_when_connection_reply_is_called(pair: ServicePair, gate: Gate) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/defer", msg_id=b"deferred-1"))
    message = gate.next_arrival()
    assert_next_is_pong(raw, SIGNER)  # the handler returned None: nothing was sent
    pair.connection.reply(message, ServiceResponse(status_code=200, status_msg="At last",
                                                   body={"RETURN_DATA": "later"}, path=message.path))
    reply = reply_of(receive(raw))
    assert (reply.msg_id, reply.status_msg, reply.body) == (b"deferred-1", "At last", {"RETURN_DATA": "later"})


def test_a_deferred_reply_reaches_a_waiting_call(pair: ServicePair, gate: Gate) -> None:
    call = gevent.spawn(pair.client.call, "/defer", arguments={"RETURN_DATA": "x"})
    message = gate.next_arrival()
    pair.connection.reply(message, ServiceResponse(status_code=202, path=message.path))
    assert call.get(timeout=WAIT).status_code == 202


# -- refusing what should not be served ----------------------------------------------------------------------

def test_a_request_whose_deadline_has_passed_is_skipped(pair: ServicePair, gate: Gate) -> None:
    expired = ServiceRequest(path="/block", deadline=now_ms() - 1000)
    with pytest.raises(ServiceTimeout):
        pair.client.call_request(expired, timeout=0.3)
    assert pair.connection.stats["expired"] == 1
    assert gate.arrived.empty()  # the handler never ran
    assert pair.connection.stats["served"] == 0


def test_a_replayed_request_is_refused_with_401(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    frames = signed_request(SIGNER, "/echo", msg_id=b"once")
    raw.send_multipart(frames)
    assert reply_of(receive(raw)).status_code == 200
    raw.send_multipart(frames)  # a recording of the same request
    assert error_of(receive(raw)) == (b"once", 401, "replayed message")
    assert pair.connection.stats["served"] == 1


def test_a_stale_request_is_refused_with_401(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/echo", msg_id=b"old", ts=now_ms() - 120_000))
    msg_id, status, message = error_of(receive(raw))
    assert (msg_id, status) == (b"old", 401)
    assert message.startswith("sent 120.0s ago by the sender's clock, beyond the 30s replay window")
    assert pair.connection.stats["served"] == 0


def test_a_request_that_queued_past_its_deadline_is_skipped_as_late_not_refused_as_forged(
        pair: ServicePair, caplog: pytest.LogCaptureFixture) -> None:
    # Sent 40 s ago with a 10 s timeout (it waited in a queue while the service was down): not a clock or key
    # problem, and its caller has given up, so no answer at all.
    sent = now_ms() - 40_000
    late = envelope.build_request(SIGNER, b"late", ServiceRequest(path="/echo", deadline=sent + 10_000), sent,
                                   "raw", 1)
    raw = pair.raw_socket()
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        raw.send_multipart(late)
        assert_next_is_pong(raw, SIGNER)  # nothing came back for b"late" before the PONG
    assert (pair.connection.stats["expired"], pair.connection.stats["forged"]) == (1, 0)
    assert "skipped request b'late'" in caplog.text
    assert "arrived 30.0s after its caller's deadline" in caplog.text
    assert "401" not in caplog.text


def test_a_forged_request_is_refused_counted_and_logged(pair: ServicePair, caplog: pytest.LogCaptureFixture) -> None:
    raw = pair.raw_socket()
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        raw.send_multipart(signed_request(Signer("not the passphrase"), "/echo", msg_id=b"forged"))
        assert error_of(receive(raw)) == (b"forged", 401, "bad or missing signature")
    assert pair.connection.stats["forged"] == 1
    assert pair.connection.stats["served"] == 0
    assert "refused request b'forged'" in caplog.text


def test_garbage_is_dropped_and_real_calls_keep_succeeding(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    signed_bad_header = [envelope.MARKER, envelope.REQ, b"bad-header", b'{"ts":"now"}', b"{}"]
    cases: list[tuple[list[bytes], tuple[bytes, int, str] | None]] = [
        ([b"random garbage"], None),
        ([os.urandom(100) for _ in range(6)], None),
        ([os.urandom(10) for _ in range(3)], None),
        ([b"BRS1", b"REQ", b"short"], None),
        ([b"BRS2", b"REQ", b"v2", b"{}", b"{}", b"\x00" * 32],
         (b"v2", 505, "unsupported protocol version b'BRS2'; this side speaks b'BRS1'")),
        ([b"BRS1", b"NOPE", b"kind", b"{}", b"{}", b"\x00" * 32], (b"kind", 400, "unknown message kind b'NOPE'")),
        ([b"BRS1", b"REQ", b"", b"{}", b"{}", b"\x00" * 32], None),  # no usable id to answer to
        ([b"BRS1", b"REQ", b"unsigned", b'{"ts":"now"}', b"{}", b""], (b"unsigned", 401, "bad or missing signature")),
        (envelope.build_reply(SIGNER, b"not-for-me", ServiceResponse(status_code=200), now_ms()),
         (b"not-for-me", 400, "a service does not accept b'REP'")),
    ]
    for frames, _ in cases:
        raw.send_multipart(frames)
        assert pair.client.call("/echo", arguments={"RETURN_DATA": "still here"}).body["RETURN_DATA"] == "still here"
    for _, expected in cases:
        if expected is not None:  # what carried a usable id is answered, so its sender fails fast
            assert error_of(receive(raw)) == expected
    raw.send_multipart([*signed_bad_header, SIGNER.sign(signed_bad_header)])
    bad = reply_of(receive(raw))  # its sender holds the key: a signed 400 it can trust
    assert (bad.msg_id, bad.status_code) == (b"bad-header", 400)
    assert bad.body["error"]["type"] == "ProtocolError"
    assert "Expected `int`, got `str` - at `$.ts`" in bad.body["error"]["message"]
    assert_next_is_pong(raw, SIGNER)  # and nothing else came back
    assert pair.connection.stats["malformed"] == 9
    assert pair.connection.stats["forged"] == 1
    assert pair.connection.stats["errors"] == 0
    assert not pair.serving.dead


def test_a_huge_bad_message_is_answered_and_logged_in_a_few_hundred_bytes(pair: ServicePair,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    # Reflection and log amplification: 1 MiB in must not become 1 MiB (or more, as repr) out and in the log.
    raw = pair.raw_socket()
    huge = b"BRS9" + b"\xff" * (1 << 20)
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        raw.send_multipart([huge, b"REQ", b"big", b"{}", b"{}", b"\x00" * 32])
        answer = receive(raw)
        assert_next_is_pong(raw, SIGNER)
    assert error_of(answer)[:2] == (b"big", 505)
    assert sum(map(len, answer)) < 600
    assert caplog.records and all(len(r.getMessage()) < 600 for r in caplog.records)
    long_text = envelope.build_error(b"x", 400, "y" * 10_000, now_ms())
    assert len(long_text[3]) < envelope.MAX_ERROR_TEXT + 100


def test_a_message_of_too_many_frames_is_dropped_unanswered(pair: ServicePair) -> None:
    # Every extra leading frame was taken as routing, and the ERR echoed them all back (40 frames of 15 MiB
    # were). Now such a message is dropped, nothing is answered, and the connection keeps its other work.
    raw = pair.raw_socket()
    frames = [b"r" * 1000] * 40 + [b"BRS9", b"REQ", b"many", b"{}", b"{}", b"\x00" * 32]
    raw.send_multipart(frames)
    assert_next_is_pong(raw, SIGNER)  # nothing came back before the PONG
    assert pair.connection.stats["malformed"] == 1
    assert pair.connection.channel.max_frames == envelope.FRAMES + envelope.MAX_ROUTING_FRAMES
    assert pair.client.call("/echo").ok


def test_a_flood_of_bad_messages_logs_a_bounded_number_of_lines(pair: ServicePair,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    raw = pair.raw_socket()
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        for number in range(1000):
            raw.send_multipart(signed_request(Signer("not the passphrase"), msg_id=b"f%d" % number))
            raw.send_multipart([b"garbage %d" % number])
        for _ in range(1000):
            error_of(receive(raw))
        assert_next_is_pong(raw, SIGNER)
        pair.connection.close()  # the summaries still owed are written now
    assert (pair.connection.stats["forged"], pair.connection.stats["malformed"]) == (1000, 1000)
    lines = [r.getMessage() for r in caplog.records if r.name == "brubeckservice.server"]
    assert len([line for line in lines if "refused request" in line]) == 1  # the first, in full
    assert any(line.startswith("forged: 999 more in the last ") for line in lines)
    assert any(line.startswith("malformed, unanswered: 999 more in the last ") for line in lines)
    assert len(lines) <= 6


def test_a_captured_ping_played_again_gets_no_pong(pair: ServicePair) -> None:
    # A PING carries no sequence number: replayed from any connection within the window, it got a signed
    # PONG with the service's counters. The service now remembers the PINGs it answered, and drops one it
    # has seen (no ERR either: two clients can sign the same PING, and an ERR 401 would fail their calls).
    ping = envelope.build_ping(SIGNER, b"captured", now_ms())
    first, second = pair.raw_socket(), pair.raw_socket()
    first.send_multipart(ping)
    assert envelope.parse_envelope(receive(first)).kind == envelope.PONG
    second.send_multipart(ping)
    assert_next_is_pong(second, SIGNER)  # (a PING of its own: the replayed one got nothing before it)
    assert pair.connection.stats["replayed"] == 1


def test_a_caller_that_reads_nothing_holds_no_worker(worker_of: Callable[..., Worker],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A key holder that never read made every worker wait for room until each request's deadline: with
    # one worker, nobody else was served. Now its replies wait in its backlog, and the worker goes on.
    monkeypatch.setattr("brubeckservice.server.REPLY_HWM", 20)  # (a full queue sooner than 10,000 replies)
    monkeypatch.setattr("brubeckservice.backlog.SEND_PATIENCE", 0.5)
    worker = worker_of(capacity=1)
    silent = worker.context.socket(zmq.DEALER)
    silent.setsockopt(zmq.LINGER, 0)
    silent.setsockopt(zmq.RCVHWM, 1)
    silent.connect(worker.address)
    try:
        for seq in range(1, 2001):
            request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": "x" * 20_000})  # (past any buffers)
            silent.send_multipart(envelope.build_request(SIGNER, b"%d" % seq, request, now_ms(), "silent", seq))
        wait_until(lambda: len(worker.connection.backlogs) > 0, "the silent caller's replies to back up", timeout=20)
        with ServiceClient(worker.address, None, PASSPHRASE, context=worker.context, timeout=4) as client:
            # (4 s: less than the 5 s a worker used to wait, more than a loaded machine needs)
            assert client.call("/echo", arguments={"RETURN_DATA": "me"}).body["RETURN_DATA"] == "me"
        wait_until(lambda: worker.connection.stats["served"] >= 2001, "the silent caller's requests to be served")
        wait_until(lambda: len(worker.connection.backlogs) == 0, "its backlog to be dropped, unread")
        assert worker.connection.stats["undeliverable"] > 0
    finally:
        silent.close(linger=0)


def test_the_log_says_whether_a_bad_message_was_answered_or_dropped(pair: ServicePair,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    raw = pair.raw_socket()
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        raw.send_multipart([b"BRS1", b"NOPE", b"kind", b"{}", b"{}", b"\x00" * 32])
        error_of(receive(raw))
        raw.send_multipart([b"random garbage"])
        assert_next_is_pong(raw, SIGNER)
    answered, dropped = (r.getMessage() for r in caplog.records)
    assert answered.startswith(f"malformed message on {pair.address}, answered ERR 400: unknown message kind")
    assert dropped == (f"dropped malformed message on {pair.address} (no id to answer): expected 1..4 routing "
                       "frames and then the 6 envelope frames, got 2 frames in all")


def test_a_forged_ping_is_refused(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(envelope.build_ping(Signer("not the passphrase"), b"who", now_ms()))
    assert error_of(receive(raw)) == (b"who", 401, "bad or missing signature")


def routable(connection: ServiceConnection, routing: tuple[bytes, ...]) -> bool:
    """Whether the service's socket still has a connection under `routing` (it is sent an empty frame)."""
    try:
        connection.channel.send([*routing, b""])
    except zmq.ZMQError as err:
        if err.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True


def test_a_reply_to_a_caller_that_left_is_counted_not_fatal(tmp_path: Path) -> None:
    gate = Gate()
    # ipc, not inproc: the service must see the connection drop, and inproc reports no such event.
    with ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/service", gate=gate) as pair:
        admission = pair.connection.admission  # (it reads the socket's monitor: libzmq allows one)
        assert admission is not None
        # A caller that vanishes (its process dies) with its call still out, so it says nothing: a client
        # that closes would first CANCEL the call, and then there would be no reply to count.
        leaving = pair.raw_socket()
        leaving.send_multipart(signed_request(SIGNER, "/block", msg_id=b"left"))
        caller = gate.next_arrival().sender
        wait_until(lambda: len(admission) == 2, "both clients' connections")
        leaving.close(linger=0)
        wait_until(lambda: len(admission) == 1, "the service to see the caller leave")
        # The event comes from ZeroMQ's I/O thread; the socket itself forgets the connection a few
        # commands later. Until it has, a message to it is queued and lost, which nobody can count.
        wait_until(lambda: not routable(pair.connection, caller), "the socket to forget the caller")
        gate.release.set()
        wait_until(lambda: pair.connection.stats["undeliverable"] == 1, "the undeliverable reply to be counted")
        assert pair.client.call("/echo").ok


def test_a_caller_slower_to_read_than_to_send_still_gets_every_reply(pair: ServicePair) -> None:
    # More requests than ZeroMQ's default queues to one caller hold (1,000 each way), sent before any reply
    # is read: the service must queue or wait for room, not drop replies (the 2013 code dropped them).
    raw = pair.raw_socket()
    count = 12_000
    for seq in range(1, count + 1):
        request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": seq})
        raw.send_multipart(envelope.build_request(SIGNER, b"%d" % seq, request, now_ms(), "flood", seq))
    seen = {reply_of(receive(raw)).body["RETURN_DATA"] for _ in range(count)}
    assert seen == set(range(1, count + 1))
    assert pair.connection.stats["undeliverable"] == 0


def test_replies_find_their_callers_among_many_clients(pair: ServicePair) -> None:
    clients = [pair.new_client() for _ in range(5)]
    calls = [gevent.spawn(c.call, "/echo", arguments={"RETURN_DATA": str(n)}) for n, c in enumerate(clients)]
    assert [c.get(timeout=WAIT).body["RETURN_DATA"] for c in calls] == ["0", "1", "2", "3", "4"]


def test_close_stops_serving() -> None:
    pair = ServicePair([(r"^/echo", EchoHandler)])
    serving = pair.serving
    pair.connection.close()
    pair.connection.close()  # twice is fine
    serving.join(timeout=WAIT)
    assert serving.dead
    pair.close()


# -- many workers: capacity, the queue beyond it, and what PONG reports (docs/protocol.md §4, §8) --------------

class Board:
    """What `HeldHandler` reports to a test (`arrived`, in order; `running`, `most` at once), and the
    switch the test holds each request by (`release(name)`)."""

    def __init__(self) -> None:
        self.arrived: Any = Queue()  # of names
        self.running = 0
        self.most = 0
        self._releases: defaultdict[str, Event] = defaultdict(Event)
        self._everything = Event()

    def release(self, *names: str) -> None:
        for name in names:
            self._releases[name].set()

    def release_all(self) -> None:
        self._everything.set()
        for event in self._releases.values():
            event.set()

    def hold(self, name: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        self.arrived.put(name)
        try:
            if not self._everything.is_set():
                self._releases[name].wait()
        finally:
            self.running -= 1

    def next_arrival(self) -> str:
        name: str = self.arrived.get(timeout=WAIT)
        return name


class HeldHandler(ServiceMessageHandler):
    """Runs until the test releases it by the request's `name` argument, then echoes that name."""

    def request(self) -> ServiceResponse:
        name = self.message.get_argument("name")
        board: Board = self.application.settings["board"]
        board.hold(name)
        self.set_status(200, "released")
        self.add_to_payload("name", name)
        return self.render()


@dataclass
class Received:
    kind: bytes
    msg_id: bytes
    body: Any  # REP: the payload; PONG and DRAIN: the info object


class RawClient:
    """A bare DEALER speaking the protocol by hand: numbered requests of its own session, PINGs, and
    whatever the worker sends back, parsed and checked."""

    def __init__(self, sock: zmq.Socket[bytes], sid: str) -> None:
        self.sock = sock
        self.sid = sid
        self.seq = 0
        self._pings = 0

    def request(self, name: str, path: str = "/held") -> None:
        self.seq += 1
        request = ServiceRequest(path=path, arguments={"name": name})
        self.sock.send_multipart(envelope.build_request(SIGNER, name.encode(), request, now_ms(), self.sid, self.seq))

    def ping(self, msg_id: bytes = b"ping", body: dict[str, Any] | None = None) -> None:
        self.sock.send_multipart(envelope.build_ping(SIGNER, msg_id, now_ms(), body))

    def next(self) -> Received:
        env = envelope.parse_envelope(receive(self.sock))
        if env.kind == envelope.REP:
            return Received(env.kind, env.msg_id, envelope.parse_reply(env, SIGNER, now_ms(), 30_000).body)
        assert env.kind in (envelope.PONG, envelope.DRAIN), env
        _, body = envelope.parse_control(env, SIGNER, now_ms(), 30_000)
        return Received(env.kind, env.msg_id, body)

    def pong(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """PING and return the PONG's info; the PONG must be the next thing to arrive."""
        self._pings += 1
        msg_id = b"ping-%d-%s" % (self._pings, self.sid.encode())  # a PING seen before is refused
        self.ping(msg_id, body)
        answer = self.next()
        assert (answer.kind, answer.msg_id) == (envelope.PONG, msg_id), answer
        info: dict[str, Any] = answer.body
        return info


class Worker:
    """A service app on a real ServiceConnection (tcp on 127.0.0.1, any free port), serving `HeldHandler`
    at /held and helpers.ROUTES, in a greenlet as `app.run()` would (without taking over the signals)."""

    def __init__(self, pool: Pool | None = None, **options: Any) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        options.setdefault("bind", "tcp://127.0.0.1:*")
        self.connection = ServiceConnection("tcp://127.0.0.1:*", None, PASSPHRASE, context=self.context, **options)
        self.address = self.connection.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.board = Board()
        self.app = Brubeck(msg_conn=self.connection, handler_tuples=[(r"^/held", HeldHandler), *ROUTES], pool=pool,
                           board=self.board, gate=Gate())
        self.serving = gevent.spawn(self.connection.process_messages, self.app)
        self._sockets: list[zmq.Socket[bytes]] = []

    def client(self, name: str = "raw") -> RawClient:
        """A raw client with routing id and session `name`."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, name.encode())
        sock.connect(self.address)
        self._sockets.append(sock)
        return RawClient(sock, name)

    def close(self) -> None:
        self.board.release_all()
        self.connection.close()
        self.serving.join(timeout=WAIT)
        for sock in self._sockets:
            sock.close(linger=0)
        self.context.destroy(linger=0)


@pytest.fixture
def worker_of() -> Iterator[Callable[..., Worker]]:
    """Makes workers (`worker_of(capacity=2, ...)`: ServiceConnection's options) and closes them after."""
    made: list[Worker] = []

    def make(pool: Pool | None = None, **options: Any) -> Worker:
        made.append(Worker(pool, **options))
        return made[-1]

    yield make
    for worker in made:
        worker.close()


def test_pong_reports_the_workers_load_capacity_and_version(worker_of: Callable[..., Worker]) -> None:
    worker = worker_of(capacity=3)
    raw = worker.client()
    info = raw.pong()
    assert info["uptime"] >= 0
    del info["uptime"]
    assert info == {"inflight": 0, "queued": 0, "capacity": 3, "draining": False, "served": 0, "errors": 0,
                    "latency_ms": {"p50": None, "p99": None, "samples": 0},
                    "version": brubeck.__version__, "accepts": ["REQ", "PING", "CANCEL"],
                    "stats": {}}  # no `workers`: none were named
    raw.request("one")
    assert worker.board.next_arrival() == "one"
    assert raw.pong()["inflight"] == 1
    worker.board.release("one")
    assert raw.next().body == {"name": "one"}
    info = raw.pong()
    assert (info["inflight"], info["served"], info["errors"], info["stats"]) == (0, 1, 0, {"served": 1})
    assert info["latency_ms"]["samples"] == 1
    assert info["latency_ms"]["p50"] == info["latency_ms"]["p99"] > 0  # it waited for its release


def test_capacity_is_the_apps_pool_size_unless_given(worker_of: Callable[..., Worker]) -> None:
    assert worker_of(Pool(4)).client().pong()["capacity"] == 4
    assert worker_of(Pool(4), capacity=2).client().pong()["capacity"] == 2
    assert worker_of().client().pong()["capacity"] == 100  # no pool, or an unbounded one: the default
    assert worker_of(Pool()).client().pong()["capacity"] == 100


def test_capacity_holds_and_the_rest_run_in_arrival_order_while_pings_are_answered(
        worker_of: Callable[..., Worker]) -> None:
    worker = worker_of(capacity=2)
    raw = worker.client()
    names = ["r0", "r1", "r2", "r3", "r4"]
    for name in names:
        raw.request(name)
    assert [worker.board.next_arrival(), worker.board.next_arrival()] == ["r0", "r1"]
    info = raw.pong()  # at capacity, and PINGs are still answered
    assert (info["inflight"], info["queued"], info["capacity"]) == (2, 3, 2)  # the other three wait, not run
    worker.board.release("r1")
    assert raw.next().body == {"name": "r1"}
    assert worker.board.next_arrival() == "r2"  # the first in line takes the free slot
    assert raw.pong()["queued"] == 2
    worker.board.release("r0", "r2")
    assert sorted(raw.next().body["name"] for _ in range(2)) == ["r0", "r2"]
    assert [worker.board.next_arrival(), worker.board.next_arrival()] == ["r3", "r4"]
    worker.board.release("r3", "r4")
    assert sorted(raw.next().body["name"] for _ in range(2)) == ["r3", "r4"]
    assert worker.board.most == 2
    info = raw.pong()
    assert (info["inflight"], info["queued"], info["served"]) == (0, 0, 5)


def test_requests_beyond_the_queue_wait_in_zeromq_and_pings_with_them(worker_of: Callable[..., Worker]) -> None:
    worker = worker_of(capacity=1, max_queued=2)
    raw = worker.client()
    for name in ["r0", "r1", "r2", "r3"]:
        raw.request(name)
    raw.ping(b"behind")
    assert worker.board.next_arrival() == "r0"
    wait_until(lambda: worker.connection.queued == 2, "r1 and r2 to queue")
    # r3 and the PING wait in ZeroMQ's queue. Each time a slot frees up, one more message is read: r3 when
    # r1 starts, the PING when r2 does. So the PONG comes after both replies (one connection keeps order).
    worker.board.release("r0", "r1")
    assert [raw.next().body["name"] for _ in range(2)] == ["r0", "r1"]
    pong = raw.next()
    assert (pong.kind, pong.msg_id) == (envelope.PONG, b"behind")
    assert (pong.body["inflight"], pong.body["queued"]) == (1, 1)  # r2 runs, r3 waits
    worker.board.release_all()
    assert [raw.next().body["name"] for _ in range(2)] == ["r2", "r3"]


def test_a_worker_binds_the_supervisors_address_and_lists_its_workers(
        worker_of: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    monkeypatch.setenv(BIND_ENV, f"tcp://127.0.0.1:{port}")
    monkeypatch.setenv(WORKERS_ENV, f"tcp://127.0.0.1:{port}, tcp://127.0.0.1:{port + 1},")
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        connection = ServiceConnection("tcp://127.0.0.1:1", None, PASSPHRASE)
    try:
        assert (connection.service_addr, connection.configured_addr) == (f"tcp://127.0.0.1:{port}",
                                                                         "tcp://127.0.0.1:1")
        assert connection.socket.getsockopt_string(zmq.LAST_ENDPOINT) == f"tcp://127.0.0.1:{port}"
        assert connection.workers == [f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"]
        assert caplog.messages == [f"binding tcp://127.0.0.1:{port} ({BIND_ENV}) instead of tcp://127.0.0.1:1"]
    finally:
        connection.close()
    # Given in code, they win over the environment.
    worker = worker_of(bind="tcp://127.0.0.1:*", workers=["tcp://:6001", "tcp://:6002"])
    assert worker.address != f"tcp://127.0.0.1:{port}"
    assert worker.client().pong()["workers"] == ["tcp://:6001", "tcp://:6002"]


def test_a_worker_in_a_supervisors_environment_reports_its_workers_in_pong(
        worker_of: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKERS_ENV, "ipc://run/slow-0,ipc://run/slow-1")
    assert worker_of().client().pong()["workers"] == ["ipc://run/slow-0", "ipc://run/slow-1"]


def test_zmtp_heartbeats_are_set_on_the_socket(worker_of: Callable[..., Worker]) -> None:
    sock = worker_of(heartbeat=0.25).connection.socket
    assert (sock.getsockopt(zmq.HEARTBEAT_IVL), sock.getsockopt(zmq.HEARTBEAT_TIMEOUT),
            sock.getsockopt(zmq.HEARTBEAT_TTL)) == (250, 500, 1500)


@pytest.mark.parametrize("options", [{"capacity": 0}, {"max_queued": -1}, {"heartbeat": 0}, {"drain_grace": -1}])
def test_impossible_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        ServiceConnection("tcp://127.0.0.1:*", None, PASSPHRASE, **options)


# -- which connections a service keeps (brubeckservice/admission.py, through the real ServiceConnection) ----

@contextmanager
def keyless_peer(worker: Worker) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A bare DEALER connected to `worker` that does not reconnect, and a monitor of its disconnection."""
    keyless = worker.context.socket(zmq.DEALER)
    keyless.setsockopt(zmq.LINGER, 0)
    keyless.setsockopt(zmq.RECONNECT_IVL, 60_000)  # (cut off stays cut off, for the test to see)
    events = keyless.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    keyless.connect(worker.address)
    try:
        yield keyless, events
    finally:
        keyless.disable_monitor()
        events.close(linger=0)
        keyless.close(linger=0)


def test_a_connection_that_only_sends_garbage_is_closed_and_a_signing_one_stays(
        worker_of: Callable[..., Worker]) -> None:
    worker = worker_of(auth_timeout=0.3)
    signing = worker.client("signing")
    assert signing.pong()["inflight"] == 0  # a signed PING: this connection is a key holder's
    with keyless_peer(worker) as (keyless, events):
        keyless.send_multipart([b"BRS1", b"REQ", b"x", b"{}", b"{}", b"\x00" * 32])  # unsigned: ERR 401
        assert error_of(receive(keyless))[1] == 401
        assert events.poll(int(WAIT * 1000)), "the keyless connection was not closed"
        assert worker.connection.stats["connections_closed_unauthenticated"] == 1
        assert signing.pong()["inflight"] == 0  # still connected, still answered


def test_inproc_has_no_connections_to_keep(pair: ServicePair) -> None:
    assert pair.connection.admission is None and not pair.connection.channel.track_source


def test_a_replayed_recording_earns_its_connection_nothing(worker_of: Callable[..., Worker]) -> None:
    # A captured request past its deadline is signed, but its age and uniqueness were never checked: it
    # must not make a keyless connection count as a key holder's (it made one immune to auth_timeout).
    worker = worker_of(auth_timeout=0.3)
    old = now_ms() - 60_000
    request = ServiceRequest(path="/echo", arguments={})
    recording = envelope.build_request(SIGNER, b"rec", request, old, "victim", 1, deadline=old + 5_000)
    with keyless_peer(worker) as (keyless, events):
        keyless.send_multipart(recording)
        assert events.poll(int(WAIT * 1000)), "the connection was kept"
        assert worker.connection.stats["expired"] == 1
        assert worker.connection.stats["connections_closed_unauthenticated"] == 1
