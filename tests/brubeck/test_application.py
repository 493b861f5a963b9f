"""The application: routes to handler classes and functions, 404 and 405, and what a transport relies on."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

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
