"""Handlers: the lifecycle, METHOD dispatch, errors turned into responses, cookies, redirects and JSON."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import msgspec
import pytest

from brubeck.errors import HTTPError
from brubeck.handlers import JSONMessageHandler, MessageHandler, WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.testing import TestResponse
from tests.brubeck.inmemory import call, header, make_app, make_request

SECRET = "handler test secret"


class Hello(WebMessageHandler):
    def get(self) -> HTTPResponse:
        self.set_body(f"hello {self.get_argument('name', 'nobody')}")
        return self.render()

    def post(self) -> HTTPResponse:
        self.set_body("created", status_code=201)
        return self.render()


def test_the_method_named_after_the_request_method_answers() -> None:
    app = make_app((r"^/hello$", Hello))
    response = call(app, "GET", "/hello?name=world")
    assert (response.status_code, response.body) == (200, b"hello world")
    assert header(response, "Content-Type") == ["text/html; charset=utf-8"]
    assert call(app, "POST", "/hello").status_code == 201


def test_url_groups_reach_the_method_as_arguments() -> None:
    class Item(WebMessageHandler):
        def get(self, shop: str, item_id: str) -> HTTPResponse:
            self.set_body(f"{shop}:{item_id}")
            return self.render()

    app = make_app((r"^/(\w+)/items/(?P<item_id>\d+)$", Item))
    assert call(app, "GET", "/shop/items/42").body == b"shop:42"


def test_a_handler_that_never_sets_a_status_answers_500() -> None:
    class Lazy(WebMessageHandler):
        def get(self) -> HTTPResponse:
            return self.render()

    assert call(make_app((r"^/", Lazy)), "GET", "/").status_code == 500


def test_lifecycle_hooks_run_in_order() -> None:
    calls: list[str] = []

    class Traced(WebMessageHandler):
        def initialize(self) -> None:
            calls.append("initialize")

        def prepare(self) -> None:
            calls.append("prepare")

        def get(self) -> HTTPResponse:
            calls.append("get")
            self.set_body("ok")
            return self.render()

        def on_finish(self) -> None:
            calls.append("on_finish")

    assert call(make_app((r"^/", Traced)), "GET", "/").status_code == 200
    assert calls == ["initialize", "prepare", "get", "on_finish"]


def test_prepare_can_answer_without_running_the_method() -> None:
    class Closed(WebMessageHandler):
        def prepare(self) -> None:
            self.set_body("maintenance", status_code=503)
            self._finished = True

        def get(self) -> HTTPResponse:
            raise AssertionError("get must not run once prepare finished the request")

    response = call(make_app((r"^/", Closed)), "GET", "/")
    assert (response.status_code, response.body) == (503, b"maintenance")


def test_an_exception_becomes_a_logged_500_and_on_finish_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    finished: list[bool] = []

    class Broken(WebMessageHandler):
        def get(self) -> HTTPResponse:
            raise RuntimeError("database on fire")

        def on_finish(self) -> None:
            finished.append(True)

    with caplog.at_level(logging.ERROR, logger="brubeck"):
        response = call(make_app((r"^/", Broken)), "GET", "/")
    assert response.status_code == 500
    assert b"database on fire" not in response.body  # no internals leak to the client
    assert finished == [True]
    assert any(record.exc_info and "database on fire" in str(record.exc_info[1]) for record in caplog.records)


def test_an_exception_in_prepare_becomes_a_500() -> None:
    class Broken(WebMessageHandler):
        def prepare(self) -> None:
            raise KeyError("session")

        def get(self) -> HTTPResponse:
            raise AssertionError("unreachable")

    assert call(make_app((r"^/", Broken)), "GET", "/").status_code == 500


def test_an_exception_in_on_finish_does_not_lose_the_response(caplog: pytest.LogCaptureFixture) -> None:
    class Leaky(WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.set_body("done")
            return self.render()

        def on_finish(self) -> None:
            raise RuntimeError("could not release the connection")

    with caplog.at_level(logging.ERROR, logger="brubeck"):
        response = call(make_app((r"^/", Leaky)), "GET", "/")
    assert (response.status_code, response.body) == (200, b"done")
    assert any("could not release the connection" in str(record.exc_info and record.exc_info[1])
               for record in caplog.records)


def test_http_error_answers_with_its_status_and_message() -> None:
    class Forbidden(WebMessageHandler):
        def get(self) -> HTTPResponse:
            raise HTTPError(403, "Members only")

    response = call(make_app((r"^/", Forbidden)), "GET", "/")
    assert (response.status_code, response.status_msg, response.body) == (403, "Members only",
                                                                           b"403 Members only\n")
    assert header(response, "Content-Type") == ["text/plain; charset=utf-8"]


def test_a_malformed_form_body_is_a_400() -> None:
    class Form(WebMessageHandler):
        def post(self) -> HTTPResponse:
            self.set_body(self.get_argument("a") or "")
            return self.render()

    response = call(make_app((r"^/", Form)), "POST", "/",
                    {"content-type": "multipart/form-data; boundary=x"}, b"not multipart")
    assert response.status_code == 400


def test_head_runs_get_unless_the_handler_has_its_own_head() -> None:
    class Both(WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.set_body("from get")
            return self.render()

        def head(self) -> HTTPResponse:
            self.headers["X-From"] = "head"
            return self.render(status_code=200)

    assert call(make_app((r"^/hello$", Hello)), "HEAD", "/hello").status_code == 200
    own = call(make_app((r"^/both$", Both)), "HEAD", "/both")
    assert (own.status_code, header(own, "X-From")) == (200, ["head"])


def test_head_without_get_is_a_405() -> None:
    class PostOnly(WebMessageHandler):
        def post(self) -> HTTPResponse:
            return self.render()

    response = call(make_app((r"^/p$", PostOnly)), "HEAD", "/p")
    assert (response.status_code, header(response, "Allow")) == (405, ["POST"])


def test_a_method_the_handler_lacks_is_a_405_listing_what_it_has() -> None:
    response = call(make_app((r"^/hello$", Hello)), "DELETE", "/hello")
    assert response.status_code == 405
    assert header(response, "Allow") == ["GET, HEAD, POST"]


@pytest.mark.parametrize("method", ["RENDER", "REDIRECT", "INITIALIZE", "__INIT__", "SET_COOKIE", "FOO"])
def test_only_http_methods_are_dispatched_never_other_handler_attributes(method: str) -> None:
    assert call(make_app((r"^/hello$", Hello)), method, "/hello").status_code == 405


def test_redirect() -> None:
    class Moved(WebMessageHandler):
        def get(self) -> HTTPResponse:
            return self.redirect("/new?x=1")

        def post(self) -> HTTPResponse:
            return self.redirect("/elsewhere", status_code=303)

    app = make_app((r"^/", Moved))
    response = call(app, "GET", "/")
    assert (response.status_code, header(response, "Location"), response.body) == (302, ["/new?x=1"], b"")
    assert call(app, "POST", "/").status_code == 303


def test_a_redirect_to_a_url_with_a_newline_cannot_inject_headers() -> None:
    class Open(WebMessageHandler):
        def get(self) -> HTTPResponse:
            return self.redirect(self.get_argument("next", "/", strip=False) or "/")

    response = call(make_app((r"^/", Open)), "GET", "/?next=/x%0D%0ASet-Cookie:%20admin=1")
    assert response.status_code == 500
    assert header(response, "Location") == []
    assert header(response, "Set-Cookie") == []


def test_a_500_does_not_carry_what_the_failed_method_had_set() -> None:
    class HalfDone(WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.set_cookie("session", "granted")
            self.headers["X-Partial"] = "yes"
            raise RuntimeError("failed half way")

    response = call(make_app((r"^/", HalfDone)), "GET", "/")
    assert response.status_code == 500
    assert header(response, "Set-Cookie") == header(response, "X-Partial") == []


def test_headers_set_by_the_handler_are_sent_and_a_list_repeats_a_header() -> None:
    class Tagged(WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.set_body("{}", headers={"Content-Type": "application/vnd.x+json", "Vary": ["Accept", "Cookie"]})
            return self.render()

    response = call(make_app((r"^/", Tagged)), "GET", "/")
    assert header(response, "Content-Type") == ["application/vnd.x+json"]
    assert header(response, "Vary") == ["Accept", "Cookie"]


class Session(WebMessageHandler):
    """Sets a signed cookie on POST, reads it back on GET."""

    def post(self) -> HTTPResponse:
        self.set_cookie("session", {"user": "ann"}, secret=SECRET, httponly=True)
        self.set_cookie("theme", "dark")
        self.set_body("logged in")
        return self.render()

    def get(self) -> HTTPResponse:
        session = self.get_cookie("session", secret=SECRET)
        self.set_body(f"user={session['user'] if session else None} theme={self.get_cookie('theme')}")
        return self.render()

    def delete(self) -> HTTPResponse:
        self.delete_cookie("session")
        self.set_body("logged out")
        return self.render()


def cookie_header(response: HTTPResponse | TestResponse) -> str:
    """What a browser sends back after `response`: the name=value part of each Set-Cookie."""
    return "; ".join(cookie.split(";")[0] for cookie in header(response, "Set-Cookie"))


def test_a_signed_cookie_round_trip() -> None:
    app = make_app((r"^/", Session))
    login = call(app, "POST", "/")
    assert any("HttpOnly" in cookie for cookie in header(login, "Set-Cookie"))
    response = call(app, "GET", "/", {"cookie": cookie_header(login)})
    assert response.body == b"user=ann theme=dark"


def test_a_tampered_signed_cookie_is_ignored() -> None:
    app = make_app((r"^/", Session))
    sent = cookie_header(call(app, "POST", "/"))
    tampered = sent.replace("session=", "session=x", 1)
    assert call(app, "GET", "/", {"cookie": tampered}).body == b"user=None theme=dark"


def test_delete_cookie_expires_it() -> None:
    (cookie,) = header(call(make_app((r"^/", Session)), "DELETE", "/"), "Set-Cookie")
    assert cookie.startswith("session=")
    assert "Max-Age=0" in cookie
    assert "expires=Thu, 01 Jan 1970 00:00:00 GMT" in cookie


class Items(JSONMessageHandler):
    def get(self) -> HTTPResponse:
        self.add_to_payload("items", ["a", "b"])
        self.set_status(200)
        return self.render()

    def post(self) -> HTTPResponse:
        self.set_status(400, "No items today")
        return self.render(http_200=True)

    def put(self) -> HTTPResponse:
        raise HTTPError(409)


def json_body(response: HTTPResponse | TestResponse) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.json.decode(response.body)
    return body


def test_json_handler_sends_its_payload_with_status_and_timestamp() -> None:
    response = call(make_app((r"^/", Items)), "GET", "/")
    assert response.status_code == 200
    assert header(response, "Content-Type") == ["application/json"]
    body = json_body(response)
    assert isinstance(body.pop("timestamp"), int)
    assert body == {"items": ["a", "b"], "status_code": 200, "status_msg": "OK"}


def test_json_handler_http_200_keeps_the_real_status_in_the_payload() -> None:
    response = call(make_app((r"^/", Items)), "POST", "/")
    assert response.status_code == 200
    body = json_body(response)
    assert (body["status_code"], body["status_msg"]) == (400, "No items today")


def test_json_handler_errors_are_json_too() -> None:
    app = make_app((r"^/", Items))
    for method, status in (("PUT", 409), ("DELETE", 405)):
        response = call(app, method, "/")
        assert response.status_code == status
        assert header(response, "Content-Type") == ["application/json"]
        assert json_body(response)["status_code"] == status


class Service(MessageHandler):
    """A non-web handler, as brubeckservice builds them: render() is the payload, not HTTP."""

    SUPPORTED_METHODS = (*MessageHandler.SUPPORTED_METHODS, "request")
    _response_codes: ClassVar[dict[int, str]] = {**MessageHandler._response_codes, 7: "Seven"}

    def request(self) -> Any:
        self.add_to_payload("answer", 42)
        self.set_status(self._SUCCESS_CODE)
        return self.render()


def test_message_handler_render_returns_the_payload_with_its_status() -> None:
    payload = Service(make_app(), make_request("REQUEST", "/"))()
    assert isinstance(payload.pop("timestamp"), int)
    assert payload == {"answer": 42, "status_code": 0, "status_msg": "OK"}


def test_message_handler_answers_unsupported_methods_with_its_server_error() -> None:
    payload = Service(make_app(), make_request("GET", "/"))()
    assert (payload["status_code"], payload["status_msg"]) == (-5, "Method not supported")


def test_set_status_uses_the_handlers_own_texts_and_extra_text() -> None:
    handler = Service(make_app(), make_request("REQUEST", "/"))
    handler.set_status(7, extra_txt="more")
    assert handler.status_msg == "Seven - more"
    handler.set_status(-2)
    assert handler.status_msg == "Authentication failed"


def test_current_user_is_loaded_once_per_request() -> None:
    loads: list[int] = []

    class Profile(WebMessageHandler):
        def get_current_user(self) -> str:
            loads.append(1)
            return "ann"

        def get(self) -> HTTPResponse:
            self.set_body(f"{self.current_user} {self.current_user}")
            return self.render()

    assert call(make_app((r"^/", Profile)), "GET", "/").body == b"ann ann"
    assert loads == [1]


def test_handlers_get_the_application_db_conn() -> None:
    class UsesDb(WebMessageHandler):
        def get(self) -> HTTPResponse:
            self.set_body(str(self.db_conn["name"]))
            return self.render()

    assert call(make_app((r"^/", UsesDb), db_conn={"name": "the-db"}), "GET", "/").body == b"the-db"
