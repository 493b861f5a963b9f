"""The service side's access logs (brubeck.logs, fed by brubeck.observe): one line per request a worker
served and one per call a client made, parsed back, with the same trace id on both sides of a call."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import gevent
import pytest
import requests
from gevent.pool import Pool

from brubeck import logs, observe
from brubeck.application import Brubeck
from brubeck.context import RequestContext
from brubeck.handlers import WebMessageHandler
from brubeck.logs import JsonLinesFormatter
from brubeck.response import HTTPResponse
from brubeck.transports.wsgi import WSGIConnection
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceCancelled, ServiceTimeout
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceResponse
from brubeckservice.testing import ServicePair
from tests.brubeck.http_client import in_thread
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT, Gate, wait_until

#: SERVICE METHOD PATH STATUS OUTCOME DURATION trace TRACE_ID
SERVED_LINE = re.compile(r"(?P<service>\S+) (?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}|-) (?P<outcome>[a-z]+) "
                         r"(?P<ms>\d+\.\d{3})ms trace (?P<trace>[0-9a-f]{32})")
#: SERVICE <- WORKER METHOD PATH STATUS OUTCOME DURATION trace TRACE_ID[ (ERROR)]
CALL_LINE = re.compile(r"(?P<service>\S+) <- (?P<worker>\S+) (?P<method>\S+) (?P<path>\S+) "
                       r"(?P<status>\d{3}|-) (?P<outcome>[a-z_]+) (?P<ms>\d+\.\d{3})ms "
                       r"trace (?P<trace>[0-9a-f]{32})(?: \((?P<error>.*)\))?")


class Captured:
    """The access lines of both loggers, as text and as JSON."""

    def __init__(self) -> None:
        self.text = io.StringIO()
        self.json = io.StringIO()
        self.handlers = [logging.StreamHandler(self.text), logging.StreamHandler(self.json)]
        self.handlers[0].setFormatter(logging.Formatter("%(name)s|%(message)s"))
        self.handlers[1].setFormatter(JsonLinesFormatter())

    def lines(self, name: str) -> list[str]:
        return [line.split("|", 1)[1] for line in self.text.getvalue().splitlines() if line.startswith(name + "|")]

    def items(self, kind: str) -> list[dict[str, object]]:
        return [item for item in map(json.loads, self.json.getvalue().splitlines()) if item.get("kind") == kind]


@pytest.fixture
def captured() -> Iterator[Captured]:
    capture = Captured()
    loggers = [logs.SERVED_LOG, logs.CALLS_LOG]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        for handler in capture.handlers:
            logger.addHandler(handler)
    try:
        yield capture
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            for handler in capture.handlers:
                logger.removeHandler(handler)
            logger.setLevel(level)


def test_a_call_is_one_line_on_each_side_with_one_trace_id(pair: ServicePair, captured: Captured) -> None:
    pair.client.call("/echo", arguments={"n": 1})
    pair.client.call("/fail")  # its handler raises: a 500
    pair.client.call("/nowhere")  # no route: a 404
    wait_until(lambda: len(captured.lines("brubeckservice.access")) == 3, "three served lines")
    served = [SERVED_LINE.fullmatch(line) for line in captured.lines("brubeckservice.access")]
    calls = [CALL_LINE.fullmatch(line) for line in captured.lines("brubeckservice.calls")]
    assert all(served) and all(calls), (captured.text.getvalue())
    assert [(m["method"], m["path"], m["status"], m["outcome"]) for m in served if m] == [
        ("request", "/echo", "200", "answered"), ("request", "/fail", "500", "answered"),
        ("request", "/nowhere", "404", "answered")]
    assert [(m["path"], m["status"], m["outcome"]) for m in calls if m] == [
        ("/echo", "200", "ok"), ("/fail", "500", "ok"), ("/nowhere", "404", "ok")]
    for served_line, call_line in zip(served, calls, strict=True):
        assert served_line is not None and call_line is not None
        assert served_line["trace"] == call_line["trace"]  # the same call, seen from both ends
        assert served_line["service"] == pair.address == call_line["worker"] == call_line["service"]
    assert len({m["trace"] for m in calls if m}) == 3  # calls made outside a request: a trace each


def test_the_json_lines_carry_the_fields(pair: ServicePair, captured: Captured) -> None:
    pair.client.call("/echo")
    wait_until(lambda: len(captured.items("served")) == 1, "a served line")
    (served,) = captured.items("served")
    (call,) = captured.items("call")
    assert {"service", "path", "method", "route", "status", "outcome", "duration_ms", "trace_id"} <= set(served)
    assert (served["route"], served["status"], served["logger"]) == ("^/echo", 200, "brubeckservice.access")
    assert (call["worker"], call["status"], call["outcome"], call["error"]) == (pair.address, 200, "ok", "")
    assert served["trace_id"] == call["trace_id"]
    assert isinstance(call["duration_ms"], float) and isinstance(served["duration_ms"], float)
    assert call["duration_ms"] >= served["duration_ms"]  # the round trip holds the handler's run


def test_failed_calls_say_how_they_ended(gate: Gate, captured: Captured) -> None:
    with ServicePair(ROUTES, PASSPHRASE, gate=gate, timeout=0.3) as pair:
        with pytest.raises(ServiceTimeout):
            pair.client.call("/block")
        gate.next_arrival()  # (that one's)
        waiting = gevent.spawn(pair.client.call, "/block", timeout=WAIT)
        gate.next_arrival()
        waiting.kill(ServiceCancelled("gave up"))  # (as a cancelled request's call ends)
        waiting.join(timeout=WAIT)
        msg_id = pair.client.send("/block", timeout=WAIT)
        gate.next_arrival()
        assert pair.client.cancel(msg_id)
        gate.release.set()
        wait_until(lambda: len(captured.items("call")) == 3, f"three call lines: {captured.items('call')}")
    outcomes = [(item["outcome"], item["status"]) for item in captured.items("call")]
    assert outcomes == [("timeout", None), ("cancelled", None), ("cancelled", None)]
    texts = [CALL_LINE.fullmatch(line) for line in captured.lines("brubeckservice.calls")]
    assert texts[0] is not None and "no reply" in (texts[0]["error"] or "")
    # The worker stopped the two it was told of (CANCEL), or never answered the one that timed out.
    wait_until(lambda: len(captured.items("served")) == 3, "three served lines")
    served = [item["outcome"] for item in captured.items("served")]
    assert served[:2] == ["cancelled", "cancelled"]  # (the third may have been released before its CANCEL came)


def test_an_observer_that_fails_is_logged_and_the_call_goes_on(pair: ServicePair,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    seen: list[observe.CallMade] = []

    def broken(record: object) -> None:
        raise RuntimeError("observer bug")

    stop_broken = observe.watch("call", broken)
    stop_seen = observe.watch("call", seen.append)
    try:
        with caplog.at_level(logging.ERROR, "brubeck.observe"):
            assert pair.client.call("/echo").status_code == 200
            assert pair.client.call("/echo").status_code == 200
    finally:
        stop_broken()
        stop_seen()
    assert [record.path for record in seen] == ["/echo", "/echo"]
    complaints = [r for r in caplog.records if r.name == "brubeck.observe"]
    assert len(complaints) == 1 and "observer bug" in (complaints[0].exc_text or "")  # once a minute
    pair.client.call("/echo")
    assert len(seen) == 2  # stopped watching


def test_a_web_request_that_calls_a_service_keeps_its_own_route(pair: ServicePair) -> None:
    """The service's reply is routed through the web app too (to its response handler): the web line and
    its metrics label must still name the page's route, and all three lines one trace."""
    lines = Captured()
    loggers = [logs.WEB_LOG, logs.SERVED_LOG, logs.CALLS_LOG]
    for logger in loggers:
        logger.setLevel(logging.INFO)
        logger.addHandler(lines.handlers[1])

    class Page(ServiceClientMixin, WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.register_service(pair.address, None, PASSPHRASE, context=pair.context)
            reply, _ = self.send_service_request(pair.address, self.create_service_request("/echo"))
            self.set_body(f"{reply.status_code}\n")
            return self.render()

    class Replied(ServiceMessageHandler):
        def response(self) -> ServiceResponse:
            return self.render()

    connection = WSGIConnection(port=0, host="127.0.0.1")
    web = Brubeck(msg_conn=connection, handler_tuples=[(r"^/page$", Page)], pool=Pool())
    web.add_route_rule(r"^/echo", Replied, method="response")  # (the reply is routed here, as in 2013)
    connection.start(web)
    try:
        answered = in_thread(requests.get, f"http://127.0.0.1:{connection.port}/page", timeout=WAIT)
        assert answered.text == "200\n"
        wait_until(lambda: len(lines.items("web")) == 1, "the web line")
    finally:
        web.close()
        for logger in loggers:
            logger.removeHandler(lines.handlers[1])
            logger.setLevel(logging.NOTSET)
    (page,) = lines.items("web")
    (served,) = lines.items("served")
    (call,) = lines.items("call")
    assert (page["route"], page["status"]) == ("^/page$", 200)
    assert page["trace_id"] == call["trace_id"] == served["trace_id"]


def test_what_a_worker_reports_is_what_it_sent(pair: ServicePair, captured: Captured) -> None:
    reply = pair.client.call("/no-render")  # the handler returns a dict: its caller gets a 500
    assert reply.status_code == 500
    wait_until(lambda: len(captured.items("served")) == 1, "the served line")
    (served,) = captured.items("served")
    assert (served["status"], served["outcome"]) == (500, "answered")
    assert pair.client.ping()["errors"] == 1


def test_a_call_refused_for_want_of_time_is_reported(pair: ServicePair, captured: Captured) -> None:
    with RequestContext(None, now_ms() - 1).entered(), pytest.raises(ServiceTimeout):
        pair.client.call("/echo")  # the request it serves is past its deadline: refused at once
    (call,) = captured.items("call")
    assert (call["path"], call["outcome"], call["worker"], call["status"]) == ("/echo", "timeout", "", None)
    assert captured.items("served") == []
