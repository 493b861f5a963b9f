"""Serving an application over gevent's WSGI server, so an app runs with or without Mongrel2.

The environ is turned into the same `Request` Mongrel2 messages become (Mongrel2's header shape). A handler
that returns None answers later through `connection.reply(message, response)`, as behind Mongrel2; the
WSGI request waits for that reply up to `reply_timeout` seconds, then gets a 504.

Hostile clients: each connection takes a greenlet of the app's pool while it waits for a request, so a
connection that sends nothing for `idle_timeout` seconds is closed (a socket timeout on every read: the
request line, the headers, the body), and what gevent's server logs about malformed HTTP goes through a
`LogThrottle` (one line per 10 s, then a count), cut to 300 characters, instead of to stderr.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gevent import Timeout
from gevent.event import AsyncResult
from gevent.pywsgi import WSGIHandler, WSGIServer

from brubeck.context import web_context
from brubeck.errors import Cancelled
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeck.throttle import LogThrottle
from brubeck.transports.base import DEFAULT_MAX_BODY_SIZE, WebConnection, http_bytes, serve_web
from brubeck.wire.mongrel2 import HeaderValue, build_request_headers, header

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeck.wsgi")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
SENDER = "wsgi"
#: Seconds a connection may send nothing (between requests, or within one) before it is closed.
DEFAULT_IDLE_TIMEOUT = 60.0


class _Handler(WSGIHandler):  # type: ignore[misc]
    """gevent's handler, with a timeout on each read of the connection (`WSGIConnection.idle_timeout`)."""

    def handle(self) -> None:
        timeout = getattr(self.server, "idle_timeout", None)
        if timeout:
            self.socket.settimeout(timeout)
        super().handle()

    def _handle_client_error(self, ex: Exception) -> Any:
        # gevent prints a traceback for invalid input that is not a ValueError (more than 100 headers is an
        # http.client.HTTPException): as a ValueError it is one line in the error log, and still a 400.
        return super()._handle_client_error(ex if isinstance(ex, ValueError) else ValueError(str(ex) or repr(ex)))


class _ErrorLog:
    """A file-like error log for gevent's server: its lines, short and throttled (brubeck.throttle)."""

    def __init__(self, throttle: LogThrottle) -> None:
        self._throttle = throttle

    def write(self, text: str) -> None:
        text = text.strip()
        if text:
            self._throttle.log(logging.WARNING, "http", "HTTP server: %.300s", text)

    def writelines(self, lines: Iterable[str]) -> None:
        self.write("".join(lines))

    def flush(self) -> None:
        return None


def headers_from_environ(environ: dict[str, Any]) -> dict[str, HeaderValue]:
    """Mongrel2-shaped headers from a WSGI environ: lowercased client headers plus PATH, METHOD, ..."""
    headers: dict[str, HeaderValue] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    # PEP 3333 decodes the path as latin-1; re-encode to get the bytes the client sent back.
    path = quote(environ.get("PATH_INFO", "/").encode("latin-1"), safe="/:@!$&'()*+,;=-._~")
    query = environ.get("QUERY_STRING", "")
    return build_request_headers(environ.get("REQUEST_METHOD", "GET"), f"{path}?{query}" if query else path,
                                 headers, version=environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                                 remote_addr=environ.get("REMOTE_ADDR", ""),
                                 url_scheme=environ.get("wsgi.url_scheme", "http"))


class WSGIConnection(WebConnection):
    """`WSGIConnection(port=6767)`: serve the application over HTTP directly with gevent.pywsgi."""

    def __init__(self, port: int = 6767, host: str = "127.0.0.1", *,
                 max_body_size: int | None = DEFAULT_MAX_BODY_SIZE, reply_timeout: float = 60.0,
                 log_requests: bool = False, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT) -> None:
        super().__init__(max_body_size)
        self.port, self.host = port, host
        self.reply_timeout = reply_timeout
        self.idle_timeout = idle_timeout
        self._log = LogThrottle(log)
        self.log_requests = log_requests
        self.application: Application | None = None
        self.server: WSGIServer | None = None
        self._ids = itertools.count(1)
        self._pending: dict[str, AsyncResult] = {}

    def __repr__(self) -> str:
        return f"WSGIConnection(port={self.port}, host={self.host!r})"

    def process_messages(self, application: Application) -> None:
        self.start(application)
        assert self.server is not None
        self.server.serve_forever()

    def start(self, application: Application) -> None:
        """Start listening without blocking (tests, embedding); `process_messages` also blocks."""
        self.application = application
        spawn = application.pool if application.pool is not None else "default"
        self.server = WSGIServer((self.host, self.port), self, spawn=spawn,
                                 log="default" if self.log_requests else None, error_log=_ErrorLog(self._log),
                                 handler_class=_Handler)
        self.server.idle_timeout = self.idle_timeout
        self.server.start()
        self.port = self.server.server_port

    def _read_request(self, environ: dict[str, Any]) -> Request | int:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 400
        if length < 0:
            return 400
        if self.too_large(length):
            return 413
        try:
            body = environ["wsgi.input"].read(length) if length else b""
        except OSError:  # (the client went away, or sent nothing for idle_timeout, mid-body)
            return 400
        if len(body) < length:
            return 400  # (a body shorter than its Content-Length)
        headers = headers_from_environ(environ)
        return Request(SENDER, str(next(self._ids)), str(headers["PATH"]), headers, body)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        app = self.application
        if app is None:
            raise RuntimeError("WSGIConnection used before start()")
        request = self._read_request(environ)
        if isinstance(request, int):
            self._log.log(logging.WARNING, "refused", "refusing request %.20s %.200s: %d",
                          environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), request)
            dummy = Request(SENDER, "0", environ.get("PATH_INFO", "/"), headers_from_environ(environ), b"")
            return self._respond(app.base_handler(app, dummy).render_error(request), start_response)
        ctx = web_context(request.headers, app.settings, header)
        slot: AsyncResult = AsyncResult()
        self._pending[request.conn_id] = slot
        try:
            response = serve_web(app, request, ctx)  # (brubeck.context: the request's trace and deadline)
            if response is None:
                response = slot.get(timeout=self.reply_timeout)
        except Cancelled as stopped:  # (by the handler itself: gevent's server tells no disconnect)
            log.info("stopped %s %s: %s (trace %s)", request.method, request.path, stopped, ctx.trace_id)
            response = app.base_handler(app, request).render_error(503)
        except Timeout:
            log.warning("no reply for %r within %.1fs", request, self.reply_timeout)
            response = app.base_handler(app, request).render_error(504)
        finally:
            self._pending.pop(request.conn_id, None)
        return self._respond(response, start_response, head=request.method == "HEAD")

    @staticmethod
    def _respond(response: Any, start_response: StartResponse, head: bool = False) -> list[bytes]:
        try:
            http = HTTPResponse.from_bytes(http_bytes(response))
        except ValueError:
            log.error("handler returned something that is not an HTTP response: %.60r", response)
            http = HTTPResponse(b"500 Internal Server Error\n", 500)
        start_response(f"{http.status_code} {http.status_msg}",
                       [*http.headers, ("Content-Length", str(len(http.body)))])
        return [] if head else [http.body]  # HEAD: the GET response's headers, no body (RFC 9110, 9.3.2)

    def reply(self, message: Any, response: Any) -> None:
        """Answer a request whose handler returned None (a deferred reply)."""
        slot = self._pending.get(message.conn_id)
        if slot is None:
            log.warning("reply for %r dropped: the request is no longer waiting", message)
            return
        slot.set(response)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=1)
        self._log.close()
