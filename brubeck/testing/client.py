"""`TestClient(app)`: call a Brubeck application in-process, the way a transport would, without sockets.

Each request becomes the same Mongrel2-shaped `Request` that both transports build
(`brubeck.wire.mongrel2.build_request_headers`), goes through `Brubeck.handle` (routing, handlers, error
handling), and comes back as a `TestResponse` made from the HTTP bytes the handler returned, with what the
transports do around the handler applied here too: a body over the connection's limit is a 413, a route
that returns no HTTP response a 500, and `HEAD` gets the headers only. Cookies the app sets are kept and
sent back, as a browser would (pass `cookies=False` for a client without a jar).

Models: starlette's `TestClient`, werkzeug's `test.Client`. Unlike those, there is no network stand-in at
all: a handler that answers later (returns None, then `msg_conn.reply(...)`) needs a real transport, and
`TestClient` says so with `NoResponse`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, ClassVar
from urllib.parse import urlencode

import msgspec

from brubeck.context import web_context
from brubeck.errors import BrubeckError
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeck.transports.base import http_bytes, serve_web
from brubeck.types import Application
from brubeck.wire.mongrel2 import HeaderValue, build_request_headers, header

SENDER = "brubeck-testclient"


class NoResponse(BrubeckError):
    """The handler returned None (it would answer later through a real transport's `reply`)."""


@dataclass(frozen=True)
class TestResponse:
    """What the app answered: status, header pairs (in order, repeats kept, Content-Length included)
    and body."""

    __test__: ClassVar[bool] = False  # not a pytest test class, whatever its name

    status_code: int
    status_msg: str
    headers: list[tuple[str, str]]
    body: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The last value of header `name` (case-insensitive), or `default`."""
        values = self.header_values(name)
        return values[-1] if values else default

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name`, in order (e.g. each Set-Cookie)."""
        return [value for key, value in self.headers if key.lower() == name.lower()]


class TestClient:
    """`TestClient(app)`: `get`, `post`, ... or `request(method, target, ...)` against `app`, in-process."""

    __test__: ClassVar[bool] = False

    def __init__(self, app: Application, *, remote_addr: str = "127.0.0.1", cookies: bool = True) -> None:
        self.app = app
        self.remote_addr = remote_addr
        self.cookies: dict[str, str] | None = {} if cookies else None
        self._ids = itertools.count(1)

    def request(self, method: str, target: str, *, headers: Mapping[str, HeaderValue] | None = None,
                body: bytes | str = b"", data: Mapping[str, Any] | None = None, json: Any = None,
                cookies: Mapping[str, str] | None = None) -> TestResponse:
        """Send `METHOD target` (a path with an optional ?query). `data` is sent as a urlencoded form,
        `json` as JSON, else `body` as it is; `cookies` are added to the jar's for this request."""
        given = {name.lower(): value for name, value in (headers or {}).items()}
        payload = body.encode("utf-8") if isinstance(body, str) else body
        if data is not None:
            payload = urlencode(data, doseq=True).encode("ascii")
            given.setdefault("content-type", "application/x-www-form-urlencoded")
        elif json is not None:
            payload = msgspec.json.encode(json)
            given.setdefault("content-type", "application/json")
        if payload:
            given["content-length"] = str(len(payload))
        jar = {**(self.cookies or {}), **(cookies or {})}
        if jar:
            given["cookie"] = "; ".join(f"{name}={value}" for name, value in jar.items())
        mongrel2_headers = build_request_headers(method.upper(), target, given, remote_addr=self.remote_addr)
        request = Request(SENDER, str(next(self._ids)), str(mongrel2_headers["PATH"]), mongrel2_headers, payload)
        response = self._answer(request)
        self._keep_cookies(response)
        if request.method == "HEAD":  # as the transports send it: GET's headers, no body
            return TestResponse(response.status_code, response.status_msg, response.headers, b"")
        return response

    def _answer(self, request: Request) -> TestResponse:
        too_large = getattr(self.app.msg_conn, "too_large", None)
        if too_large is not None and too_large(len(request.body)):
            returned: object = self.app.base_handler(self.app, request).render_error(413)
        else:
            returned = serve_web(self.app, request, web_context(request.headers, self.app.settings, header))
        if returned is None:
            raise NoResponse(f"{request.method} {request.path}: the handler returned None, to answer later "
                             "through msg_conn.reply(); test that through a real transport")
        http = HTTPResponse.from_bytes(http_bytes(returned))
        # The headers as they go on the wire, Content-Length (which the response computes) included.
        headers = [*http.headers, ("Content-Length", str(len(http.body)))]
        return TestResponse(http.status_code, http.status_msg, headers, http.body)

    def _keep_cookies(self, response: TestResponse) -> None:
        if self.cookies is None:
            return
        for line in response.header_values("Set-Cookie"):
            for name, morsel in SimpleCookie(line).items():
                if morsel["max-age"] == "0" or (not morsel.value and morsel["expires"]):
                    self.cookies.pop(name, None)  # deleted
                else:
                    self.cookies[name] = morsel.value

    def get(self, target: str, **options: Any) -> TestResponse:
        return self.request("GET", target, **options)

    def head(self, target: str, **options: Any) -> TestResponse:
        return self.request("HEAD", target, **options)

    def post(self, target: str, **options: Any) -> TestResponse:
        return self.request("POST", target, **options)

    def put(self, target: str, **options: Any) -> TestResponse:
        return self.request("PUT", target, **options)

    def patch(self, target: str, **options: Any) -> TestResponse:
        return self.request("PATCH", target, **options)

    def delete(self, target: str, **options: Any) -> TestResponse:
        return self.request("DELETE", target, **options)

    def options(self, target: str, **options: Any) -> TestResponse:
        return self.request("OPTIONS", target, **options)
