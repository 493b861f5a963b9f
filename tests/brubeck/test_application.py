"""The application: routes to handler classes and functions, 404 and 405, and what a transport relies on."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import gevent
import msgspec
import pytest
from gevent.event import Event

from brubeck.application import Brubeck
from brubeck.errors import ConfigurationError, HTTPError
from brubeck.handlers import JSONMessageHandler, WebMessageHandler
from brubeck.request import Request
from brubeck.response import HTTPResponse, render
from brubeck.types import Application
from tests.brubeck.inmemory import call, header, make_app, make_request


class Page(WebMessageHandler):
    def get(self) -> HTTPResponse:
        self.set_body("page")
        return self.render()


def hello(application: Brubeck, message: Request, name: str = "world") -> HTTPResponse:
    return render(f"hello {name} via {message.method}", 200, "OK", {"Content-Type": "text/plain"})


def test_an_application_needs_a_connection() -> None:
    with pytest.raises(ConfigurationError, match="msg_conn"):
        Brubeck(handler_tuples=[(r"^/", Page)])


def test_handler_tuples_route_to_classes_and_functions() -> None:
    app = make_app((r"^/page$", Page), (r"^/hello/(?P<name>\w+)$", hello))
    assert call(app, "GET", "/page").body == b"page"
    assert call(app, "GET", "/hello/ann").body == b"hello ann via GET"


def test_add_route_decorator_with_methods() -> None:
    app = make_app()

    @app.add_route(r"^/things$", method=["POST", "PUT"])
    def change(application: Brubeck, message: Request) -> HTTPResponse:
        return render(f"{message.method} ok", 201)

    assert change.__name__ == "change"  # the decorator gives the function back
    assert call(app, "PUT", "/things").status_code == 201
    response = call(app, "GET", "/things")
    assert response.status_code == 405
    assert header(response, "Allow") == ["POST, PUT"]


def test_add_route_rule_matches_in_order_with_handler_tuples_first() -> None:
    app = make_app((r"^/x", Page))
    app.add_route_rule(r"^/x", hello)
    app.add_route_rule(r"^/y", hello, method="GET")
    assert call(app, "GET", "/x").body == b"page"
    assert call(app, "GET", "/y").body == b"hello world via GET"


def test_an_unknown_path_is_a_404() -> None:
    response = call(make_app((r"^/page$", Page)), "GET", "/nope")
    assert (response.status_code, response.body) == (404, b"404 Not Found\n")


def test_a_function_route_raising_http_error_answers_its_status() -> None:
    def gone(application: Brubeck, message: Request) -> HTTPResponse:
        raise HTTPError(410)

    assert call(make_app((r"^/", gone)), "GET", "/").status_code == 410


def test_a_function_route_raising_anything_else_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken(application: Brubeck, message: Request) -> HTTPResponse:
        raise ZeroDivisionError("oops")

    with caplog.at_level(logging.ERROR, logger="brubeck"):
        assert call(make_app((r"^/", broken)), "GET", "/").status_code == 500
    assert any(record.exc_info and isinstance(record.exc_info[1], ZeroDivisionError) for record in caplog.records)


def test_a_handler_failing_in_initialize_is_a_500() -> None:
    class Unbuildable(WebMessageHandler):
        def initialize(self) -> None:
            raise RuntimeError("no database")

    assert call(make_app((r"^/", Unbuildable)), "GET", "/").status_code == 500


def test_no_handler_answers_what_no_route_matches() -> None:
    def fallback(application: Brubeck, message: Request) -> HTTPResponse:
        return render(f"nothing at {message.path}", 404)

    response = call(make_app((r"^/page$", Page), no_handler=fallback), "GET", "/missing")
    assert (response.status_code, response.body) == (404, b"nothing at /missing")


def test_base_handler_shapes_the_errors_the_application_answers() -> None:
    app = make_app((r"^/items$", Page), base_handler=JSONMessageHandler)
    response = call(app, "GET", "/nope")
    assert response.status_code == 404
    assert header(response, "Content-Type") == ["application/json"]
    assert msgspec.json.decode(response.body)["status_code"] == 404


def test_handle_can_be_given_another_base_handler_for_one_message() -> None:
    response = make_app().handle(make_request("GET", "/nope"), base_handler=JSONMessageHandler)
    assert isinstance(response, HTTPResponse)
    assert header(response, "Content-Type") == ["application/json"]


def test_settings_reach_handlers_through_the_application() -> None:
    class Settings(WebMessageHandler):
        def get(self) -> HTTPResponse:
            app = self.application
            self.set_body(f"{app.login_url} {app.cookie_secret!r} {app.settings['feature']}")
            return self.render()

    app = make_app((r"^/", Settings), login_url="/login", cookie_secret="s3", feature="on")
    assert call(app, "GET", "/").body == b"/login 's3' on"


def test_two_applications_share_no_routes_or_state() -> None:
    first = make_app((r"^/page$", Page))
    second = make_app()
    first.extensions["service"] = object()
    assert call(second, "GET", "/page").status_code == 404
    assert second.extensions == {}


class RecordingConnection:
    """A transport that serves nothing: enough to watch what `run()` does with its connection."""

    base_handler: type[WebMessageHandler] = WebMessageHandler

    def __init__(self) -> None:
        self.served: list[Application] = []
        self.closed = 0

    def process_messages(self, application: Application) -> None:
        self.served.append(application)

    def reply(self, message: Any, response: Any) -> None:
        raise AssertionError("nothing to reply to")

    def close(self) -> None:
        self.closed += 1


def test_run_serves_the_connection_and_closes_it_when_serving_ends() -> None:
    connection = RecordingConnection()
    app = Brubeck(msg_conn=connection)
    app.run()
    assert connection.served == [app]
    assert connection.closed == 1


# -- closing in order -------------------------------------------------------------------------------------

class BlockingConnection(RecordingConnection):
    """Serves until closed, noting in `events` what happens to it, as a real transport would; with
    `drainable`, it also has a `drain()` that runs until `drain_may_end` is set or it is closed."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.serving = Event()
        self.stopped = Event()
        self.drain_started = Event()
        self.drain_may_end = Event()

    def process_messages(self, application: Application) -> None:
        self.served.append(application)
        self.serving.set()
        self.stopped.wait()

    def close(self) -> None:
        self.events.append("close")
        super().close()
        self.stopped.set()
        self.drain_may_end.set()  # as ServiceConnection.close() ends a drain


class DrainableConnection(BlockingConnection):
    def drain(self) -> None:
        self.events.append("drain")
        self.drain_started.set()
        self.drain_may_end.wait()
        self.events.append("drained")


def test_close_closes_the_connection_then_runs_the_hooks_newest_first_once() -> None:
    events: list[str] = []
    connection = BlockingConnection(events)
    app = Brubeck(msg_conn=connection)
    app.on_close(lambda: events.append("first registered"))

    @app.on_close
    def second() -> None:
        events.append("second registered")

    assert callable(second)  # on_close gives the function back, so it decorates
    app.close()
    app.close()
    assert events == ["close", "second registered", "first registered"]
    assert connection.closed == 1


def test_a_failing_close_hook_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    app = Brubeck(msg_conn=BlockingConnection(events))
    app.on_close(lambda: events.append("still run"))

    def broken() -> None:
        raise RuntimeError("hook broke")

    app.on_close(broken)
    with caplog.at_level(logging.ERROR, logger="brubeck.application"):
        app.close()
    assert events == ["close", "still run"]
    assert "close hook" in caplog.text
    assert "hook broke" in caplog.text


def test_a_hook_registered_after_close_runs_at_once() -> None:
    events: list[str] = []
    app = Brubeck(msg_conn=BlockingConnection(events))
    app.close()
    app.on_close(lambda: events.append("late hook"))
    assert events == ["close", "late hook"]


def test_run_returns_once_a_close_from_elsewhere_has_run_its_hooks() -> None:
    events: list[str] = []
    connection = BlockingConnection(events)
    app = Brubeck(msg_conn=connection)
    hook_started, hook_may_end = Event(), Event()

    def slow_hook() -> None:
        events.append("hook started")
        hook_started.set()
        hook_may_end.wait()
        events.append("hook done")

    def release_the_hook() -> None:
        hook_started.wait()
        events.append("released")
        hook_may_end.set()

    app.on_close(slow_hook)

    def close_when_serving() -> None:
        connection.serving.wait()
        app.close()

    closer = gevent.spawn(close_when_serving)
    gevent.spawn(release_the_hook)
    app.run()  # serving ends as the other greenlet closes the app; run() waits for its hooks
    assert events == ["close", "hook started", "released", "hook done"]
    closer.get()
    assert connection.closed == 1  # run()'s own close() found the app closed


def run_with_signals(connection: BlockingConnection, *signals: signal.Signals,
                     between: Callable[[], object] = lambda: None) -> None:
    """`app.run()` in this (the main) thread, with `signals` sent to this process once it serves, and
    `between()` called after the first one."""
    app = Brubeck(msg_conn=connection)
    app.on_close(lambda: connection.events.append("hook"))

    def send() -> None:
        connection.serving.wait()  # run() has installed its handlers by then
        os.kill(os.getpid(), signals[0])
        between()
        for signum in signals[1:]:
            os.kill(os.getpid(), signum)

    sender = gevent.spawn(send)
    app.run()
    sender.get()


def test_sigterm_drains_a_connection_that_can_then_closes() -> None:
    events: list[str] = []
    connection = DrainableConnection(events)

    def drain_runs_unclosed() -> None:
        connection.drain_started.wait()
        assert events == ["drain"]  # the connection is still open while it drains
        connection.drain_may_end.set()

    run_with_signals(connection, signal.SIGTERM, between=drain_runs_unclosed)
    assert events == ["drain", "drained", "close", "hook"]


def test_a_second_sigterm_during_the_drain_closes_at_once() -> None:
    events: list[str] = []
    connection = DrainableConnection(events)
    run_with_signals(connection, signal.SIGTERM, signal.SIGTERM, between=connection.drain_started.wait)
    assert events == ["drain", "close", "hook", "drained"]  # the close ended the drain; run() waited for it


def test_sigint_closes_at_once_even_a_connection_that_can_drain() -> None:
    events: list[str] = []
    run_with_signals(DrainableConnection(events), signal.SIGINT)
    assert events == ["close", "hook"]


def test_sigterm_closes_at_once_a_connection_that_cannot_drain() -> None:
    events: list[str] = []
    run_with_signals(BlockingConnection(events), signal.SIGTERM)
    assert events == ["close", "hook"]


def test_brubeck_04_import_paths_still_work() -> None:
    import brubeck.application
    import brubeck.handlers
    import brubeck.response
    import brubeck.templating
    import brubeck.transports.mongrel2
    import brubeck.transports.wsgi
    from brubeck.connections import Mongrel2Connection, WSGIConnection
    from brubeck.request_handling import Brubeck as FacedBrubeck
    from brubeck.request_handling import JSONMessageHandler as FacedJSON
    from brubeck.request_handling import WebMessageHandler as FacedWeb
    from brubeck.request_handling import render as faced_render
    from brubeck.templating import Jinja2Rendering, load_jinja2_env

    assert FacedBrubeck is brubeck.application.Brubeck
    assert (FacedJSON, FacedWeb) == (brubeck.handlers.JSONMessageHandler, brubeck.handlers.WebMessageHandler)
    assert faced_render is brubeck.response.render
    assert Mongrel2Connection is brubeck.transports.mongrel2.Mongrel2Connection
    assert WSGIConnection is brubeck.transports.wsgi.WSGIConnection
    assert issubclass(Jinja2Rendering, FacedWeb)
    assert callable(load_jinja2_env)
