"""Spans across a web request and the service calls it makes, with the `otel` extra and an SDK provider:
one trace, each hop a child of the one before, statuses recorded (brubeck.otel, wired in the transports,
the client and the service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gevent.queue import Queue
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from brubeck import otel
from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.handlers import WebMessageHandler
from brubeck.testing import TestClient
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceResponse
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, wait_until

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Answer(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.application.settings["seen"].put(self.message.traceparent)
        self.set_status(int(self.message.get_argument("status", 200)))
        return self.render()


class Page(WebMessageHandler, ServiceClientMixin):
    def get(self) -> Any:
        address = self.application.settings["service"]
        self.register_service(address, None, PASSPHRASE)
        status = self.get_argument("status", "200")
        if self.get_argument("nowait"):
            self.send_service_request_nowait(address, self.create_service_request("/answer", arguments={
                "status": status}))
            self.set_status(200)
        else:
            response, _ = self.send_service_request(address, self.create_service_request(
                "/answer", arguments={"status": status}))
            self.set_status(200 if response.status_code < 400 else 502)
        return self.render()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with otel.use_tracer_provider(provider):
        yield memory


@pytest.fixture
def web() -> Iterator[tuple[TestClient, Any]]:
    seen: Any = Queue()
    with ServicePair([(r"^/answer", Answer)], PASSPHRASE, address="tcp://127.0.0.1:*", seen=seen) as service:
        app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/page$", Page)],
                      service=service.address)
        try:
            yield TestClient(app), seen
        finally:
            app.close()


def spans(exporter: InMemorySpanExporter, count: int) -> dict[SpanKind, ReadableSpan]:
    wait_until(lambda: len(exporter.get_finished_spans()) >= count, f"{count} finished spans")
    kinds: dict[SpanKind, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        key = SpanKind.INTERNAL if span.kind == SpanKind.SERVER and span.name.startswith("REQUEST") else span.kind
        kinds[key] = span  # (INTERNAL stands for the service's SERVER span here)
    return kinds


def test_a_web_request_its_call_and_the_served_request_are_one_trace(
        exporter: InMemorySpanExporter, web: tuple[TestClient, Any]) -> None:
    client, seen = web
    assert client.get("/page", headers={"traceparent": TRACEPARENT}).status_code == 200
    found = spans(exporter, 3)
    page, call, served = found[SpanKind.SERVER], found[SpanKind.CLIENT], found[SpanKind.INTERNAL]
    trace_id = int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
    assert {page.context.trace_id, call.context.trace_id, served.context.trace_id} == {trace_id}
    assert page.parent is not None and page.parent.span_id == int("00f067aa0ba902b7", 16)
    assert call.parent is not None and call.parent.span_id == page.context.span_id
    assert served.parent is not None and served.parent.span_id == call.context.span_id
    # What went on the wire names the call's span as the parent.
    assert seen.get(timeout=WAIT) == f"00-{trace_id:032x}-{call.context.span_id:016x}-01"
    assert call.attributes is not None and call.attributes["rpc.system"] == "brubeck-service"
    assert call.attributes["rpc.method"] == "REQUEST /answer"
    assert page.attributes is not None and page.attributes["http.response.status_code"] == 200


def test_an_error_reply_marks_the_call_and_the_served_request(
        exporter: InMemorySpanExporter, web: tuple[TestClient, Any]) -> None:
    client, _ = web
    assert client.get("/page?status=500").status_code == 502
    found = spans(exporter, 3)
    assert found[SpanKind.CLIENT].status.status_code == StatusCode.ERROR
    assert found[SpanKind.INTERNAL].status.status_code == StatusCode.ERROR
    assert found[SpanKind.SERVER].status.status_code == StatusCode.ERROR  # 502 to the browser


def test_a_call_sent_without_waiting_ends_its_span_when_the_reply_comes(
        exporter: InMemorySpanExporter, web: tuple[TestClient, Any]) -> None:
    client, seen = web
    assert client.get("/page?nowait=1&status=404").status_code == 200
    found = spans(exporter, 3)
    call = found[SpanKind.CLIENT]
    assert call.status.status_code == StatusCode.ERROR  # (404 on a client span)
    assert call.attributes is not None and call.attributes["rpc.response.status_code"] == "404"
    assert call.parent is not None and call.parent.span_id == found[SpanKind.SERVER].context.span_id
    seen.get(timeout=WAIT)
