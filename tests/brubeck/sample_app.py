"""One Brubeck application, served behind a real Mongrel2 and over WSGI by the same handler classes.

`serve_mongrel2(server)` and `serve_wsgi()` run it in this process's gevent hub (the test drives HTTP from
OS threads, see http_client.py) and stop it on exit: connection closed, serving greenlet joined, handler
greenlets still running killed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import gevent
import msgspec
import requests
from gevent.pool import Pool

from brubeck.application import Brubeck
from brubeck.auth import authenticated
from brubeck.connections import Mongrel2Connection, WSGIConnection
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeck.request_handling import http_response
from brubeck.response import HTTPResponse, render
from brubeck.testing import Mongrel2Server
from brubeck.transports.base import WebConnection
from tests.brubeck.http_client import in_thread

COOKIE_SECRET = "sample app cookie secret"
SLOW_SECONDS = 1.0
READY_TIMEOUT = 10.0


class JSONReplies(WebMessageHandler):
    """Handlers that answer with a JSON document (and a real HTTP status)."""

    def send_json(self, data: Any, status_code: int = 200) -> HTTPResponse:
        self.set_body(msgspec.json.encode(data), headers={"Content-Type": "application/json"},
                      status_code=status_code)
        return self.render()


class Hello(WebMessageHandler):
    def get(self) -> HTTPResponse:
        self.set_body(f"hello {self.get_argument('name', 'world')}", headers={"Content-Type": "text/plain"})
        return self.render()


class Echo(JSONReplies):
    """What the handler saw of the request: method, arguments, files and a few headers."""

    def get(self) -> HTTPResponse:
        return self.send_json(self.seen())

    def post(self) -> HTTPResponse:
        return self.send_json(self.seen())

    def seen(self) -> dict[str, Any]:
        message: Request = self.message
        return {
            "method": message.method,
            "path": message.path,
            "url": message.url,
            "version": message.version,
            "arguments": message.arguments,
            "files": {name: [[f.filename, f.content_type, f.body.decode("latin-1")] for f in files]
                      for name, files in message.files.items()},
            "x-name": message.headers.get("x-name"),
            "x-many": message.headers.get("x-many"),
            "cookies": message.cookies,
        }


class Login(WebMessageHandler):
    def post(self) -> HTTPResponse:
        self.set_cookie("session", self.get_argument("user"), secret=COOKIE_SECRET, httponly=True)
        self.set_body("logged in")
        return self.render()


class Me(WebMessageHandler):
    def get_current_user(self) -> str | None:
        user: str | None = self.get_cookie("session", secret=COOKIE_SECRET)
        return user

    @authenticated
    def get(self) -> HTTPResponse:
        self.set_body(f"you are {self.current_user}")
        return self.render()


class Old(WebMessageHandler):
    def get(self) -> HTTPResponse:
        return self.redirect("/hello?name=redirected")


class ReadOnly(WebMessageHandler):
    def get(self) -> HTTPResponse:
        self.set_body("read me")
        return self.render()


class Boom(WebMessageHandler):
    def get(self) -> HTTPResponse:
        raise RuntimeError("the sample app's deliberate failure")


class Slow(WebMessageHandler):
    def get(self) -> HTTPResponse:
        gevent.sleep(SLOW_SECONDS)
        self.set_body("slept")
        return self.render()


class Deferred(WebMessageHandler):
    """Returns None (no reply now) and answers later through the connection, as Brubeck 0.4 allowed."""

    def get(self) -> None:
        gevent.spawn(self.reply_later)

    def reply_later(self) -> None:
        gevent.sleep(0)
        self.set_body("answered later")
        self.application.msg_conn.reply(self.message, self.render())


class Never(WebMessageHandler):
    """Returns None and never replies: over WSGI the request gives up after `reply_timeout`."""

    def get(self) -> None:
        return None


class Upload(JSONReplies):
    """A large body: from Mongrel2's upload file when it spooled one, else from the request."""

    def post(self) -> HTTPResponse:
        message: Request = self.message
        if message.is_upload_done():
            assert message.upload_path is not None
            path = os.path.join(self.application.settings["upload_root"], message.upload_path.lstrip("/"))
            with open(path, "rb") as upload:
                data = upload.read()
            os.unlink(path)
            via = "upload"
        else:
            data = message.body
            via = "body"
        return self.send_json({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "via": via})


def raw(application: Brubeck, message: Request) -> bytes:
    """Brubeck 0.4's function route returning hand-built response bytes."""
    return http_response(b"raw body", 200, "OK", {"Content-Type": "text/plain"})


def submit(application: Brubeck, message: Request) -> HTTPResponse:
    return render("submitted", 201)


def ping(application: Brubeck, message: Request) -> HTTPResponse:
    return render("pong")


def not_http(application: Brubeck, message: Request) -> dict[str, str]:
    """A route returning something that is no HTTP response (as a service handler's reply would be)."""
    return {"not": "http"}


def build_app(connection: WebConnection, **settings: Any) -> Brubeck:
    app = Brubeck(msg_conn=connection, pool=Pool(), cookie_secret=COOKIE_SECRET, handler_tuples=[
        (r"^/hello$", Hello),
        (r"^/echo$", Echo),
        (r"^/login$", Login),
        (r"^/me$", Me),
        (r"^/old$", Old),
        (r"^/readonly$", ReadOnly),
        (r"^/boom$", Boom),
        (r"^/slow$", Slow),
        (r"^/deferred$", Deferred),
        (r"^/never$", Never),
        (r"^/big$", Upload),
        (r"^/raw$", raw),
        (r"^/ping$", ping),
        (r"^/not-http$", not_http),
    ], **settings)
    app.add_route_rule(r"^/submit$", submit, method="POST")
    app.add_route_rule(r"^/get-only$", ping, method="GET")
    return app


@dataclass
class Running:
    """The sample application being served: where to reach it, and its parts."""

    url: str
    app: Brubeck
    connection: WebConnection
    server: Mongrel2Server | None = None
    serving: gevent.Greenlet | None = None  # the greenlet running process_messages, if any

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def stop(app: Brubeck, connection: WebConnection, serving: gevent.Greenlet | None = None) -> None:
    """Close the connection, check its serving greenlet ended cleanly, and kill handlers still running."""
    connection.close()
    if serving is not None:
        serving.join(timeout=5)
        assert serving.dead, "process_messages did not return after close()"
        assert serving.exception is None, f"process_messages failed: {serving.exception!r}"
    assert app.pool is not None
    app.pool.kill(timeout=5)


def wait_until_served(url: str, timeout: float = READY_TIMEOUT) -> None:
    """Retry /ping until it is answered: a ZeroMQ PUB drops replies until Mongrel2's subscription arrives."""
    in_thread(_ping_until_answered, url, timeout)


def _ping_until_answered(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(f"{url}/ping", timeout=0.5).raise_for_status()
            return
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise


@contextmanager
def serve_mongrel2(server: Mongrel2Server, **connection_options: Any) -> Iterator[Running]:
    """The sample app behind `server` (already started), over a Mongrel2Connection."""
    connection = Mongrel2Connection(server.send_spec, server.recv_spec, **connection_options)
    app = build_app(connection, upload_root=str(server.workdir))
    serving = gevent.spawn(connection.process_messages, app)
    try:
        wait_until_served(server.url)
        yield Running(server.url, app, connection, server, serving)
    finally:
        stop(app, connection, serving)


@contextmanager
def serve_wsgi(**connection_options: Any) -> Iterator[Running]:
    """The sample app over a WSGIConnection on a free 127.0.0.1 port."""
    connection = WSGIConnection(port=0, host="127.0.0.1", **connection_options)
    app = build_app(connection)
    connection.start(app)
    try:
        yield Running(f"http://127.0.0.1:{connection.port}", app, connection)
    finally:
        stop(app, connection)
