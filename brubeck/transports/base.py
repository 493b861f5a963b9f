"""What every web transport shares: the handler that answers unrouted requests, the body limit, and running
a request's handler in its context (brubeck.context) and, with the `otel` extra, its span."""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from brubeck import observe, otel
from brubeck.context import RequestContext
from brubeck.handlers import WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.types import Application
from brubeck.wire.mongrel2 import header
from brubeck.wire.tracecontext import parse_traceparent

log = logging.getLogger("brubeck.transports")

#: Bodies larger than this are refused with 413 unless a connection is given another limit.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024


def http_bytes(response: Any) -> bytes:
    """What a web handler returned, as response bytes; anything else (e.g. a service handler's
    ServiceResponse reaching a web route) is logged and becomes a 500, so the client is still answered."""
    if isinstance(response, bytes):
        return response
    if isinstance(response, str):
        return response.encode("utf-8")
    log.error("handler returned %.80r, not an HTTP response (bytes or str); answering 500", response)
    return HTTPResponse("500 Internal Server Error\n", 500, None, [("Content-Type", "text/plain; charset=utf-8")])


def serve_web(application: Application, request: Any, ctx: RequestContext) -> Any:
    """Run the app's handler for a web request with `ctx` current and, when tracing is on (brubeck.otel),
    inside a SERVER span whose parent is the `traceparent` the request came with; returns the response,
    after telling the observers of web exchanges (brubeck.observe: the access log, metrics)."""
    started = perf_counter()
    received = None
    if otel.enabled():
        headers = request.headers
        received = parse_traceparent(header(headers, "traceparent"), header(headers, "tracestate"))
    try:
        with otel.web_request(received, request.method, request.path, client_address=request.remote_addr) as span, \
                ctx.entered():  # (the span ends outside: a processor that waits is not cancelled)
            if span is not None:
                ctx.trace = span.trace  # what the calls it makes carry on
            response = application.handle(request)
            if span is not None and response is not None:
                span.set_status_code(_status_of(response))
    except BaseException:  # (Cancelled: the browser left, or its deadline passed): reported unanswered
        if observe.wanted(observe.WEB):
            _report(request, None, ctx, started)
        raise
    if observe.wanted(observe.WEB):
        _report(request, response, ctx, started)
    return response


def _report(request: Any, response: Any, ctx: RequestContext, started: float) -> None:
    """Tell the observers of web exchanges (access log, metrics) how this one went."""
    status: int | None = None
    size: int | None = None
    if response is not None:
        status = _status_of(response)
        if isinstance(response, bytes):
            size = len(response)
        elif isinstance(response, str):
            size = len(response.encode("utf-8"))  # (anything else goes as a 500 of its own)
    observe.report(observe.WEB, observe.WebExchange(
        method=request.method, path=request.path, route=ctx.route, status=status, size=size,
        duration=perf_counter() - started, remote=request.remote_addr, trace_id=ctx.trace_id))


def _status_of(response: Any) -> int:
    """The status a handler's response goes out with (what `http_bytes` sends: anything but bytes or str is
    a 500)."""
    if not isinstance(response, (bytes, str)):
        return 500
    status = getattr(response, "status_code", None)  # an HTTPResponse says; other responses are read
    if isinstance(status, int):
        return status
    head = response[9:12]
    return int(head) if head.isdigit() else 500


class WebConnection:
    """Base for transports that serve HTTP clients (Mongrel2, WSGI)."""

    base_handler: type[WebMessageHandler] = WebMessageHandler

    def __init__(self, max_body_size: int | None = DEFAULT_MAX_BODY_SIZE) -> None:
        self.max_body_size = max_body_size

    def too_large(self, size: int) -> bool:
        return self.max_body_size is not None and size > self.max_body_size

    def process_messages(self, application: Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reply(self, message: Any, response: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
