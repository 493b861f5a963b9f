"""Real HTTP clients for tests that serve an application in this process's gevent hub.

The application runs in greenlets of this thread, so a client must not block the hub: every public helper here
does its blocking work in an OS thread of gevent's threadpool (`in_thread`), and the hub keeps serving while
the test waits for the result. Every wait has a timeout; nothing sleeps.
"""

from __future__ import annotations

import http.client
import io
import socket
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

import gevent
import requests

P = ParamSpec("P")
T = TypeVar("T")

#: How long any one client call may take before the test fails instead of hanging.
CLIENT_TIMEOUT = 30.0


def in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` in an OS thread while the hub keeps running; return its result or raise its exception."""
    result: T = gevent.get_hub().threadpool.spawn(fn, *args, **kwargs).get(timeout=CLIENT_TIMEOUT)
    return result


def spawn_in_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> gevent.event.AsyncResult:
    """Start `fn` in an OS thread; `.get(timeout=...)` the result later."""
    return gevent.get_hub().threadpool.spawn(fn, *args, **kwargs)


def fetch(method: str, url: str, **options: Any) -> requests.Response:
    """One request with `requests`, from an OS thread; redirects are not followed unless asked."""
    options.setdefault("timeout", CLIENT_TIMEOUT)
    options.setdefault("allow_redirects", False)
    return in_thread(requests.request, method, url, **options)


def send_until_closed(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw request bytes; return all the server sends until it closes the connection.

    Raises `TimeoutError` when the server keeps the connection open for `timeout` seconds.
    """
    return in_thread(_send_until_closed, port, request, timeout)


def send_on_one_connection(port: int, requests: list[bytes], timeout: float = 10.0) -> list[tuple[int, bytes]]:
    """Send each raw request on one connection, reading each response before sending the next."""
    return in_thread(_send_on_one_connection, port, requests, timeout)


def _send_until_closed(port: int, request: bytes, timeout: float) -> bytes:
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _send_on_one_connection(port: int, requests: list[bytes], timeout: float) -> list[tuple[int, bytes]]:
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for request in requests:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((response.status, response.read()))
    return answers


class _Received:
    """Response bytes already read, shaped like the socket http.client.HTTPResponse reads from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def parse_response(raw: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
    """Status, headers and body of one complete HTTP response, parsed by http.client (not by brubeck)."""
    response = http.client.HTTPResponse(cast(socket.socket, _Received(raw)))
    response.begin()
    return response.status, response.headers, response.read()
