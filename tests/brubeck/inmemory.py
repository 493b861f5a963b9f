"""Drive a Brubeck application in memory, through the shipped test kit (`brubeck.testing.TestClient`).

Every transport ends in `Brubeck.handle(request)`; these helpers test routing and handlers without sockets.
The connection is a WSGIConnection that is never started (nothing binds until `start()`).
"""

from __future__ import annotations

from typing import Any

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeck.testing import TestClient, TestResponse
from brubeck.wire.mongrel2 import HeaderValue, build_request_headers


def make_app(*routes: tuple[str, Any], **options: Any) -> Brubeck:
    return Brubeck(msg_conn=WSGIConnection(), handler_tuples=list(routes), **options)


def make_request(method: str, target: str, headers: dict[str, HeaderValue] | None = None,
                 body: bytes = b"") -> Request:
    """A Request shaped like Mongrel2's, for `METHOD /path?query` (for handlers built by hand)."""
    mongrel2_headers = build_request_headers(method, target, headers, remote_addr="127.0.0.1")
    return Request("test-sender", "1", str(mongrel2_headers["PATH"]), mongrel2_headers, body)


def call(app: Brubeck, method: str, target: str, headers: dict[str, HeaderValue] | None = None,
         body: bytes = b"") -> TestResponse:
    """Handle one request as a transport would and return the response (no cookie jar between calls)."""
    return TestClient(app, cookies=False).request(method, target, headers=headers, body=body)


def header(response: HTTPResponse | TestResponse, name: str) -> list[str]:
    """Every value of one response header, in order (of a TestClient's answer or a handler's own)."""
    return [value for key, value in response.headers if key.lower() == name.lower()]
