"""The WSGI transport: the sample application on a real gevent WSGI server, driven by real HTTP clients.

The same handler classes are served behind a real Mongrel2 in test_mongrel2_integration.py.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import gevent
import pytest

from brubeck.connections import WSGIConnection
from brubeck.testing import free_port
from brubeck.transports.wsgi import headers_from_environ
from tests.brubeck.http_client import (
    CLIENT_TIMEOUT,
    fetch,
    parse_response,
    send_on_one_connection,
    send_until_closed,
    spawn_in_thread,
)
from tests.brubeck.sample_app import SLOW_SECONDS, Running, build_app, serve_wsgi, wait_until_served

ENVIRONS: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "a=1&b=2", "SERVER_PROTOCOL": "HTTP/1.1",
      "REMOTE_ADDR": "10.0.0.9", "wsgi.url_scheme": "http", "HTTP_HOST": "example.com",
      "HTTP_X_FORWARDED_FOR": "1.2.3.4", "HTTP_COOKIE": "a=b"},
     {"host": "example.com", "x-forwarded-for": "1.2.3.4", "cookie": "a=b", "PATH": "/hello", "METHOD": "GET",
      "VERSION": "HTTP/1.1", "URI": "/hello?a=1&b=2", "QUERY": "a=1&b=2", "REMOTE_ADDR": "10.0.0.9",
      "URL_SCHEME": "http"}),
    # Content-Type and Content-Length are not HTTP_ keys in a WSGI environ, but are headers all the same.
    ({"REQUEST_METHOD": "POST", "PATH_INFO": "/form", "CONTENT_TYPE": "application/x-www-form-urlencoded",
      "CONTENT_LENGTH": "3", "SERVER_PROTOCOL": "HTTP/1.0", "wsgi.url_scheme": "https"},
     {"content-type": "application/x-www-form-urlencoded", "content-length": "3", "PATH": "/form",
      "METHOD": "POST", "VERSION": "HTTP/1.0", "URI": "/form", "QUERY": "", "REMOTE_ADDR": "",
      "URL_SCHEME": "https"}),
    # PEP 3333 hands the path over decoded as latin-1; Mongrel2 gives it as sent, percent-escapes and all.
    ({"REQUEST_METHOD": "GET", "PATH_INFO": "/caf\u00c3\u00a9 x"},
     {"PATH": "/caf%C3%A9%20x", "METHOD": "GET", "VERSION": "HTTP/1.1", "URI": "/caf%C3%A9%20x", "QUERY": "",
      "REMOTE_ADDR": "", "URL_SCHEME": "http"}),
]


@pytest.mark.parametrize(("environ", "headers"), ENVIRONS)
def test_environ_becomes_mongrel2_shaped_headers(environ: dict[str, Any], headers: dict[str, str]) -> None:
    assert headers_from_environ(environ) == headers


def test_get_with_a_query(over_wsgi: Running) -> None:
    response = fetch("GET", f"{over_wsgi.url}/hello?name=wsgi")
    assert (response.status_code, response.text) == (200, "hello wsgi")
    assert response.headers["Content-Type"] == "text/plain"


def test_post_form(over_wsgi: Running) -> None:
    response = fetch("POST", f"{over_wsgi.url}/echo?from=query", data={"x": ["1", "2"], "msg": "hi there!"})
    assert response.json()["arguments"] == {"from": ["query"], "x": ["1", "2"], "msg": ["hi there!"]}


def test_multipart_upload(over_wsgi: Running) -> None:
    data = bytes(range(256))
    response = fetch("POST", f"{over_wsgi.url}/echo", data={"title": "Hello"},
                    files={"doc": ("a.bin", io.BytesIO(data), "application/x-thing")})
    seen = response.json()
    assert seen["arguments"] == {"title": ["Hello"]}
    assert seen["files"] == {"doc": [["a.bin", "application/x-thing", data.decode("latin-1")]]}


def test_a_large_body_reaches_the_handler_whole(over_wsgi: Running) -> None:
    body = bytes(i % 251 for i in range(256 * 1024))
    response = fetch("POST", f"{over_wsgi.url}/big", data=body)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "via": "body"}


def test_a_route_returning_no_http_response_is_a_500(over_wsgi: Running) -> None:
    assert fetch("GET", over_wsgi.url + "/not-http").status_code == 500
    assert fetch("GET", over_wsgi.url + "/hello").status_code == 200


def test_a_hand_built_response_is_sent_with_one_content_length(over_wsgi: Running) -> None:
    raw = send_until_closed(over_wsgi.port, b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_response(raw)
    assert (status, body) == (200, b"raw body")
    assert headers.get_all("Content-Length") == ["8"]


def test_a_header_value_in_latin1_reaches_the_handler(over_wsgi: Running) -> None:
    assert fetch("GET", f"{over_wsgi.url}/echo", headers={"X-Name": "caf\u00e9"}).json()["x-name"] == "caf\u00e9"


def test_connection_close_closes_the_connection(over_wsgi: Running) -> None:
    raw = send_until_closed(over_wsgi.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_response(raw)[::2] == (200, b"hello world")


def test_http_10(over_wsgi: Running) -> None:
    raw = send_until_closed(over_wsgi.port, b"GET /hello?name=old HTTP/1.0\r\n\r\n")
    assert parse_response(raw)[::2] == (200, b"hello old")


def test_http_11_keeps_the_connection_open(over_wsgi: Running) -> None:
    request = b"GET /hello?name=%d HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = send_on_one_connection(over_wsgi.port, [request % 1, request % 2])
    assert answers == [(200, b"hello 1"), (200, b"hello 2")]


def test_two_slow_requests_are_served_in_parallel(over_wsgi: Running) -> None:
    started = time.monotonic()
    pending = [spawn_in_thread(fetch, "GET", f"{over_wsgi.url}/slow") for _ in range(2)]
    assert [result.get(timeout=CLIENT_TIMEOUT).text for result in pending] == ["slept", "slept"]
    assert time.monotonic() - started < 1.8 * SLOW_SECONDS


def test_a_deferred_reply_answers_the_request(over_wsgi: Running) -> None:
    response = fetch("GET", f"{over_wsgi.url}/deferred")
    assert (response.status_code, response.text) == (200, "answered later")


def test_a_request_never_replied_to_gets_a_504() -> None:
    with serve_wsgi(reply_timeout=0.2) as running:
        assert fetch("GET", f"{running.url}/never").status_code == 504
        assert fetch("GET", f"{running.url}/hello").status_code == 200


def test_a_body_over_max_body_size_is_a_413() -> None:
    with serve_wsgi(max_body_size=1024) as running:
        assert fetch("POST", f"{running.url}/echo", data=b"x" * 1025).status_code == 413
        assert fetch("POST", f"{running.url}/echo", data=b"x" * 1024).status_code == 200


def test_process_messages_serves_until_the_connection_is_closed() -> None:
    port = free_port()
    connection = WSGIConnection(port=port)
    app = build_app(connection)
    serving = gevent.spawn(connection.process_messages, app)
    wait_until_served(f"http://127.0.0.1:{port}")
    connection.close()
    serving.join(timeout=5)
    assert serving.dead
    assert serving.exception is None
