"""What the sample application must do the same way over both web transports: behind a real Mongrel2
(Mongrel2Connection) and over WSGI (WSGIConnection), with real HTTP clients.

Transport-specific behaviour (connection handling, frames, uploads spooled by Mongrel2, the WSGI environ)
is tested in test_mongrel2_integration.py and test_wsgi.py.
"""

from __future__ import annotations

import pytest

from tests.brubeck.http_client import fetch
from tests.brubeck.sample_app import Running


@pytest.fixture(params=[pytest.param("behind_mongrel2", marks=pytest.mark.mongrel2), "over_wsgi"])
def served(request: pytest.FixtureRequest) -> Running:
    """The sample application behind a real Mongrel2, then over WSGI."""
    running: Running = request.getfixturevalue(request.param)
    return running


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


def test_a_method_not_served_is_a_405_with_allow(served: Running) -> None:
    by_handler = fetch("DELETE", f"{served.url}/readonly")
    assert (by_handler.status_code, by_handler.headers["Allow"]) == (405, "GET")
    by_route = fetch("GET", f"{served.url}/submit")
    assert (by_route.status_code, by_route.headers["Allow"]) == (405, "POST")
    assert fetch("POST", f"{served.url}/submit").status_code == 201


def test_a_raising_handler_is_a_500_and_the_next_request_is_served(served: Running) -> None:
    assert fetch("GET", f"{served.url}/boom").status_code == 500
    assert fetch("GET", f"{served.url}/hello").text == "hello world"
