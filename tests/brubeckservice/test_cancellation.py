"""What travels with a call (brubeck.context): deadlines across hops, CANCEL, and the trace context.

Two real services in this process (A calls B from its handler) over inproc ZeroMQ, and raw sockets for
what a well-behaved client never sends (a forged CANCEL, another caller's CANCEL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.queue import Queue

from brubeck.context import RequestContext, current, new_trace, shielded
from brubeck.errors import Cancelled
from brubeck.wire.tracecontext import parse_traceparent
from brubeckservice import envelope
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceCancelled, ServiceTimeout
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, receive, signed_request, wait_until

SIGNER = Signer(PASSPHRASE)


class Board:
    """What the handlers saw: each start, and how each one ended ("done" or "cancelled: <reason>")."""

    def __init__(self) -> None:
        self.started: Any = Queue()
        self.ended: Any = Queue()
        self.release = Event()
        self.seen: list[dict[str, Any]] = []


class HoldHandler(ServiceMessageHandler):
    """Waits for the board's release (or for ever), saying when it starts and how it ends."""

    def request(self) -> ServiceResponse:
        board: Board = self.application.settings["board"]
        board.started.put(self.message.msg_id)
        try:
            board.release.wait()
        except Cancelled as stopped:
            board.ended.put(f"cancelled: {stopped}")
            raise
        board.ended.put("done")
        self.set_status(200)
        return self.render()


class ShieldedHandler(ServiceMessageHandler):
    """Runs its critical section to the end even when cancelled meanwhile."""

    def request(self) -> ServiceResponse:
        board: Board = self.application.settings["board"]
        board.started.put(self.message.msg_id)
        try:
            with shielded():
                board.release.wait()
                board.ended.put("critical section done")
            board.ended.put("after the section")
        except Cancelled as stopped:
            board.ended.put(f"cancelled: {stopped}")
            raise
        self.set_status(200)
        return self.render()


class ReportHandler(ServiceMessageHandler):
    """Reports what travelled with the request: remaining time, trace id and span, deadline."""

    def request(self) -> ServiceResponse:
        board: Board = self.application.settings["board"]
        ctx = current()
        assert ctx is not None
        board.seen.append({"remaining": self.time_remaining(), "trace_id": self.trace_id,
                           "span_id": ctx.trace.span_id, "deadline": self.message.deadline,
                           "traceparent": self.message.traceparent})
        self.set_status(200)
        return self.render()


class RelayHandler(ServiceMessageHandler):
    """Service A: calls service B's `path` (argument) with its own client, passing nothing along."""

    def request(self) -> ServiceResponse:
        board: Board = self.application.settings["board"]
        client: ServiceClient = self.application.settings["downstream"]
        ctx = current()
        assert ctx is not None
        board.seen.append({"remaining": self.time_remaining(), "trace_id": self.trace_id,
                           "span_id": ctx.trace.span_id, "where": "A"})
        try:
            answer = client.call(self.message.get_argument("path", "/report"), timeout=30)
        except ServiceTimeout as late:
            self.set_status(504, str(late))
            return self.render()
        self.set_status(answer.status_code)
        return self.render()


ROUTES: list[tuple[str, Any]] = [(r"^/hold", HoldHandler), (r"^/shielded", ShieldedHandler),
                                 (r"^/report", ReportHandler), (r"^/relay", RelayHandler)]


def accepts_cancel(client: ServiceClient) -> None:
    """Wait for the worker's first PONG: a client tells only a worker that listed CANCEL."""
    wait_until(lambda: all("CANCEL" in w.reported.get("accepts", ()) for w in client.endpoints),
               "the worker's PONG listing CANCEL")


@pytest.fixture
def board() -> Board:
    return Board()


@pytest.fixture
def service(board: Board) -> Iterator[ServicePair]:
    with ServicePair(ROUTES, PASSPHRASE, board=board) as pair:
        accepts_cancel(pair.client)
        yield pair


@pytest.fixture
def chain(board: Board) -> Iterator[tuple[ServicePair, ServicePair]]:
    """Service A (whose handlers call B through `downstream`) and service B."""
    with ServicePair(ROUTES, PASSPHRASE, board=board) as b:
        downstream = b.new_client(timeout=30)
        with ServicePair(ROUTES, PASSPHRASE, board=board, downstream=downstream) as a:
            accepts_cancel(a.client)
            accepts_cancel(downstream)
            yield a, b


# -- cancellation reaches the worker ----------------------------------------------------------------------

def test_a_call_that_times_out_stops_its_handler_and_frees_its_slot(service: ServicePair, board: Board) -> None:
    with pytest.raises(ServiceTimeout):
        service.client.call("/hold", timeout=0.3)
    assert board.started.get(timeout=WAIT)
    assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it (timed out)"
    wait_until(lambda: service.connection.inflight == 0, "the handler's slot to be free")
    assert service.connection.stats["cancelled"] == 1
    assert service.client.stats["cancels_sent"] == 1
    board.release.set()
    assert service.client.call("/hold").ok  # the worker greenlet serves the next one


def test_killing_the_greenlet_that_waits_cancels_the_call(service: ServicePair, board: Board) -> None:
    waiting = gevent.spawn(service.client.call, "/hold")
    board.started.get(timeout=WAIT)
    waiting.kill(block=True, timeout=WAIT)
    assert board.ended.get(timeout=WAIT).startswith("cancelled: its caller cancelled it")
    wait_until(lambda: service.connection.inflight == 0, "the handler's slot to be free")


def test_cancel_fails_a_sent_call_and_stops_its_handler(service: ServicePair, board: Board) -> None:
    errors: Any = Queue()
    msg_id = service.client.send("/hold", on_reply=errors.put, on_error=errors.put)
    board.started.get(timeout=WAIT)
    assert service.client.cancel(msg_id, "the user pressed stop")
    failure = errors.get(timeout=WAIT)
    assert isinstance(failure, ServiceCancelled) and "the user pressed stop" in str(failure)
    assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it (the user pressed stop)"
    assert not service.client.cancel(msg_id)  # nothing outstanding any more


def test_closing_the_client_tells_the_worker(board: Board) -> None:
    with ServicePair(ROUTES, PASSPHRASE, board=board) as pair:
        client = pair.new_client()
        accepts_cancel(client)
        client.send("/hold", on_error=lambda _: None)
        board.started.get(timeout=WAIT)
        client.close(timeout=0)
        assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it (the client closed)"
        assert client.stats["cancels_sent"] == 1


def test_a_second_request_under_an_id_in_flight_is_refused(service: ServicePair, board: Board) -> None:
    raw = service.raw_socket()
    first = ServiceRequest(path="/hold")
    raw.send_multipart(envelope.build_request(SIGNER, b"twice", first, now_ms(), "dup", 1))
    board.started.get(timeout=WAIT)
    raw.send_multipart(envelope.build_request(SIGNER, b"twice", first, now_ms(), "dup", 2))
    reply = envelope.parse_reply(envelope.parse_envelope(receive(raw)), SIGNER, now_ms(), 30_000)
    assert (reply.msg_id, reply.status_code) == (b"twice", 400)
    board.release.set()
    assert board.ended.get(timeout=WAIT) == "done"


def test_a_request_cancelled_while_queued_never_starts(board: Board) -> None:
    with ServicePair(ROUTES, PASSPHRASE, board=board) as pair:
        # One at a time on the worker, while it reports room for more: the second call is sent, and waits
        # in the worker's queue (not in the client's).
        accepts_cancel(pair.client)  # (its pump runs by now)
        pair.connection._pump.workers.limit = 1  # type: ignore[union-attr]
        first = pair.client.send("/hold")
        board.started.get(timeout=WAIT)
        second = pair.client.send("/hold", on_error=lambda _: None)
        wait_until(lambda: pair.connection.queued == 1, "the second request to queue behind the first")
        assert pair.client.cancel(second)
        wait_until(lambda: pair.connection.stats["cancelled"] == 1, "the CANCEL to arrive")
        board.release.set()
        assert board.ended.get(timeout=WAIT) == "done"
        wait_until(lambda: pair.connection.queued == 0 and pair.connection.inflight == 0, "the queue to empty")
        assert board.started.qsize() == 0  # the cancelled one never ran
        assert pair.connection.stats["served"] == 1
        del first


def test_a_shielded_section_finishes_before_the_cancel_is_raised(service: ServicePair, board: Board) -> None:
    with pytest.raises(ServiceTimeout):
        service.client.call("/shielded", timeout=0.3)
    board.started.get(timeout=WAIT)
    wait_until(lambda: service.connection.stats["cancelled"] == 1, "the CANCEL to arrive")
    assert board.ended.empty()  # still in its critical section
    board.release.set()
    assert board.ended.get(timeout=WAIT) == "critical section done"
    assert board.ended.get(timeout=WAIT).startswith("cancelled: its caller cancelled it")


def test_a_forged_cancel_is_refused_and_the_call_goes_on(service: ServicePair, board: Board) -> None:
    raw = service.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/hold", msg_id=b"held-1"))
    board.started.get(timeout=WAIT)
    forged = envelope.build_cancel(Signer("not the passphrase"), b"held-1", now_ms(), "forged")
    raw.send_multipart(forged)
    refusal = envelope.parse_envelope(receive(raw))
    header, _ = envelope.parse_control(refusal, None, now_ms(), 30_000)
    assert (refusal.kind, refusal.msg_id, header.status) == (envelope.ERR, b"held-1", 401)
    assert service.connection.stats["forged"] == 1 and service.connection.stats["cancelled"] == 0
    board.release.set()
    assert board.ended.get(timeout=WAIT) == "done"


def test_only_the_callers_own_connection_can_cancel_its_call(service: ServicePair, board: Board) -> None:
    caller, other = service.raw_socket(), service.raw_socket()
    caller.send_multipart(signed_request(SIGNER, "/hold", msg_id=b"held-2"))
    board.started.get(timeout=WAIT)
    other.send_multipart(envelope.build_cancel(SIGNER, b"held-2", now_ms(), "not yours"))
    wait_until(lambda: service.connection.stats["cancel_unknown"] == 1, "the other connection's CANCEL")
    board.release.set()
    assert board.ended.get(timeout=WAIT) == "done"
    reply = envelope.parse_reply(envelope.parse_envelope(receive(caller)), SIGNER, now_ms(), 30_000)
    assert (reply.msg_id, reply.status_code) == (b"held-2", 200)


def test_a_replayed_cancel_finds_nothing(service: ServicePair, board: Board) -> None:
    raw = service.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/hold", msg_id=b"held-3"))
    board.started.get(timeout=WAIT)
    cancel = envelope.build_cancel(SIGNER, b"held-3", now_ms(), "once")
    raw.send_multipart(cancel)
    assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it (once)"
    raw.send_multipart(cancel)  # (a recording: it acts only on a request in flight on its own connection)
    wait_until(lambda: service.connection.stats["cancel_unknown"] == 1, "the replayed CANCEL to find nothing")
    assert service.connection.stats["cancelled"] == 1


# -- deadlines across hops --------------------------------------------------------------------------------

def test_a_call_made_by_a_handler_gets_what_is_left_of_its_deadline(
        chain: tuple[ServicePair, ServicePair], board: Board) -> None:
    a, _ = chain
    assert a.client.call("/relay", arguments={"path": "/report"}, timeout=2).ok
    at_a, at_b = board.seen
    assert at_a["where"] == "A" and 0 < at_a["remaining"] <= 2
    assert 0 < at_b["remaining"] <= at_a["remaining"]  # B's own timeout was 30 s: A's budget won
    assert at_b["deadline"] <= now_ms() + 2000


def test_no_call_is_sent_once_the_deadline_has_passed(chain: tuple[ServicePair, ServicePair],
                                                      board: Board) -> None:
    _, b = chain
    client = b.new_client(timeout=5)
    ctx = RequestContext(new_trace(), deadline=now_ms() - 1)
    with ctx.entered(), pytest.raises(ServiceTimeout, match="passed its deadline"):
        client.call("/report")
    assert client.stats["sent"] == 0 and client.stats["past_deadline"] == 1
    assert board.seen == []


def test_a_downstream_call_stops_when_its_callers_caller_gives_up(chain: tuple[ServicePair, ServicePair],
                                                                  board: Board) -> None:
    a, b = chain
    waiting = gevent.spawn(a.client.call, "/relay", arguments={"path": "/hold"}, timeout=30)
    board.started.get(timeout=WAIT)  # B's handler started, on A's behalf
    waiting.kill(block=True, timeout=WAIT)
    # A's handler was cancelled where it waited (its call to B), which told B in turn, and why.
    assert board.ended.get(timeout=WAIT) == ("cancelled: its caller cancelled it (its caller cancelled it (the "
                                             "caller stopped waiting))")
    wait_until(lambda: a.connection.inflight == 0 and b.connection.inflight == 0, "both slots to be free")
    assert a.connection.stats["cancelled"] == 1 and b.connection.stats["cancelled"] == 1


def test_a_downstream_call_stops_when_the_first_callers_budget_runs_out(
        chain: tuple[ServicePair, ServicePair], board: Board) -> None:
    a, b = chain
    try:  # A's call to B ends no later than this call: A's 504 may come back just before this call expires
        answer = a.client.call("/relay", arguments={"path": "/hold"}, timeout=0.5)
        assert answer.status_code == 504
    except ServiceTimeout:
        pass
    board.started.get(timeout=WAIT)
    # A's call to B had A's remaining budget (under 0.5 s), not its own 30 s: it timed out and told B.
    assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it (timed out)"
    wait_until(lambda: b.connection.inflight == 0, "B's slot to be free")


# -- the trace context ------------------------------------------------------------------------------------

def test_one_trace_across_hops_passed_on_as_it_came(chain: tuple[ServicePair, ServicePair], board: Board) -> None:
    a, _ = chain
    caller = RequestContext(new_trace())
    with caller.entered():
        assert a.client.call("/relay", arguments={"path": "/report"}).ok
    at_a, at_b = board.seen
    assert at_a["trace_id"] == at_b["trace_id"] == caller.trace.trace_id
    # Without a tracer nothing records spans, so none is made up: the caller's span is every hop's parent.
    assert at_a["span_id"] == at_b["span_id"] == caller.trace.span_id
    assert at_b["traceparent"] == caller.trace.traceparent


def test_a_call_outside_any_request_starts_a_trace(service: ServicePair, board: Board) -> None:
    assert service.client.call("/report").ok
    (seen,) = board.seen
    assert len(seen["trace_id"]) == 32 and parse_traceparent(seen["traceparent"]) is not None


def test_a_given_traceparent_is_carried_as_it_is(service: ServicePair, board: Board) -> None:
    given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert service.client.call_request(ServiceRequest(path="/report", traceparent=given)).ok
    (seen,) = board.seen
    assert seen["traceparent"] == given and seen["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_an_old_worker_that_lists_no_cancel_is_not_sent_one(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope, "ACCEPTED", ("REQ", "PING"))  # a worker of 0.5 lists no CANCEL
    with ServicePair(ROUTES, PASSPHRASE, board=board) as pair:
        wait_until(lambda: all(w.reported for w in pair.client.endpoints), "the worker's first PONG")
        with pytest.raises(ServiceTimeout):
            pair.client.call("/hold", timeout=0.3)
        board.started.get(timeout=WAIT)
        assert pair.client.stats["cancels_sent"] == 0
        board.release.set()
        assert board.ended.get(timeout=WAIT) == "done"


def test_a_cancelled_handler_sends_no_reply(service: ServicePair, board: Board) -> None:
    raw = service.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/hold", msg_id=b"held-4"))
    board.started.get(timeout=WAIT)
    raw.send_multipart(envelope.build_cancel(SIGNER, b"held-4", now_ms()))
    assert board.ended.get(timeout=WAIT) == "cancelled: its caller cancelled it"
    raw.send_multipart(envelope.build_ping(SIGNER, b"after", now_ms()))
    answer = envelope.parse_envelope(receive(raw))
    assert (answer.kind, answer.msg_id) == (envelope.PONG, b"after")  # no REP came before it
