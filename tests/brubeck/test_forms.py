"""Query strings and form bodies (urlencoded and multipart) into arguments and files."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from brubeck.errors import ProtocolError
from brubeck.forms import Arguments, Files, UploadedFile, parse_body, parse_query

QUERIES: list[tuple[str, Arguments]] = [
    ("", {}),
    ("a=1", {"a": ["1"]}),
    ("a=1&a=2&b=3", {"a": ["1", "2"], "b": ["3"]}),
    ("empty=&bare", {"empty": [""], "bare": [""]}),           # blank values are kept, not dropped
    ("msg=hello+there%21&q=%C3%A9", {"msg": ["hello there!"], "q": ["\u00e9"]}),
    ("a=1;b=2", {"a": ["1;b=2"]}),                             # only '&' separates (Python >= 3.10)
]


@pytest.mark.parametrize(("query", "arguments"), QUERIES)
def test_parse_query(query: str, arguments: Arguments) -> None:
    assert parse_query(query) == arguments
    assert parse_query(query.encode()) == arguments


@pytest.mark.parametrize("arguments", [
    {"a": ["1", "2"], "b": [""]},
    {"name": ["caf\u00e9 & cr\u00e8me"], "sym": ["=&?#+ %"]},
])
def test_what_urlencode_writes_parses_back(arguments: Arguments) -> None:
    assert parse_query(urlencode(arguments, doseq=True)) == arguments


def test_parse_query_adds_to_existing_arguments() -> None:
    arguments: Arguments = {"a": ["from query"]}
    assert parse_query("a=from+body&b=2", into=arguments) is arguments
    assert arguments == {"a": ["from query", "from body"], "b": ["2"]}


def test_a_query_that_is_not_utf8_does_not_fail() -> None:
    assert parse_query(b"a=\xff") == {"a": ["\ufffd"]}


BOUNDARY = "----brubeckfixtureboundary7MA4YWxkTrZu0gW"
# The body a real browser-style client sent through Mongrel2 (tests/fixtures/mongrel2/post_multipart.bin).
MULTIPART = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="title"\r\n'
    "\r\n"
    "Hello, world\r\n"
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="upload"; filename="hello.txt"\r\n'
    "Content-Type: text/plain\r\n"
    "\r\n"
    "first line\nsecond line\n\r\n"
    f"--{BOUNDARY}--\r\n"
).encode()


def multipart(*parts: tuple[str, str | None, str | None, bytes], boundary: str = "XyZ") -> bytes:
    """A multipart/form-data body from (name, filename, content type, data) parts."""
    chunks = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


def parsed(content_type: str, body: bytes) -> tuple[Arguments, Files]:
    arguments: Arguments = {}
    files: Files = {}
    parse_body(content_type, body, arguments, files)
    return arguments, files


def test_urlencoded_form() -> None:
    body = b"name=world&x=1&x=2&message=hello+there%21&empty="
    assert parsed("application/x-www-form-urlencoded", body) == (
        {"name": ["world"], "x": ["1", "2"], "message": ["hello there!"], "empty": [""]}, {})


def test_media_type_is_matched_without_case_and_parameters() -> None:
    assert parsed("Application/X-WWW-Form-URLEncoded; charset=UTF-8", b"a=1") == ({"a": ["1"]}, {})


def test_multipart_form_from_a_real_client() -> None:
    arguments, files = parsed(f"multipart/form-data; boundary={BOUNDARY}", MULTIPART)
    assert arguments == {"title": ["Hello, world"]}
    assert files == {"upload": [UploadedFile("hello.txt", "text/plain", b"first line\nsecond line\n")]}


def test_multipart_file_bytes_are_kept_exactly() -> None:
    # Near misses of the delimiter (RFC 2046 lets only "CRLF--XyZ" end a part) and every byte value.
    data = bytes(range(256)) * 4 + b"x--XyZ\r\n-XyZ\r\n\r\n"
    _, files = parsed("multipart/form-data; boundary=XyZ",
                      multipart(("blob", "b.bin", "application/x-thing", data)))
    assert files["blob"][0].body == data


def test_multipart_repeated_fields_and_files_and_a_default_content_type() -> None:
    body = multipart(("tag", None, None, b"a"), ("tag", None, None, "\u00e9".encode()),
                     ("doc", "1.txt", None, b"one"), ("doc", "2.txt", "text/plain", b"two"))
    arguments, files = parsed("multipart/form-data; boundary=XyZ", body)
    assert arguments == {"tag": ["a", "\u00e9"]}
    assert files == {"doc": [UploadedFile("1.txt", "application/octet-stream", b"one"),
                             UploadedFile("2.txt", "text/plain", b"two")]}


def test_multipart_fields_add_to_existing_arguments() -> None:
    arguments: Arguments = {"title": ["from query"]}
    parse_body(f"multipart/form-data; boundary={BOUNDARY}", MULTIPART, arguments, {})
    assert arguments == {"title": ["from query", "Hello, world"]}


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data", MULTIPART),                                     # no boundary
    (f"multipart/form-data; boundary={BOUNDARY}", MULTIPART[:-20]),         # cut short
    ("multipart/form-data; boundary=other", MULTIPART),                     # boundary not in the body
    ("multipart/form-data; boundary=XyZ", b"not multipart at all"),
])
def test_malformed_multipart_is_a_protocol_error(content_type: str, body: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        parsed(content_type, body)
    assert raised.value.status_code == 400


@pytest.mark.parametrize(("content_type", "body"), [
    ("application/json", b'{"a": 1}'),
    ("text/plain", b"a=1"),
    ("", b"a=1"),
    ("application/x-www-form-urlencoded", b""),
])
def test_bodies_that_are_not_forms_add_nothing(content_type: str, body: bytes) -> None:
    assert parsed(content_type, body) == ({}, {})


def test_uploaded_file_reads_like_brubeck_04s_dict() -> None:
    upload = UploadedFile("a.txt", "text/plain", b"data")
    assert (upload["filename"], upload["content_type"], upload["body"]) == ("a.txt", "text/plain", b"data")
    with pytest.raises(KeyError):
        upload["__class__"]
