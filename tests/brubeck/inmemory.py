"""Drive a Brubeck application in memory: a Request in, the response its handler built out.

Every transport ends in `Brubeck.handle(request)`; calling it directly tests routing and handlers without
sockets. The connection is a WSGIConnection that is never started (nothing binds until `start()`).
"""

from __future__ import annotations

from typing import Any

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeck.wire.mongrel2 import HeaderValue, build_request_headers


def make_app(*routes: tuple[str, Any], **options: Any) -> Brubeck:
    return Brubeck(msg_conn=WSGIConnection(), handler_tuples=list(routes), **options)


def make_request(method: str, target: str, headers: dict[str, HeaderValue] | None = None,
                 body: bytes = b"") -> Request:
    """A Request shaped like Mongrel2's, for `METHOD /path?query`."""
    mongrel2_headers = build_request_headers(method, target, headers, remote_addr="127.0.0.1")
    return Request("test-sender", "1", str(mongrel2_headers["PATH"]), mongrel2_headers, body)


def call(app: Brubeck, method: str, target: str, headers: dict[str, HeaderValue] | None = None,
         body: bytes = b"") -> HTTPResponse:
    """Handle one request and return its HTTP response (it must have one)."""
    response = app.handle(make_request(method, target, headers, body))
    assert isinstance(response, HTTPResponse), f"expected an HTTPResponse, got {response!r}"
    return response


def header(response: HTTPResponse, name: str) -> list[str]:
    """Every value of one response header, in order."""
    return [value for key, value in response.headers if key.lower() == name.lower()]
