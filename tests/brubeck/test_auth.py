"""The authentication decorators: 401, or a redirect to the login page, unless there is a user."""

from __future__ import annotations

import msgspec

from brubeck.auth import authenticated, web_authenticated
from brubeck.handlers import JSONMessageHandler, WebMessageHandler
from brubeck.response import HTTPResponse
from tests.brubeck.inmemory import call, header, make_app

SECRET = "auth test secret"


class SessionUser(WebMessageHandler):
    """The user is whoever the signed `session` cookie names."""

    def get_current_user(self) -> str | None:
        user: str | None = self.get_cookie("session", secret=SECRET)
        return user


class Account(SessionUser):
    @authenticated
    def get(self) -> HTTPResponse:
        self.set_body(f"account of {self.current_user}")
        return self.render()


class Dashboard(SessionUser):
    @web_authenticated
    def get(self) -> HTTPResponse:
        self.set_body(f"dashboard of {self.current_user}")
        return self.render()


class Login(SessionUser):
    def post(self) -> HTTPResponse:
        self.set_cookie("session", self.get_argument("user"), secret=SECRET)
        self.set_body("welcome")
        return self.render()


def session_cookie(user: str) -> str:
    """The Cookie header a browser sends after logging in as `user`."""
    app = make_app((r"^/login$", Login))
    response = call(app, "POST", f"/login?user={user}")
    (cookie,) = header(response, "Set-Cookie")
    return cookie.split(";")[0]


def test_authenticated_refuses_a_request_without_a_user_with_401() -> None:
    response = call(make_app((r"^/", Account)), "GET", "/")
    assert response.status_code == 401


def test_authenticated_lets_a_logged_in_user_through() -> None:
    response = call(make_app((r"^/", Account)), "GET", "/", {"cookie": session_cookie("ann")})
    assert (response.status_code, response.body) == (200, b"account of ann")


def test_a_forged_session_is_no_user() -> None:
    forged = session_cookie("ann").replace("session=", "session=A", 1)
    assert call(make_app((r"^/", Account)), "GET", "/", {"cookie": forged}).status_code == 401
    unsigned = "session=ann"
    assert call(make_app((r"^/", Account)), "GET", "/", {"cookie": unsigned}).status_code == 401


def test_web_authenticated_redirects_to_the_login_url() -> None:
    response = call(make_app((r"^/", Dashboard), login_url="/login"), "GET", "/")
    assert (response.status_code, header(response, "Location")) == (302, ["/login"])


def test_web_authenticated_without_a_login_url_is_a_401() -> None:
    assert call(make_app((r"^/", Dashboard)), "GET", "/").status_code == 401


def test_web_authenticated_lets_a_logged_in_user_through() -> None:
    app = make_app((r"^/", Dashboard), login_url="/login")
    response = call(app, "GET", "/", {"cookie": session_cookie("bob")})
    assert (response.status_code, response.body) == (200, b"dashboard of bob")


def test_a_json_handler_refuses_with_a_json_401() -> None:
    class Api(JSONMessageHandler):
        @authenticated
        def get(self) -> HTTPResponse:
            return self.render(200)

    response = call(make_app((r"^/", Api)), "GET", "/")
    assert response.status_code == 401
    assert msgspec.json.decode(response.body)["status_code"] == 401


def test_the_decorators_keep_the_method_name() -> None:
    assert Account.get.__name__ == Dashboard.get.__name__ == "get"
