"""brubeck.otel: spans whose parent is the caller's span, that carry the trace on, say how the work ended,
stay apart in concurrent greenlets, and cost nothing without opentelemetry or without an SDK provider.

Spans go to an SDK provider of the test's own (`use_tracer_provider`), read back from an in-memory exporter;
OTel's set-once global provider is only set in subprocesses."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.event
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from brubeck import otel
from brubeck.errors import Cancelled
from brubeck.wire.tracecontext import TraceContext, parse_traceparent

ROOT = Path(__file__).resolve().parents[2]
CALLER = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 0x01, "congo=t61rcWkgMzE")


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    with otel.use_tracer_provider(tracer_provider):
        yield tracer_provider


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def finished(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def span_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def test_a_span_continues_the_callers_trace_and_hands_on_its_own_span(exporter: InMemorySpanExporter) -> None:
    assert otel.enabled()
    with otel.span("GET", "server", CALLER) as span:
        assert span is not None
        carried = span.trace
    (recorded,) = exporter.get_finished_spans()
    assert recorded.kind is SpanKind.SERVER
    assert recorded.context is not None and recorded.parent is not None
    assert recorded.context.trace_id == int(CALLER.trace_id, 16)
    assert recorded.parent.span_id == int(CALLER.span_id, 16)
    assert recorded.parent.is_remote
    # What the next hop is given: the same trace, this span as the parent, the flags and tracestate kept.
    assert carried == TraceContext(CALLER.trace_id, span_hex(recorded), CALLER.flags, CALLER.state)
    assert parse_traceparent(carried.traceparent, carried.state) == carried


def test_an_unsampled_caller_gives_a_span_that_is_not_recorded_and_says_so(exporter: InMemorySpanExporter) -> None:
    unsampled = TraceContext(CALLER.trace_id, CALLER.span_id, 0x00)
    with otel.span("GET", "server", unsampled) as span:
        assert span is not None
        assert span.trace.trace_id == CALLER.trace_id
        assert not span.trace.sampled
    assert exporter.get_finished_spans() == ()


def test_without_a_caller_the_span_starts_a_trace(exporter: InMemorySpanExporter) -> None:
    with otel.span("GET", "server", None) as span:
        assert span is not None
        carried = span.trace
    (recorded,) = exporter.get_finished_spans()
    assert recorded.parent is None
    assert recorded.context is not None
    assert carried.trace_id == f"{recorded.context.trace_id:032x}"
    assert carried.span_id == span_hex(recorded)
    assert carried.sampled


def test_the_span_is_current_inside_the_block_only(exporter: InMemorySpanExporter) -> None:
    with otel.span("GET", "server", CALLER) as span:
        assert span is not None
        current = trace.get_current_span().get_span_context()
        assert f"{current.span_id:016x}" == span.trace.span_id
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_web_request_has_the_http_attributes(exporter: InMemorySpanExporter) -> None:
    with otel.web_request(CALLER, "POST", "/users/7", client_address="192.0.2.7", route="/users/{id}") as span:
        assert span is not None
        span.set_status_code(201)
    recorded = finished(exporter)["POST /users/{id}"]
    assert dict(recorded.attributes or {}) == {
        "http.request.method": "POST", "url.path": "/users/7", "http.route": "/users/{id}",
        "client.address": "192.0.2.7", "http.response.status_code": 201}
    assert recorded.status.status_code is StatusCode.UNSET


def test_an_unknown_client_address_is_left_out(exporter: InMemorySpanExporter) -> None:
    with otel.web_request(None, "GET", "/", client_address=""):
        pass
    assert "client.address" not in (finished(exporter)["GET"].attributes or {})


@pytest.mark.parametrize(("kind", "status", "failed"), [
    ("server", 404, False), ("server", 500, True), ("server", 503, True),
    ("client", 200, False), ("client", 404, True), ("client", 500, True),
])
def test_a_status_marks_the_span_failed_from_500_on_a_server_from_400_on_a_client(
        exporter: InMemorySpanExporter, kind: str, status: int, failed: bool) -> None:
    with otel.span("GET", kind, CALLER) as span:
        assert span is not None
        span.set_status_code(status)
    recorded = finished(exporter)["GET"]
    assert (recorded.attributes or {})["http.response.status_code"] == status
    assert recorded.status.status_code is (StatusCode.ERROR if failed else StatusCode.UNSET)


def test_a_service_call_and_the_request_it_makes_have_the_rpc_attributes(exporter: InMemorySpanExporter) -> None:
    with otel.service_call(CALLER, "tcp://127.0.0.1:5555", "/slow", "request") as call:
        assert call is not None
        call.set_status_code(200)
        carried = call.trace
    with otel.service_request(carried, "ipc:///run/slow", "/slow", "request") as served:
        assert served is not None
        served.set_status_code(503)
    spans = exporter.get_finished_spans()
    client, worker = spans
    assert client.kind is SpanKind.CLIENT and worker.kind is SpanKind.SERVER
    assert client.name == worker.name == "REQUEST /slow"
    assert dict(client.attributes or {}) == {
        "rpc.system": "brubeck-service", "rpc.service": "tcp://127.0.0.1:5555", "rpc.method": "REQUEST /slow",
        "server.address": "127.0.0.1", "server.port": 5555, "network.transport": "tcp",
        "rpc.response.status_code": "200"}
    assert client.status.status_code is StatusCode.UNSET
    assert dict(worker.attributes or {}) == {
        "rpc.system": "brubeck-service", "rpc.service": "ipc:///run/slow", "rpc.method": "REQUEST /slow",
        "server.address": "/run/slow", "network.transport": "unix",
        "rpc.response.status_code": "503", "error.type": "503"}
    assert worker.status.status_code is StatusCode.ERROR
    # The worker's span is the child of the client's, across the (here imagined) wire.
    assert worker.parent is not None and worker.parent.span_id == int(span_hex(client), 16)


def test_an_escaping_exception_is_recorded_marks_the_span_and_goes_on(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="no such user"), otel.span("GET", "server", CALLER):
        raise ValueError("no such user")
    recorded = finished(exporter)["GET"]
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.status.description == "ValueError: no such user"
    (event,) = recorded.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "ValueError"
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_cancelled_request_ends_its_span_as_cancelled(exporter: InMemorySpanExporter) -> None:
    with pytest.raises(Cancelled), otel.span("GET", "server", CALLER):
        raise Cancelled("client disconnected")
    recorded = finished(exporter)["GET"]
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.status.description == "cancelled"
    assert (recorded.attributes or {})["brubeck.cancel.reason"] == "client disconnected"
    assert recorded.events == ()  # nothing failed: whoever waited stopped waiting
    assert not trace.get_current_span().get_span_context().is_valid


def test_an_exception_handled_inside_is_recorded_without_marking_the_span(exporter: InMemorySpanExporter) -> None:
    with otel.span("GET", "server", CALLER) as span:
        assert span is not None
        span.record_exception(KeyError("x"))
        span.set_attribute("ignored", None)
        span.set_attribute("app.user", "7")
    recorded = finished(exporter)["GET"]
    assert [event.name for event in recorded.events] == ["exception"]
    assert recorded.status.status_code is StatusCode.UNSET
    assert dict(recorded.attributes or {}) == {"app.user": "7"}


def test_a_call_made_while_serving_is_a_child_of_the_innermost_open_span(
        provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    with otel.span("GET", "server", CALLER) as served:
        assert served is not None
        with otel.service_call(served.trace, "tcp://127.0.0.1:5555", "/a") as first:
            assert first is not None
        with provider.get_tracer("app").start_as_current_span("render"), \
                otel.service_call(served.trace, "tcp://127.0.0.1:5555", "/b"):
            pass
    spans = finished(exporter)
    server_id = int(span_hex(spans["GET"]), 16)
    call_a, call_b, render = spans["REQUEST /a"], spans["REQUEST /b"], spans["render"]
    assert call_a.parent is not None and call_a.parent.span_id == server_id and not call_a.parent.is_remote
    assert render.parent is not None and render.parent.span_id == server_id
    assert call_b.parent is not None and call_b.parent.span_id == int(span_hex(render), 16)


def test_spans_in_concurrent_greenlets_stay_apart(exporter: InMemorySpanExporter) -> None:
    both_open = [gevent.event.Event(), gevent.event.Event()]
    go_on = gevent.event.Event()
    seen_by_spawned: list[bool] = []

    def serve(number: int) -> None:
        caller = TraceContext(f"{number + 1:032x}", f"{number + 1:016x}", 0x01)
        with otel.span(f"server {number}", "server", caller) as served:
            assert served is not None
            both_open[number].set()
            go_on.wait()  # the other greenlet opens and runs its span meanwhile
            with otel.span(f"client {number}", "client", served.trace):
                pass
            spawned = gevent.spawn(lambda: trace.get_current_span().get_span_context().is_valid)
            seen_by_spawned.append(spawned.get())

    workers = [gevent.spawn(serve, 0), gevent.spawn(serve, 1)]
    for opened in both_open:
        opened.wait()
    go_on.set()
    gevent.joinall(workers, raise_error=True)
    spans = finished(exporter)
    for number in (0, 1):
        server, client = spans[f"server {number}"], spans[f"client {number}"]
        assert server.context is not None and client.context is not None
        assert server.context.trace_id == client.context.trace_id == number + 1
        assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert seen_by_spawned == [False, False]  # a spawned greenlet starts with no current span
    assert not trace.get_current_span().get_span_context().is_valid


def test_a_killed_greenlet_still_ends_its_span(exporter: InMemorySpanExporter) -> None:
    opened = gevent.event.Event()

    def serve() -> None:
        with otel.span("GET", "server", CALLER):
            opened.set()
            gevent.event.Event().wait()

    worker = gevent.spawn(serve)
    opened.wait()
    worker.kill()
    recorded = finished(exporter)["GET"]
    assert recorded.end_time is not None
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.status.description == "GreenletExit"


def test_a_span_started_here_can_end_in_another_greenlet(exporter: InMemorySpanExporter) -> None:
    started = otel.start_span("REQUEST /slow", "client", CALLER)
    assert started is not None
    assert not trace.get_current_span().get_span_context().is_valid  # started, not made current
    gevent.spawn(started.end, ConnectionError("worker lost")).get()
    recorded = finished(exporter)["REQUEST /slow"]
    assert recorded.kind is SpanKind.CLIENT
    assert recorded.parent is not None and recorded.parent.span_id == int(CALLER.span_id, 16)
    assert span_hex(recorded) == started.trace.span_id
    assert recorded.status.status_code is StatusCode.ERROR
    assert recorded.status.description == "ConnectionError: worker lost"


def test_a_no_op_provider_makes_no_spans() -> None:
    with otel.use_tracer_provider(trace.NoOpTracerProvider()):
        assert not otel.enabled()
        with otel.span("GET", "server", CALLER) as span:
            assert span is None
        with otel.service_call(CALLER, "tcp://127.0.0.1:5555", "/slow") as call:
            assert call is None
        with otel.web_request(CALLER, "GET", "/") as web:
            assert web is None
        assert otel.start_span("GET", "client", CALLER) is None


def test_a_span_is_a_server_or_a_client() -> None:
    with pytest.raises(ValueError, match="'server' or 'client'"):
        otel.span("GET", "internal", CALLER)


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_api_alone_is_off_until_an_sdk_provider_is_set() -> None:
    out = run_python("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from brubeck import otel
        from brubeck.wire.tracecontext import TraceContext
        caller = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
        with otel.span("GET", "server", caller) as off:
            print(otel.enabled(), off)
        trace.set_tracer_provider(TracerProvider())
        with otel.span("GET", "server", caller) as on:
            print(otel.enabled(), on is not None and on.trace.trace_id == caller.trace_id)
    """)
    assert out.split() == ["False", "None", "True", "True"]


def test_without_opentelemetry_nothing_of_it_is_imported_and_spans_are_none() -> None:
    out = run_python("""
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from brubeck import otel
        from brubeck.wire.tracecontext import TraceContext
        caller = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
        with otel.span("GET", "server", caller) as span, otel.service_call(caller, "ipc://x", "/") as call:
            print(otel.INSTALLED, otel.enabled(), span, call)
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
    """)
    assert out.splitlines() == ["False False None None", "['opentelemetry']"]
