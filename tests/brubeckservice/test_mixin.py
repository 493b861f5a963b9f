"""ServiceClientMixin: the 2013 API a web handler uses to call a service, sync or fire-and-forget.

The service is a ServicePair in memory; the calling app is a second Brubeck app whose web handlers mix in
ServiceClientMixin and whose ServiceResponseHandler receives the replies, as in original-api.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gevent.queue import Queue

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeckservice.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, ServiceClient
from brubeckservice.errors import ServiceError
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin, registry
from brubeckservice.models import ServiceResponse
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, Gate, wait_until


class ServiceResponseHandler(ServiceMessageHandler):
    """The client app's handler for replies (METHOD "response"), reporting each to the test."""

    def response(self) -> ServiceResponse:
        self.application.settings["replies"].put(self.message)
        self.add_to_payload("handled_by", "the client app")
        return self.render()


class Page(ServiceClientMixin, WebMessageHandler):
    """A web page that calls the service and waits, as /service/sync does in the 2013 demo."""

    def get(self) -> HTTPResponse:
        settings = self.application.settings
        self.register_service(settings["service_addr"], None, PASSPHRASE, context=settings["service_context"])
        request = self.create_service_request("/block", "request", {"RETURN_DATA": "for the page"})
        response, _ = self.send_service_request(settings["service_addr"], request, timeout=0.2)
        self.set_body(response.body["RETURN_DATA"])
        return self.render()


class SyncPage(ServiceClientMixin, WebMessageHandler):
    """The README Quick start's /sync: waits for the service, with the client's own timeouts."""

    def get(self) -> HTTPResponse:
        service_addr = self.application.settings["service_addr"]
        self.register_service(service_addr, None, PASSPHRASE)
        request = self.create_service_request("/echo", "request", {"RETURN_DATA": "hello"})
        response, _ = self.send_service_request(service_addr, request)
        self.set_body(response.body["RETURN_DATA"])
        return self.render()


class AsyncPage(ServiceClientMixin, WebMessageHandler):
    """The README Quick start's /async: hands the call off and answers at once."""

    def get(self) -> HTTPResponse:
        service_addr = self.application.settings["service_addr"]
        self.register_service(service_addr, None, PASSPHRASE)
        self.send_service_request_nowait(service_addr, self.create_service_request("/echo", "request"))
        self.set_body("handed off")
        return self.render()


def client_app(pair: ServicePair, **settings: Any) -> Brubeck:
    """A web app calling `pair`'s service, its replies routed to ServiceResponseHandler."""
    return Brubeck(msg_conn=WSGIConnection(port=0),
                   handler_tuples=[(r"^/page", Page), (r"^/echo", ServiceResponseHandler),
                                   (r"^/block", ServiceResponseHandler)],
                   replies=Queue(), service_addr=pair.address, service_context=pair.context, **settings)


@pytest.fixture
def app(pair: ServicePair) -> Iterator[Brubeck]:
    application = client_app(pair)
    yield application
    application.close()  # closes the service clients it registered


def page(application: Brubeck, conn_id: str = "77") -> Page:
    return Page(application, Request("wsgi", conn_id, "/page", {"METHOD": "GET", "PATH": "/page"}, b""))


def register(handler: ServiceClientMixin, pair: ServicePair, **options: Any) -> ServiceClient:
    return handler.register_service(pair.address, None, PASSPHRASE, context=pair.context, **options)


# -- register_service ---------------------------------------------------------------------------------------

def test_register_service_is_idempotent(app: Brubeck, pair: ServicePair) -> None:
    first = register(page(app), pair)
    again = page(app, conn_id="78").register_service(pair.address, None, "another passphrase")
    assert again is first  # "if it exists, nothing happens"
    assert registry(app) == {pair.address: first}


def test_two_apps_do_not_share_clients(app: Brubeck, pair: ServicePair) -> None:
    other = client_app(pair)
    try:
        mine, theirs = register(page(app), pair), register(page(other), pair)
        assert mine is not theirs
        assert registry(app) == {pair.address: mine}
        assert registry(other) == {pair.address: theirs}
        mine.close()
        assert theirs.call("/echo").ok  # closing one app's client leaves the other's working
    finally:
        other.close()


def test_the_apps_service_timeout_setting_is_the_default_timeout(pair: ServicePair) -> None:
    apps = [client_app(pair), client_app(pair, service_timeout=1.5), client_app(pair, service_timeout=1.5)]
    clients = [register(page(apps[0]), pair), register(page(apps[1]), pair), register(page(apps[2]), pair, timeout=0.7)]
    try:
        assert [c.timeout for c in clients] == [DEFAULT_TIMEOUT, 1.5, 0.7]
    finally:
        for client in clients:
            client.close()


def test_connect_timeout_comes_from_register_service_else_the_apps_setting(pair: ServicePair) -> None:
    apps = [client_app(pair), client_app(pair, service_connect_timeout=0.5),
            client_app(pair, service_connect_timeout=0.5)]
    clients = [register(page(apps[0]), pair), register(page(apps[1]), pair),
               register(page(apps[2]), pair, connect_timeout=0.7)]
    try:
        assert [c.connect_timeout for c in clients] == [DEFAULT_CONNECT_TIMEOUT, 0.5, 0.7]
    finally:
        for client in clients:
            client.close()


def test_calling_an_unregistered_service_says_what_to_do(app: Brubeck, pair: ServicePair) -> None:
    handler = page(app)
    with pytest.raises(ServiceError, match="call register_service first"):
        handler.send_service_request(pair.address, handler.create_service_request("/echo"))


# -- create_service_request ---------------------------------------------------------------------------------

def test_create_service_request_carries_the_web_connection_id(app: Brubeck) -> None:
    arguments = {"RETURN_DATA": "hello"}
    request = page(app, conn_id="77").create_service_request("/service/slow", "request", arguments)
    assert (request.path, request.method, request.arguments, request.conn_id) == (
        "/service/slow", "request", {"RETURN_DATA": "hello"}, "77")
    arguments["RETURN_DATA"] = "changed later"
    assert request.arguments == {"RETURN_DATA": "hello"}  # the request holds its own copy


# -- send_service_request (sync) ----------------------------------------------------------------------------

def test_sync_returns_the_response_and_what_the_response_handler_returned(app: Brubeck, pair: ServicePair) -> None:
    handler = page(app, conn_id="77")
    register(handler, pair)
    request = handler.create_service_request("/echo", "request", {"RETURN_DATA": "hello"})
    response, handler_response = handler.send_service_request(pair.address, request)
    assert (response.status_code, response.status_msg) == (200, "Took a while, but I am back.")
    assert response.body == {"RETURN_DATA": "hello", "conn_id": "77"}
    assert isinstance(handler_response, ServiceResponse)
    assert handler_response.body == {"RETURN_DATA": "hello", "conn_id": "77", "handled_by": "the client app"}
    assert handler_response.status_code == 200


def test_sync_runs_the_response_handler_exactly_once(app: Brubeck, pair: ServicePair) -> None:
    handler = page(app)
    client = register(handler, pair)
    response, _ = handler.send_service_request(pair.address, handler.create_service_request("/echo"))
    replies = app.settings["replies"]
    assert replies.get(timeout=WAIT) is response
    client.ping()  # a round trip later, a second delivery would have been queued
    assert replies.empty()


def test_a_reply_the_client_app_has_no_route_for_still_returns_the_response(app: Brubeck,
                                                                             pair: ServicePair) -> None:
    handler = page(app)
    register(handler, pair)
    response, handler_response = handler.send_service_request(pair.address,
                                                              handler.create_service_request("/nope"))
    assert response.status_code == 404  # the service had no handler either
    assert handler_response.status_code == 404  # and neither had the client app


def test_a_timeout_escaping_a_web_handler_answers_504(app: Brubeck, pair: ServicePair) -> None:
    answer = app.handle(page(app).message)
    assert answer.status_code == 504


# -- send_service_request_nowait ----------------------------------------------------------------------------

def test_nowait_returns_at_once_and_the_reply_reaches_the_response_handler_once(
        app: Brubeck, pair: ServicePair, gate: Gate) -> None:
    handler = page(app)
    client = register(handler, pair)
    request = handler.create_service_request("/block", "request", {"RETURN_DATA": "later"})
    msg_id = handler.send_service_request_nowait(pair.address, request)
    gate.next_arrival()
    replies = app.settings["replies"]
    assert replies.empty()  # returned while the service is still working on it
    gate.release.set()
    reply = replies.get(timeout=WAIT)
    assert (reply.msg_id, reply.body["RETURN_DATA"], reply.conn_id) == (msg_id, "later", "77")
    client.ping()
    assert replies.empty()
    assert client.stats["replies"] == 1


# -- no service: fail fast -------------------------------------------------------------------------------------

@pytest.fixture
def lonely_app(tmp_path: Path) -> Iterator[Brubeck]:
    """A web app (the README's /sync and /async) whose service is not running: a 30 s call timeout, and a
    0.5 s connect timeout from the app's settings."""
    application = Brubeck(msg_conn=WSGIConnection(port=0),
                          handler_tuples=[(r"^/sync", SyncPage), (r"^/async", AsyncPage),
                                          (r"^/echo", ServiceResponseHandler)],
                          replies=Queue(), service_addr=f"ipc://{tmp_path}/stopped", service_timeout=30,
                          service_connect_timeout=0.5, service_close_timeout=0)
    yield application
    application.close()


def get(application: Brubeck, path: str) -> HTTPResponse:
    answer: HTTPResponse = application.handle(Request("wsgi", "77", path, {"METHOD": "GET", "PATH": path}, b""))
    return answer


def test_a_sync_page_calling_a_stopped_service_answers_503_within_the_connect_timeout(lonely_app: Brubeck) -> None:
    started = time.monotonic()
    answer = get(lonely_app, "/sync")
    assert answer.status_code == 503
    assert time.monotonic() - started < 10  # the connect timeout (0.5 s), not the call timeout (30 s)
    assert lonely_app.settings["replies"].empty()


def test_a_nowait_page_calling_a_stopped_service_answers_at_once(lonely_app: Brubeck,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="brubeckservice.client"):
        answer = get(lonely_app, "/async")
        assert (answer.status_code, answer.body) == (200, b"handed off")
        client = registry(lonely_app)[lonely_app.settings["service_addr"]]
        assert client.pending == 1  # it answered while the call still waited for a connection
        wait_until(lambda: client.stats["unavailable"] == 1, "the call to fail for want of a connection")
    assert "call to /echo failed: no connection to the service" in caplog.text
    assert client.pending == 0


def test_once_the_service_is_known_to_be_down_a_nowait_page_answers_503_at_once(lonely_app: Brubeck) -> None:
    assert get(lonely_app, "/sync").status_code == 503  # waited the connect timeout once
    client = registry(lonely_app)[lonely_app.settings["service_addr"]]
    assert not client.available
    held = client.stats["queued"]
    answer = get(lonely_app, "/async")
    assert answer.status_code == 503
    assert (client.pending, client.stats["queued"]) == (0, held)  # refused at once, not held
