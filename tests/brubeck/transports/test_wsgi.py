"""The WSGI transport: the sample application on a real gevent WSGI server, driven by real HTTP clients.

What both transports must do alike is in test_both_transports.py; this module holds what is WSGI's own.
"""

from __future__ import annotations

import hashlib
from typing import Any

import gevent
import pytest

from brubeck.connections import WSGIConnection
from brubeck.testing import free_port
from brubeck.transports.wsgi import headers_from_environ
from tests.brubeck.http_client import (
    fetch,
)
from tests.brubeck.sample_app import Running, build_app, serve_wsgi, wait_until_served

ENVIRONS: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "a=1&b=2", "SERVER_PROTOCOL": "HTTP/1.1",
      "REMOTE_ADDR": "10.0.0.9", "wsgi.url_scheme": "http", "HTTP_HOST": "example.com",
      "HTTP_X_FORWARDED_FOR": "1.2.3.4", "HTTP_COOKIE": "a=b"},
     {"host": "example.com", "x-forwarded-for": "1.2.3.4", "cookie": "a=b", "PATH": "/hello", "METHOD": "GET",
      "VERSION": "HTTP/1.1", "URI": "/hello?a=1&b=2", "QUERY": "a=1&b=2", "REMOTE_ADDR": "10.0.0.9",
      "URL_SCHEME": "http"}),
    # No query: no QUERY header, as a real Mongrel2 sends it (tests/fixtures/mongrel2/post_form.bin).
    # Content-Type and Content-Length are not HTTP_ keys in a WSGI environ, but are headers all the same.
    ({"REQUEST_METHOD": "POST", "PATH_INFO": "/form", "CONTENT_TYPE": "application/x-www-form-urlencoded",
      "CONTENT_LENGTH": "3", "SERVER_PROTOCOL": "HTTP/1.0", "wsgi.url_scheme": "https"},
     {"content-type": "application/x-www-form-urlencoded", "content-length": "3", "PATH": "/form",
      "METHOD": "POST", "VERSION": "HTTP/1.0", "URI": "/form", "REMOTE_ADDR": "",
      "URL_SCHEME": "https"}),
    # PEP 3333 hands the path over decoded as latin-1; Mongrel2 gives it as sent, percent-escapes and all.
    ({"REQUEST_METHOD": "GET", "PATH_INFO": "/caf\u00c3\u00a9 x"},
     {"PATH": "/caf%C3%A9%20x", "METHOD": "GET", "VERSION": "HTTP/1.1", "URI": "/caf%C3%A9%20x",
      "REMOTE_ADDR": "", "URL_SCHEME": "http"}),
]


@pytest.mark.parametrize(("environ", "headers"), ENVIRONS)
def test_environ_becomes_mongrel2_shaped_headers(environ: dict[str, Any], headers: dict[str, str]) -> None:
    assert headers_from_environ(environ) == headers





def test_a_large_body_reaches_the_handler_whole(over_wsgi: Running) -> None:
    body = bytes(i % 251 for i in range(256 * 1024))
    response = fetch("POST", f"{over_wsgi.url}/big", data=body)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "via": "body"}


def test_a_route_returning_no_http_response_is_a_500(over_wsgi: Running) -> None:
    assert fetch("GET", over_wsgi.url + "/not-http").status_code == 500
    assert fetch("GET", over_wsgi.url + "/hello").status_code == 200









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


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh TCP connection, half-close it, and return everything the server answers."""
    from gevent import socket  # (the server runs in this process's hub)

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_body_shorter_than_its_content_length_is_a_400() -> None:
    with serve_wsgi() as running:
        answer = raw_exchange(running.port, b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
        assert answer.startswith(b"HTTP/1.1 400 ")


def test_a_connection_silent_for_idle_timeout_is_closed() -> None:
    from gevent import socket

    with serve_wsgi(idle_timeout=0.3) as running, \
            socket.create_connection(("127.0.0.1", running.port), timeout=5) as idle:
        assert idle.recv(1) == b""  # closed by the server, well before our own 5 s timeout
        assert fetch("GET", f"{running.url}/hello?name=later").text == "hello later"
