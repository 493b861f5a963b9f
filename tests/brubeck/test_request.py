"""The Request a handler sees (`self.message`), built from frames captured from a real Mongrel2."""

from __future__ import annotations

from pathlib import Path

import pytest

from brubeck.errors import ProtocolError
from brubeck.forms import UploadedFile
from brubeck.request import Request
from brubeck.wire.mongrel2 import HeaderValue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mongrel2"


def captured(name: str) -> Request:
    return Request.parse_msg((FIXTURES / f"{name}.bin").read_bytes())


def request(headers: dict[str, HeaderValue], body: bytes = b"", path: str = "/") -> Request:
    return Request("sender", "1", path, {"METHOD": "GET", **headers}, body)


def test_a_get_with_a_query() -> None:
    req = captured("get_query")
    assert (req.method, req.path, req.url, req.version) == ("GET", "/hello", "/hello?name=world&x=1&x=2",
                                                             "HTTP/1.1")
    assert req.sender == "54c6755b-9628-40dc-9a7d-5bc6e6a1f6f1"
    assert req.conn_id.isdigit()
    assert req.query_string == "name=world&x=1&x=2"
    assert req.arguments == {"name": ["world"], "x": ["1", "2"]}
    assert req.files == {}


def test_get_argument_gives_the_last_value_stripped_or_a_default() -> None:
    req = request({"QUERY": "x=1&x=2&pad=+padded+&e="})
    assert req.get_argument("x") == "2"
    assert req.get_arguments("x") == ["1", "2"]
    assert req.get_argument("pad") == "padded"
    assert req.get_argument("pad", strip=False) == " padded "
    assert req.get_arguments("pad", strip=False) == [" padded "]
    assert req.get_argument("missing") is None
    assert req.get_argument("missing", "fallback") == "fallback"
    assert req.get_arguments("missing") == []
    assert req.get_argument("e") == ""


def test_cookies_from_the_cookie_header() -> None:
    req = captured("get_query")
    assert req.cookies == {"session": "abc123", "theme": "dark"}
    assert req.get_cookie("theme") == "dark"
    assert req.get_cookie("missing", "none") == "none"


def test_a_repeated_header_arrives_as_a_list() -> None:
    assert captured("get_query").headers["x-custom"] == ["one", "two"]


def test_an_urlencoded_form() -> None:
    req = captured("post_form")
    assert req.method == "POST"
    assert req.content_type == "application/x-www-form-urlencoded"
    assert req.arguments == {"name": ["world"], "x": ["1", "2"], "message": ["hello there!"], "empty": [""]}


def test_a_multipart_form_with_a_file() -> None:
    req = captured("post_multipart")
    assert req.arguments == {"title": ["Hello, world"]}
    assert req.files == {"upload": [UploadedFile("hello.txt", "text/plain", b"first line\nsecond line\n")]}


def test_a_json_body_is_left_to_the_handler() -> None:
    req = captured("post_json")
    assert req.arguments == {}
    assert req.body == b'{"name": "world", "tags": ["a", "b"], "count": 2, "nested": {"ok": true}}'


def test_query_and_form_arguments_are_merged_query_first() -> None:
    req = request({"QUERY": "a=query", "content-type": "application/x-www-form-urlencoded"}, b"a=body&b=2")
    assert req.arguments == {"a": ["query", "body"], "b": ["2"]}
    assert req.get_argument("a") == "body"


def test_a_malformed_form_fails_only_when_read() -> None:
    req = request({"content-type": "multipart/form-data; boundary=x"}, b"garbage")
    assert req.method == "GET"  # building the request does not parse the body
    with pytest.raises(ProtocolError):
        req.arguments  # noqa: B018 - reading it is the test


@pytest.mark.parametrize(("name", "should_close"), [
    ("get_query", False),          # HTTP/1.1 keeps the connection open by default
    ("connection_close", True),
    ("http10_get", True),          # HTTP/1.0 closes unless it asked for keep-alive
])
def test_should_close_for_captured_requests(name: str, should_close: bool) -> None:
    assert captured(name).should_close() is should_close


@pytest.mark.parametrize(("version", "connection", "should_close"), [
    ("HTTP/1.0", "keep-alive", False),
    ("HTTP/1.0", "Keep-Alive", False),
    ("HTTP/1.1", "Close", True),
    ("HTTP/1.1", "keep-alive", False),
])
def test_should_close_follows_the_connection_header(version: str, connection: str, should_close: bool) -> None:
    assert request({"VERSION": version, "connection": connection}).should_close() is should_close


def test_a_disconnect_notice() -> None:
    for name in ("disconnect", "tnet_disconnect"):
        assert captured(name).is_disconnect()
    assert not captured("get_query").is_disconnect()


def test_the_two_halves_of_a_large_upload() -> None:
    start, done = captured("upload_start"), captured("upload_done")
    assert start.is_upload_start() and not start.is_upload_done()
    assert done.is_upload_done() and not done.is_upload_start()
    assert start.upload_path == done.upload_path
    assert done.upload_path is not None and done.upload_path.startswith("/tmp/upload.")
    assert captured("post_form").upload_path is None
    assert not captured("post_form").is_upload_start()


def test_tnetstring_headers_give_the_same_request() -> None:
    json_req, tnet_req = captured("get_query"), captured("tnet_get_query")
    assert (tnet_req.method, tnet_req.url, tnet_req.arguments, tnet_req.cookies) == (
        json_req.method, json_req.url, json_req.arguments, json_req.cookies)


@pytest.mark.parametrize(("headers", "remote_addr"), [
    ({"REMOTE_ADDR": "10.0.0.1"}, "10.0.0.1"),
    ({"REMOTE_ADDR": "10.0.0.1", "x-forwarded-for": "1.2.3.4"}, "1.2.3.4"),
    ({"REMOTE_ADDR": "10.0.0.1", "x-forwarded-for": "1.2.3.4, 10.0.0.2"}, "1.2.3.4"),
])
def test_remote_addr_prefers_the_first_forwarded_address(headers: dict[str, HeaderValue],
                                                         remote_addr: str) -> None:
    assert request(headers).remote_addr == remote_addr


def test_defaults_when_mongrel2_headers_are_missing() -> None:
    req = Request("s", "1", "/p", {}, b"")
    assert (req.method, req.version, req.url, req.query_string, req.arguments) == ("GET", "HTTP/1.1", "/p",
                                                                                   "", {})


def test_a_malformed_frame_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Request.parse_msg(b"not a mongrel2 frame")
