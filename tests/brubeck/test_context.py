"""brubeck.context: a request's deadline, trace and cancellation, as handlers and transports use them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from gevent.event import Event
from gevent.queue import Queue

from brubeck.application import Brubeck
from brubeck.connections import Mongrel2Connection, WSGIConnection
from brubeck.context import (
    RequestContext,
    TraceFilter,
    current,
    new_trace,
    new_traceparent,
    remaining,
    shielded,
    web_context,
)
from brubeck.errors import Cancelled
from brubeck.handlers import WebMessageHandler
from brubeck.testing import TestClient
from brubeck.wire.mongrel2 import Mongrel2Message, build_message, header
from brubeck.wire.tracecontext import parse_traceparent
from tests.brubeck.fake_mongrel2 import SENDER, FakeMongrel2

WAIT = 5.0
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the context of one request ---------------------------------------------------------------------------

def test_remaining_and_limit_follow_the_deadline() -> None:
    assert RequestContext(new_trace()).remaining() is None
    assert RequestContext(new_trace()).limit(30) == 30
    ctx = RequestContext(new_trace(), deadline=now_ms() + 2000)
    left = ctx.remaining()
    assert left is not None and 0 < left <= 2
    assert ctx.limit(30) <= 2 and ctx.limit(0.5) == 0.5
    assert RequestContext(new_trace(), deadline=now_ms() - 5000).remaining() == 0.0


def test_new_traces_are_valid_and_distinct() -> None:
    parents = {new_traceparent() for _ in range(100)}
    assert len(parents) == 100
    for traceparent in parents:
        parsed = parse_traceparent(traceparent)
        assert parsed is not None and parsed.traceparent == traceparent and not parsed.sampled
    assert parse_traceparent(new_trace().traceparent) is not None


def test_narrow_only_moves_the_deadline_earlier() -> None:
    ctx = RequestContext(new_trace())
    ctx.narrow(2.0)
    first = ctx.deadline
    assert first is not None and first <= now_ms() + 2000
    ctx.narrow(60.0)
    assert ctx.deadline == first
    ctx.narrow(0.5)
    assert ctx.deadline is not None and ctx.deadline < first


def test_a_context_is_current_only_inside_its_block_and_its_greenlet() -> None:
    ctx = RequestContext(new_trace(), deadline=now_ms() + 1000)
    assert current() is None and remaining() is None
    with ctx.entered():
        assert current() is ctx and remaining() is not None
        assert gevent.spawn(current).get(timeout=WAIT) is None  # a spawned greenlet starts with none
    assert current() is None and not ctx.active


def test_cancel_raises_where_the_handler_waits() -> None:
    ctx = RequestContext(new_trace())
    ended: Any = Queue()
    entered = Event()

    def handler() -> None:
        with ctx.entered():
            entered.set()
            try:
                Event().wait()
            except Cancelled as stopped:
                ended.put(str(stopped))

    running = gevent.spawn(handler)
    entered.wait(WAIT)
    assert ctx.cancel("the browser disconnected")
    assert ended.get(timeout=WAIT) == "the browser disconnected"
    running.join(WAIT)
    assert not ctx.cancel("again")  # finished: nothing to stop


def test_a_cancel_after_the_request_ended_reaches_no_later_request() -> None:
    ctx = RequestContext(new_trace())
    with ctx.entered():
        pass
    assert not ctx.cancel("too late")
    after = RequestContext(new_trace())
    with after.entered():
        gevent.sleep(0)  # the hub runs: nothing is thrown here
    assert not after.cancelled


def test_a_shielded_block_runs_to_its_end_then_the_cancel_is_raised() -> None:
    ctx = RequestContext(new_trace())
    steps: list[str] = []
    inside = Event()
    finish = Event()

    def handler() -> None:
        with ctx.entered():
            try:
                with shielded():
                    inside.set()
                    finish.wait()
                    steps.append("section done")
                steps.append("after the section")
            except Cancelled:
                steps.append("cancelled")

    running = gevent.spawn(handler)
    inside.wait(WAIT)
    assert ctx.cancel("stop")
    gevent.sleep(0)
    assert steps == []  # held off
    finish.set()
    running.join(WAIT)
    assert steps == ["section done", "cancelled"]


def test_cancelled_is_raised_once_even_when_the_handler_resumes_first() -> None:
    ctx = RequestContext(new_trace())
    fired = Event()
    seen: list[str] = []

    def handler() -> None:
        with ctx.entered():
            try:
                fired.wait()
                with shielded():  # a section that does not wait: the cancel is raised at its end
                    seen.append("section")
            except Cancelled:
                seen.append("cancelled")
                gevent.sleep(0.01)  # clean-up that waits: the cancel already scheduled must not come again
                seen.append("clean-up done")

    running = gevent.spawn(handler)
    gevent.sleep(0)

    def leave() -> None:
        fired.set()  # the handler resumes first in this loop turn...
        ctx.cancel("gone")  # ...and the throw is scheduled after

    gevent.spawn(leave).join(WAIT)
    running.join(WAIT)
    assert seen == ["section", "cancelled", "clean-up done"]


def test_a_derived_context_shares_the_deadline_and_is_cancelled_with_its_request() -> None:
    ctx = RequestContext(new_trace(), deadline=now_ms() + 5000)
    ended: Any = Queue()
    inside = Event()

    def helper(derived: RequestContext) -> None:
        with derived.entered():
            assert current() is derived and derived.deadline == ctx.deadline
            inside.set()
            try:
                Event().wait()
            except Cancelled as stopped:
                ended.put(f"helper: {stopped}")

    with ctx.entered():
        worker = gevent.spawn(helper, ctx.derived())
        inside.wait(WAIT)
        with pytest.raises(RuntimeError, match="derived"):
            gevent.spawn(ctx.__enter__).get(timeout=WAIT)  # one greenlet per context
        with contextlib.suppress(Cancelled):  # (raised here too: this greenlet serves the request)
            ctx.cancel("the caller left")
    assert ended.get(timeout=WAIT) == "helper: the caller left"
    worker.join(WAIT)


def test_shielded_outside_any_request_is_a_plain_block() -> None:
    with shielded():
        ran = True
    assert ran


def test_the_trace_filter_names_the_requests_trace_in_every_record(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.context")
    caplog.handler.addFilter(TraceFilter())
    ctx = RequestContext(new_trace())
    with caplog.at_level(logging.INFO, logger="tests.context"):
        logger.info("outside")
        with ctx.entered():
            logger.info("inside")
    records = {r.getMessage(): r for r in caplog.records}
    assert records["outside"].trace_id == "-"  # type: ignore[attr-defined]
    assert records["inside"].trace_id == ctx.trace.trace_id  # type: ignore[attr-defined]


# -- a web request's context ------------------------------------------------------------------------------

def test_a_web_request_continues_the_callers_trace() -> None:
    ctx = web_context({"traceparent": PARENT, "tracestate": "rojo=1"}, {}, header)
    assert ctx.trace.traceparent == PARENT and ctx.trace.state == "rojo=1"  # passed on as it came
    fresh = web_context({"traceparent": "garbage"}, {}, header)
    assert fresh.trace.trace_id != ctx.trace.trace_id and ctx.deadline is None


def test_the_budget_comes_from_the_setting_and_a_trusted_header_whichever_is_less() -> None:
    settings = {"request_budget": 2.0, "budget_header": "X-Budget-Ms"}
    from_setting = web_context({}, settings, header).remaining()
    assert from_setting is not None and 1 < from_setting <= 2
    from_header = web_context({"x-budget-ms": "300"}, settings, header).remaining()
    assert from_header is not None and from_header <= 0.3
    larger = web_context({"x-budget-ms": "9000"}, settings, header).remaining()
    assert larger is not None and larger <= 2
    garbled = web_context({"x-budget-ms": "soon"}, settings, header).remaining()  # not a number: ignored
    assert garbled is not None and garbled > 1
    untrusted = web_context({"x-budget-ms": "300"}, {}, header)  # no `budget_header`: the header is ignored
    assert untrusted.deadline is None


@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "-5", "0", "1e3", " ", "12 34"])
def test_a_budget_header_that_is_not_a_positive_count_of_milliseconds_sets_nothing(value: str) -> None:
    ctx = web_context({"x-budget-ms": value}, {"budget_header": "X-Budget-Ms"}, header)
    assert ctx.deadline is None


def test_a_budget_of_zero_or_less_is_no_budget() -> None:
    assert web_context({}, {"request_budget": 0}, header).deadline is None
    assert web_context({}, {"request_budget": -1.0}, header).deadline is None


class Seen(WebMessageHandler):
    def get(self) -> Any:
        ctx = current()
        assert ctx is not None
        self.set_body(f"{self.trace_id} {self.time_remaining()}")
        return self.render()


def test_a_handler_reads_its_trace_and_remaining_time() -> None:
    app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/seen$", Seen)], request_budget=5.0)
    response = TestClient(app).get("/seen", headers={"traceparent": PARENT})
    trace_id, left = response.body.decode().split()
    assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736" and 0 < float(left) <= 5


# -- a browser that leaves ---------------------------------------------------------------------------------

class Waiting(WebMessageHandler):
    def get(self) -> Any:
        board: dict[str, Any] = self.application.settings["board"]
        board["started"].put(self.message.conn_id)
        try:
            Event().wait()
        except Cancelled as stopped:
            board["ended"].put(str(stopped))
            raise
        return self.render()


@pytest.fixture
def mongrel2_app() -> Iterator[tuple[FakeMongrel2, dict[str, Any]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake = FakeMongrel2(context)
    connection = Mongrel2Connection(fake.send_spec, fake.recv_spec)
    board: dict[str, Any] = {"started": Queue(), "ended": Queue()}
    app = Brubeck(msg_conn=connection, handler_tuples=[(r"^/wait$", Waiting), (r"^/ping$", Seen)], board=board)
    serving = gevent.spawn(connection.process_messages, app)
    try:
        fake.wait_until_subscribed()
        yield fake, board
    finally:
        connection.close()
        serving.join(timeout=WAIT)
        context.destroy(linger=0)


def test_a_disconnect_notice_cancels_the_request_of_that_connection(
        mongrel2_app: tuple[FakeMongrel2, dict[str, Any]]) -> None:
    fake, board = mongrel2_app
    conn_id = fake.request("GET", "/wait")
    other = fake.request("GET", "/wait")
    assert {board["started"].get(timeout=WAIT), board["started"].get(timeout=WAIT)} == {conn_id, other}
    fake.send(build_message(Mongrel2Message(SENDER, conn_id, "@*", {"METHOD": "JSON"}, b'{"type":"disconnect"}')))
    assert board["ended"].get(timeout=WAIT) == "the browser disconnected"
    assert board["ended"].empty()  # the other connection's request goes on
    ping = fake.request("GET", "/ping")
    assert fake.reply()[1] == [ping]  # nothing was sent to the connection that left; the app serves on
