"""What the sample application must do the same way over both web transports: behind a real Mongrel2
(Mongrel2Connection) and over WSGI (WSGIConnection), with real HTTP clients.

Transport-specific behaviour (connection handling, frames, uploads spooled by Mongrel2, the WSGI environ)
is tested in test_mongrel2_integration.py and test_wsgi.py.
"""

from __future__ import annotations

import io
import time

import pytest

from tests.brubeck.http_client import (
    CLIENT_TIMEOUT,
    fetch,
    parse_response,
    send_on_one_connection,
    send_until_closed,
    spawn_in_thread,
)
from tests.brubeck.sample_app import SLOW_SECONDS, Running


@pytest.fixture(params=[pytest.param("behind_mongrel2", marks=pytest.mark.mongrel2), "over_wsgi"])
def served(request: pytest.FixtureRequest) -> Running:
    """The sample application behind a real Mongrel2, then over WSGI."""
    running: Running = request.getfixturevalue(request.param)
    return running


def test_get_with_a_query(served: Running) -> None:
    response = fetch("GET", f"{served.url}/hello?name=both")
    assert (response.status_code, response.text) == (200, "hello both")
    assert response.headers["Content-Type"] == "text/plain"


def test_post_form(served: Running) -> None:
    response = fetch("POST", f"{served.url}/echo?from=query", data={"x": ["1", "2"], "msg": "hi there!"})
    assert response.json()["arguments"] == {"from": ["query"], "x": ["1", "2"], "msg": ["hi there!"]}


def test_multipart_upload(served: Running) -> None:
    data = bytes(range(256))
    response = fetch("POST", f"{served.url}/echo", data={"title": "Hello"},
                     files={"doc": ("a.bin", io.BytesIO(data), "application/x-thing")})
    seen = response.json()
    assert seen["arguments"] == {"title": ["Hello"]}
    assert seen["files"] == {"doc": [["a.bin", "application/x-thing", data.decode("latin-1")]]}


def test_signed_cookie_round_trip_and_a_tampered_cookie(served: Running) -> None:
    login = fetch("POST", f"{served.url}/login", data={"user": "ann"})
    assert "HttpOnly" in login.headers["Set-Cookie"]
    session = login.cookies["session"]
    assert fetch("GET", f"{served.url}/me", cookies={"session": session}).text == "you are ann"
    tampered = fetch("GET", f"{served.url}/me", cookies={"session": "x" + session})
    assert tampered.status_code == 401
    assert fetch("GET", f"{served.url}/me").status_code == 401


def test_redirect(served: Running) -> None:
    response = fetch("GET", f"{served.url}/old")
    assert (response.status_code, response.headers["Location"]) == (302, "/hello?name=redirected")
    followed = fetch("GET", f"{served.url}/old", allow_redirects=True)
    assert (followed.status_code, followed.text) == (200, "hello redirected")


def test_an_unknown_path_is_a_404(served: Running) -> None:
    assert fetch("GET", f"{served.url}/nowhere").status_code == 404


def head_exchange(served: Running, path: str) -> bytes:
    """The exact bytes a HEAD request gets back (the connection closed after it)."""
    return send_until_closed(served.port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())


@pytest.mark.parametrize(("path", "get_body"), [("/readonly", b"read me"), ("/get-only", b"pong")])
def test_head_is_get_without_the_body(served: Running, path: str, get_body: bytes) -> None:
    # A handler with `get` (and a route declared for GET) answers HEAD: GET's status and headers, the
    # Content-Length of GET's body, and not one byte of body (it would corrupt a keep-alive connection).
    raw = head_exchange(served, path)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert (sep, rest) == (b"\r\n\r\n", b"")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(get_body)}".encode() in head.split(b"\r\n")
    assert fetch("GET", f"{served.url}{path}").content == get_body


def test_head_on_a_route_without_get_is_a_405_without_a_body(served: Running) -> None:
    head, _, body = head_exchange(served, "/submit").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: POST" in head.split(b"\r\n")
    assert body == b""


def test_a_method_not_served_is_a_405_with_allow(served: Running) -> None:
    by_handler = fetch("DELETE", f"{served.url}/readonly")
    assert (by_handler.status_code, by_handler.headers["Allow"]) == (405, "GET, HEAD")
    by_route = fetch("GET", f"{served.url}/submit")
    assert (by_route.status_code, by_route.headers["Allow"]) == (405, "POST")
    assert fetch("POST", f"{served.url}/submit").status_code == 201


def test_a_raising_handler_is_a_500_and_the_next_request_is_served(served: Running) -> None:
    assert fetch("GET", f"{served.url}/boom").status_code == 500
    assert fetch("GET", f"{served.url}/hello").text == "hello world"


def test_connection_close_closes_the_connection(served: Running) -> None:
    raw = send_until_closed(served.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_response(raw)[::2] == (200, b"hello world")


def test_http_10_is_answered_and_closed(served: Running) -> None:
    raw = send_until_closed(served.port, b"GET /hello?name=old HTTP/1.0\r\n\r\n")
    assert parse_response(raw)[::2] == (200, b"hello old")


def test_http_11_keeps_the_connection_open(served: Running) -> None:
    request = b"GET /hello?name=%d HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = send_on_one_connection(served.port, [request % 1, request % 2])
    assert answers == [(200, b"hello 1"), (200, b"hello 2")]


def test_two_slow_requests_are_served_in_parallel(served: Running) -> None:
    started = time.monotonic()
    pending = [spawn_in_thread(fetch, "GET", f"{served.url}/slow") for _ in range(2)]
    assert [result.get(timeout=CLIENT_TIMEOUT).text for result in pending] == ["slept", "slept"]
    assert time.monotonic() - started < 1.8 * SLOW_SECONDS


def test_a_deferred_reply_answers_the_request(served: Running) -> None:
    response = fetch("GET", f"{served.url}/deferred")
    assert (response.status_code, response.text) == (200, "answered later")


def test_a_hand_built_response_is_sent_with_one_content_length(served: Running) -> None:
    raw = send_until_closed(served.port, b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert (status, body, headers.get_all("Content-Length")) == (200, b"raw body", ["8"])


def test_a_header_value_in_latin1_reaches_the_handler(served: Running) -> None:
    # Mongrel2 copies the byte 0xE9 into its JSON headers as it is: not UTF-8.
    response = fetch("GET", f"{served.url}/echo", headers={"X-Name": "caf\u00e9"})
    assert response.json()["x-name"] == "caf\u00e9"
