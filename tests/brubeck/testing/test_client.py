"""TestClient: the sample application called in-process answers as it does over a real transport."""

from __future__ import annotations

import pytest

from brubeck.connections import WSGIConnection
from brubeck.testing import NoResponse, TestClient
from tests.brubeck.http_client import fetch
from tests.brubeck.sample_app import build_app, serve_wsgi


@pytest.fixture
def client() -> TestClient:
    # A connection that is never started: TestClient needs no socket.
    return TestClient(build_app(WSGIConnection(port=0, max_body_size=1024)))


def test_get_with_a_query(client: TestClient) -> None:
    response = client.get("/hello?name=kit")
    assert (response.status_code, response.text, response.header("content-type")) == (200, "hello kit",
                                                                                     "text/plain")


def test_a_form_and_json_reach_the_handler_as_a_transport_gives_them(client: TestClient) -> None:
    seen = client.post("/echo?from=query", data={"x": ["1", "2"], "msg": "hi there!"}).json()
    assert seen["arguments"] == {"from": ["query"], "x": ["1", "2"], "msg": ["hi there!"]}
    assert (seen["method"], seen["path"], seen["version"]) == ("POST", "/echo", "HTTP/1.1")


def test_cookies_set_by_the_app_are_sent_back_and_a_jarless_client_sends_none(client: TestClient) -> None:
    assert (client.post("/login", data={"user": "ann"}).header("Set-Cookie") or "").startswith("session=")
    assert client.get("/me").text == "you are ann"
    assert TestClient(client.app, cookies=False).get("/me").status_code == 401


def test_errors_are_answered_as_the_transports_answer_them(client: TestClient) -> None:
    assert client.get("/nowhere").status_code == 404
    not_allowed = client.delete("/readonly")
    assert (not_allowed.status_code, not_allowed.header("Allow")) == (405, "GET, HEAD")
    assert client.get("/boom").status_code == 500
    assert client.get("/not-http").status_code == 500  # a route returning no HTTP response
    assert client.post("/echo", body=b"x" * 2048).status_code == 413  # over the connection's max_body_size


def test_head_is_get_without_the_body(client: TestClient) -> None:
    head, get = client.head("/readonly"), client.get("/readonly")
    assert (head.status_code, head.body, head.header("Content-Length")) == (200, b"", str(len(get.body)))


def test_a_redirect_is_returned_not_followed(client: TestClient) -> None:
    response = client.get("/old")
    assert (response.status_code, response.header("Location")) == (302, "/hello?name=redirected")


def test_a_deferred_reply_needs_a_real_transport(client: TestClient) -> None:
    with pytest.raises(NoResponse, match="GET /deferred: the handler returned None"):
        client.get("/deferred")


@pytest.mark.parametrize("target", ["/hello?name=same", "/readonly", "/nowhere", "/old", "/boom"])
def test_the_answer_is_the_one_a_real_wsgi_transport_gives(client: TestClient, target: str) -> None:
    with serve_wsgi() as served:
        real = fetch("GET", f"{served.url}{target}")
    kit = client.get(target)
    assert (kit.status_code, kit.body) == (real.status_code, real.content)
    assert kit.header("Content-Type") == real.headers.get("Content-Type")
