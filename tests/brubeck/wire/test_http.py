"""HTTP/1.1 response bytes: a golden table checked both ways, bytes -> parts -> bytes."""

from __future__ import annotations

import pytest

from brubeck.response import HTTPResponse, render
from brubeck.wire.http import HeaderInput, build_response, head_only, header_pairs, parse_response, status_phrase

Parts = tuple[int, str, list[tuple[str, str]], bytes]

# (status code, reason, headers as sent, body) <-> the exact response bytes.
RESPONSES: list[tuple[Parts, bytes]] = [
    ((200, "OK", [("Content-Type", "text/plain")], b"hello"),
     b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"),
    ((404, "Not Found", [], b""),
     b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    # A repeated header stays repeated, in order.
    ((200, "OK", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")], b"x"),
     b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 1\r\n\r\nx"),
    # A custom reason phrase, and a body that looks like headers.
    ((302, "Over There", [("Location", "/next")], b"\r\n\r\nA: b"),
     b"HTTP/1.1 302 Over There\r\nLocation: /next\r\nContent-Length: 8\r\n\r\n\r\n\r\nA: b"),
    # Bodies are bytes: any byte goes, and Content-Length counts bytes, not characters.
    ((200, "OK", [], "caf\u00e9".encode()),
     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ncaf\xc3\xa9"),
]


@pytest.mark.parametrize(("parts", "raw"), RESPONSES)
def test_response_parts_build_the_bytes(parts: Parts, raw: bytes) -> None:
    status_code, reason, headers, body = parts
    assert build_response(body, status_code, reason, headers) == raw


@pytest.mark.parametrize(("parts", "raw"), RESPONSES)
def test_response_bytes_parse_into_the_parts(parts: Parts, raw: bytes) -> None:
    status_code, reason, headers, body = parts
    assert parse_response(raw) == (status_code, reason, [*headers, ("Content-Length", str(len(body)))], body)


@pytest.mark.parametrize(("parts", "raw"), RESPONSES)
def test_http_response_object_is_the_bytes_and_keeps_the_parts(parts: Parts, raw: bytes) -> None:
    status_code, reason, headers, body = parts
    response = HTTPResponse(body, status_code, reason, headers)
    assert response == raw
    assert (response.status_code, response.status_msg, response.headers, response.body) == parts
    assert HTTPResponse.from_bytes(raw) == raw


@pytest.mark.parametrize(("parts", "raw"), RESPONSES)
def test_response_recovered_from_bytes_has_the_parts_without_a_second_content_length(
        parts: Parts, raw: bytes) -> None:
    response = HTTPResponse.from_bytes(raw)
    assert (response.status_code, response.status_msg, response.headers, response.body) == parts


def test_str_bodies_are_sent_as_utf8() -> None:
    assert build_response("caf\u00e9") == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ncaf\xc3\xa9"


def test_a_given_content_length_is_replaced_by_the_real_one() -> None:
    raw = build_response(b"abc", 200, "OK", {"Content-Length": "999"})
    assert raw == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    assert HTTPResponse(b"abc", 200, "OK", {"content-length": "999"}).headers == []


@pytest.mark.parametrize(("status_code", "phrase"), [
    (200, "OK"), (201, "Created"), (302, "Found"), (404, "Not Found"), (405, "Method Not Allowed"),
    (413, "Request Entity Too Large"), (500, "Internal Server Error"), (599, "Unknown"),
])
def test_default_reason_phrases(status_code: int, phrase: str) -> None:
    assert status_phrase(status_code) == phrase
    assert build_response(b"", status_code).startswith(f"HTTP/1.1 {status_code} {phrase}\r\n".encode())


@pytest.mark.parametrize(("headers", "pairs"), [
    (None, []),
    ({}, []),
    ({"A": "1", "B": "2"}, [("A", "1"), ("B", "2")]),
    ({"Set-Cookie": ["a=1", "b=2"], "X": "y"}, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X", "y")]),
    ([("A", "1"), ("A", "2")], [("A", "1"), ("A", "2")]),
])
def test_header_pairs_flatten_mappings_and_keep_pairs(headers: HeaderInput | None,
                                                      pairs: list[tuple[str, str]]) -> None:
    assert header_pairs(headers) == pairs


@pytest.mark.parametrize(("status_msg", "headers"), [
    ("OK\r\nX-Injected: 1", {}),
    (None, {"Location": "/next\r\nSet-Cookie: admin=1"}),
    (None, {"X-Bad\nName": "value"}),
])
def test_cr_or_lf_in_the_status_line_or_a_header_is_refused(status_msg: str | None,
                                                             headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        build_response(b"", 200, status_msg, headers)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",   # no blank line after the headers
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"",
])
def test_parse_response_refuses_what_is_not_an_http_response(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(raw)


def test_render_is_brubeck_04s_response_helper() -> None:
    response = render("hi", 201, "Made", {"X-A": "1"})
    assert response == b"HTTP/1.1 201 Made\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi"
    assert isinstance(response, HTTPResponse)


def test_head_only_keeps_the_status_line_and_headers_with_the_get_content_length() -> None:
    raw = build_response(b"hello", 200, None, {"Content-Type": "text/plain"})
    assert head_only(raw) == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    assert head_only(head_only(raw)) == head_only(raw)
