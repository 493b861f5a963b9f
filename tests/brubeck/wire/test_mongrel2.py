"""The Mongrel2 handler protocol, checked both ways against frames captured from a real Mongrel2.

Golden tables in the style of h11's tests/test_io.py: every row is checked bytes -> value and value ->
bytes, so a parser and a builder that drift apart fail here rather than against a live server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

import pytest

from brubeck.errors import ProtocolError
from brubeck.wire.mongrel2 import (
    MAX_REPLY_TARGETS,
    HeaderValue,
    Mongrel2Message,
    build_message,
    build_reply,
    build_request_headers,
    header,
    parse_message,
    parse_reply,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mongrel2"
SENDER = "54c6755b-9628-40dc-9a7d-5bc6e6a1f6f1"


# What a re-capture changes: the connection id Mongrel2 assigned, the port the capture served HTTP on and
# the name mkstemp gave an upload. Rows say ID, HOST and UPLOAD there; `captured` fills them in from the
# frame's own bytes, so every other byte of every row is still compared literally.
ID = "<connection id>"
HOST = "127.0.0.1:<port>"
UPLOAD = "/tmp/upload.<XXXXXX>"
_HOST_PORT = re.compile(rb'host(?:":"|,\d+:)127\.0\.0\.1:(\d+)')
_UPLOAD_FILE = re.compile(rb"/tmp/upload\.\w{6}")


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def captured(name: str, message: Mongrel2Message) -> tuple[bytes, Mongrel2Message]:
    """The fixture's bytes, and `message` with its ID, HOST and UPLOAD placeholders filled in from them."""
    raw = fixture(name)
    headers = dict(message.headers)
    if headers.get("host") == HOST:
        port = _HOST_PORT.search(raw)
        assert port is not None, f"{name}.bin has no host header"
        headers["host"] = f"127.0.0.1:{port[1].decode()}"
    for key in ("x-mongrel2-upload-start", "x-mongrel2-upload-done"):
        if headers.get(key) == UPLOAD:
            upload = _UPLOAD_FILE.search(raw)
            assert upload is not None, f"{name}.bin has no upload file name"
            headers[key] = upload[0].decode()
    conn_id = raw.split(b" ", 2)[1].decode()
    return raw, dataclasses.replace(message, conn_id=conn_id, headers=headers)


MULTIPART_BODY = (
    b"------brubeckfixtureboundary7MA4YWxkTrZu0gW\r\n"
    b'Content-Disposition: form-data; name="title"\r\n'
    b"\r\n"
    b"Hello, world\r\n"
    b"------brubeckfixtureboundary7MA4YWxkTrZu0gW\r\n"
    b'Content-Disposition: form-data; name="upload"; filename="hello.txt"\r\n'
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"first line\nsecond line\n\r\n"
    b"------brubeckfixtureboundary7MA4YWxkTrZu0gW--\r\n"
)

# Each captured frame and the message it holds, exactly (header order included: it is part of the bytes).
CAPTURED: list[tuple[str, Mongrel2Message]] = [
    ("get_query", Mongrel2Message(SENDER, ID, "/hello", {
        "PATH": "/hello", "x-forwarded-for": "127.0.0.1", "accept": "*/*",
        "user-agent": "brubeck-capture/1.0", "host": HOST, "x-custom": ["one", "two"],
        "cookie": "session=abc123; theme=dark", "METHOD": "GET", "VERSION": "HTTP/1.1",
        "URI": "/hello?name=world&x=1&x=2", "QUERY": "name=world&x=1&x=2", "PATTERN": "/",
        "URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1",
    })),
    ("post_form", Mongrel2Message(SENDER, ID, "/form", {
        "PATH": "/form", "x-forwarded-for": "127.0.0.1", "content-type": "application/x-www-form-urlencoded",
        "content-length": "48", "host": HOST, "METHOD": "POST", "VERSION": "HTTP/1.1",
        "URI": "/form", "PATTERN": "/", "URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1",
    }, b"name=world&x=1&x=2&message=hello+there%21&empty=")),
    ("post_multipart", Mongrel2Message(SENDER, ID, "/upload", {
        "PATH": "/upload", "x-forwarded-for": "127.0.0.1",
        "content-type": "multipart/form-data; boundary=----brubeckfixtureboundary7MA4YWxkTrZu0gW",
        "content-length": "321", "host": HOST, "METHOD": "POST", "VERSION": "HTTP/1.1",
        "URI": "/upload", "PATTERN": "/", "URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1",
    }, MULTIPART_BODY)),
    ("post_json", Mongrel2Message(SENDER, ID, "/api/items", {
        "PATH": "/api/items", "x-forwarded-for": "127.0.0.1", "content-type": "application/json",
        "content-length": "73", "accept": "application/json", "host": HOST, "METHOD": "POST",
        "VERSION": "HTTP/1.1", "URI": "/api/items", "PATTERN": "/", "URL_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
    }, b'{"name": "world", "tags": ["a", "b"], "count": 2, "nested": {"ok": true}}')),
    ("http10_get", Mongrel2Message(SENDER, ID, "/legacy", {
        "PATH": "/legacy", "x-forwarded-for": "127.0.0.1", "host": HOST, "METHOD": "GET",
        "VERSION": "HTTP/1.0", "URI": "/legacy?v=1", "QUERY": "v=1", "PATTERN": "/", "URL_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
    })),
    ("connection_close", Mongrel2Message(SENDER, ID, "/bye", {
        "PATH": "/bye", "x-forwarded-for": "127.0.0.1", "connection": "close", "host": HOST,
        "METHOD": "GET", "VERSION": "HTTP/1.1", "URI": "/bye", "PATTERN": "/", "URL_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
    })),
    ("disconnect", Mongrel2Message(SENDER, ID, "@*", {"METHOD": "JSON"}, b'{"type":"disconnect"}')),
    ("upload_start", Mongrel2Message(SENDER, ID, "/big", {
        "PATH": "/big", "x-forwarded-for": "127.0.0.1", "content-type": "application/octet-stream",
        "content-length": "4096", "host": HOST, "x-mongrel2-upload-start": UPLOAD,
        "METHOD": "POST", "VERSION": "HTTP/1.1", "URI": "/big", "PATTERN": "/", "URL_SCHEME": "http",
        "REMOTE_ADDR": "127.0.0.1",
    })),
    ("upload_done", Mongrel2Message(SENDER, ID, "/big", {
        "PATH": "/big", "x-forwarded-for": "127.0.0.1", "x-mongrel2-upload-done": UPLOAD,
        "content-type": "application/octet-stream", "content-length": "4096", "host": HOST,
        "x-mongrel2-upload-start": UPLOAD, "METHOD": "POST", "VERSION": "HTTP/1.1",
        "URI": "/big", "PATTERN": "/", "URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1",
    })),
    # Handler(protocol='tnetstring'): the same request, headers as a tnetstring dict in Mongrel2's order.
    ("tnet_get_query", Mongrel2Message(SENDER, ID, "/hello", {
        "REMOTE_ADDR": "127.0.0.1", "METHOD": "GET", "URL_SCHEME": "http", "PATTERN": "/",
        "QUERY": "name=world&x=1&x=2", "URI": "/hello?name=world&x=1&x=2", "VERSION": "HTTP/1.1",
        "PATH": "/hello", "cookie": "session=abc123; theme=dark", "x-custom": ["one", "two"],
        "host": HOST, "user-agent": "brubeck-capture/1.0", "accept": "*/*",
        "x-forwarded-for": "127.0.0.1",
    }, protocol="tnetstring")),
    ("tnet_disconnect", Mongrel2Message(SENDER, ID, "@*", {"METHOD": "JSON"}, b'{"type":"disconnect"}',
                                        protocol="tnetstring")),
]

# Hand-written frames for shapes the captures do not show.
SYNTHETIC: list[tuple[bytes, Mongrel2Message]] = [
    # A body holding the separators of the framing itself: spaces, commas, colons, digits.
    (b'S 1 / 16:{"METHOD":"PUT"},11:1:2, 3 ,4:5,',
     Mongrel2Message("S", "1", "/", {"METHOD": "PUT"}, b"1:2, 3 ,4:5")),
    (b"S 42 /x 25:6:METHOD,6:DELETE,1:a,0:,}0:,",
     Mongrel2Message("S", "42", "/x", {"METHOD": "DELETE", "a": ""}, protocol="tnetstring")),
    (b'S 1 /caf\xc3\xa9 25:{"METHOD":"GET","a":"\xc3\xa9"},0:,',
     Mongrel2Message("S", "1", "/caf\u00e9", {"METHOD": "GET", "a": "\u00e9"})),
]


@pytest.mark.parametrize(("name", "message"), CAPTURED, ids=[name for name, _ in CAPTURED])
def test_captured_frame_parses_to_message(name: str, message: Mongrel2Message) -> None:
    raw, expected = captured(name, message)
    assert parse_message(raw) == expected


@pytest.mark.parametrize(("name", "message"), CAPTURED, ids=[name for name, _ in CAPTURED])
def test_message_builds_captured_frame(name: str, message: Mongrel2Message) -> None:
    raw, expected = captured(name, message)
    assert build_message(expected) == raw


@pytest.mark.parametrize(("raw", "message"), SYNTHETIC)
def test_synthetic_frame_round_trips(raw: bytes, message: Mongrel2Message) -> None:
    assert parse_message(raw) == message
    assert build_message(message) == raw


@pytest.mark.parametrize("raw", [
    # Mongrel2 copies header bytes as the client sent them, in either protocol: a latin-1 value arrives raw.
    b'S 1 / 27:{"METHOD":"GET","a":"caf\xe9"},0:,',
    b"S 1 / 26:6:METHOD,3:GET,1:a,4:caf\xe9,}0:,",
], ids=["json", "tnetstring"])
def test_header_bytes_that_are_not_utf8_are_read_as_latin1(raw: bytes) -> None:
    assert parse_message(raw).headers == {"METHOD": "GET", "a": "caf\u00e9"}


@pytest.mark.parametrize("name", ["disconnect", "tnet_disconnect"])
def test_disconnect_notices_are_recognised_in_both_protocols(name: str) -> None:
    assert parse_message(fixture(name)).is_disconnect()


@pytest.mark.parametrize("name", [name for name, _ in CAPTURED if "disconnect" not in name])
def test_requests_are_not_disconnect_notices(name: str) -> None:
    assert not parse_message(fixture(name)).is_disconnect()


@pytest.mark.parametrize(("name", "method"), [("get_query", "GET"), ("post_form", "POST"),
                                              ("tnet_get_query", "GET"), ("disconnect", "JSON")])
def test_method_comes_from_the_method_header(name: str, method: str) -> None:
    assert parse_message(fixture(name)).method == method


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("no netstrings", b"S 1 /"),
    ("no path", b"S 1"),
    ("empty sender", b' 1 / 2:{},0:,'),
    ("non-numeric id", b"S abc / 2:{},0:,"),
    ("negative id", b"S -1 / 2:{},0:,"),
    ("empty path", b"S 1  2:{},0:,"),
    ("header length too long", b"S 1 / 99:{},0:,"),
    ("header length not a number", b"S 1 / x:{},0:,"),
    ("header netstring unterminated", b"S 1 / 2:{}0:,"),
    ("no body netstring", b"S 1 / 2:{},"),
    ("body length too long", b"S 1 / 2:{},5:ab,"),
    ("trailing bytes", b"S 1 / 2:{},0:,extra"),
    ("headers are invalid json", b"S 1 / 2:{x,0:,"),
    ("headers are a json array", b"S 1 / 2:[],0:,"),
    ("headers are a tnetstring list", b"S 1 / 4:1:a,]0:,"),
    ("headers are a tnetstring integer", b"S 1 / 1:7#0:,"),
    ("body is a tnetstring dict", b"S 1 / 2:{},0:}"),
    ("headers are invalid json that is not utf-8", b'S 1 / 7:{"a":\xff},0:,'),
]


@pytest.mark.parametrize("raw", [raw for _, raw in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_malformed_frames_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_message(raw)


@pytest.mark.parametrize("name", ["get_query", "post_multipart", "tnet_get_query"])
def test_every_truncation_of_a_frame_is_a_protocol_error(name: str) -> None:
    raw = fixture(name)
    for end in range(len(raw)):
        with pytest.raises(ProtocolError):
            parse_message(raw[:end])


@pytest.mark.parametrize("name", ["get_query", "tnet_get_query"])
def test_a_corrupted_byte_anywhere_never_raises_anything_but_protocol_error(name: str) -> None:
    raw = fixture(name)
    for index in range(len(raw)):
        for junk in (b"\xff", b":", b","):
            with contextlib.suppress(ProtocolError):
                parse_message(raw[:index] + junk + raw[index + 1:])


# Replies: (sender, connection ids, body) <-> the frame Mongrel2 reads.
REPLIES: list[tuple[str, list[str], bytes, bytes]] = [
    (SENDER, ["7"], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
     SENDER.encode() + b" 1:7, HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    # An empty body is Mongrel2's "close these connections".
    ("S", ["1", "22", "333"], b"", b"S 8:1 22 333, "),
    # The body is raw, not a netstring: its own spaces and commas are not framing.
    ("S", ["5"], b"a, b 3:c,", b"S 1:5, a, b 3:c,"),
]


@pytest.mark.parametrize(("sender", "conn_ids", "body", "raw"), REPLIES)
def test_reply_frames_round_trip(sender: str, conn_ids: list[str], body: bytes, raw: bytes) -> None:
    assert build_reply(sender, conn_ids, body) == raw
    assert parse_reply(raw) == (sender, conn_ids, body)


def test_reply_accepts_integer_ids_and_a_bytes_sender() -> None:
    assert build_reply(b"S", [1, 2], b"x") == b"S 3:1 2, x"


def test_reply_to_the_target_limit_is_allowed_and_one_more_is_refused() -> None:
    ids = [str(n) for n in range(MAX_REPLY_TARGETS)]
    assert parse_reply(build_reply("S", ids, b"x"))[1] == ids
    with pytest.raises(ValueError, match="at most"):
        build_reply("S", [*ids, "999"], b"x")


def test_reply_needs_a_connection_id() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_reply("S", [], b"x")


@pytest.mark.parametrize("raw", [b"S", b"S 3:1 2 x", b"S 3:1 2,x", b"S 1:1,"])
def test_malformed_reply_frames_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_reply(raw)


HEADERS: dict[str, HeaderValue] = {"METHOD": "GET", "x-custom": ["one", "two"], "host": "example.com", "empty": []}


@pytest.mark.parametrize(("name", "default", "expected"), [
    ("METHOD", "", "GET"),
    ("Host", "", "example.com"),      # not found as given, found lowercased
    ("x-custom", "", "two"),          # a repeated header: the last value
    ("empty", "none", "none"),        # a repeated header with no values
    ("missing", "fallback", "fallback"),
])
def test_header_lookup(name: str, default: str, expected: str) -> None:
    assert header(HEADERS, name, default) == expected


DERIVED = ("PATH", "METHOD", "VERSION", "URI", "QUERY", "REMOTE_ADDR", "URL_SCHEME")


@pytest.mark.parametrize(("name", "message"), [(n, m) for n, m in CAPTURED if "disconnect" not in n],
                         ids=[n for n, _ in CAPTURED if "disconnect" not in n])
def test_built_request_headers_are_what_a_real_mongrel2_derives(name: str, message: Mongrel2Message) -> None:
    real = message.headers
    built = build_request_headers(str(real["METHOD"]), str(real["URI"]), version=str(real["VERSION"]),
                                  remote_addr=str(real["REMOTE_ADDR"]), url_scheme=str(real["URL_SCHEME"]))
    assert built == {key: real[key] for key in DERIVED if key in real}


def test_built_request_headers_take_the_clients_headers_after_the_derived_ones() -> None:
    assert build_request_headers("GET", "/a?b=1", {"host": "x", "QUERY": "forced"}) == {
        "PATH": "/a", "METHOD": "GET", "VERSION": "HTTP/1.1", "URI": "/a?b=1", "QUERY": "forced", "host": "x"}


def test_headers_nested_too_deep_are_a_protocol_error_in_both_protocols() -> None:
    deep_json = b'{"A":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ProtocolError, match="recursion"):
        parse_message(b"S 1 / %d:%s,0:," % (len(deep_json), deep_json))
    for depth in (900, 3_000, 5_000):  # (tnetstring3 refuses some depths itself; Python recursion fails others)
        deep_tnet = b"0:]"
        for _ in range(depth):
            deep_tnet = b"%d:%s]" % (len(deep_tnet), deep_tnet)
        headers = b"%d:%s%s}" % (len(b"1:A,") + len(deep_tnet), b"1:A,", deep_tnet)
        with pytest.raises(ProtocolError, match=r"recursion|nesting|header"):
            parse_message(b"S 1 / %s0:," % headers)
