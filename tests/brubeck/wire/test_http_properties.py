"""Properties of HTTP response bytes (brubeck/wire/http.py), for inputs Hypothesis makes.

`build_response` and `parse_response` are inverses. The bytes `parse_response` reads come from a handler,
not from the wire, so what it refuses is the application's bug and a `ValueError`, never another exception.
The golden table is in test_http.py.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from brubeck.wire.http import build_response, parse_response
from tests.strategies import PROPERTIES, mutated


def _not_content_length(name: str) -> bool:
    return name.lower() != "content-length"  # (build_response writes its own)


def _stripped(value: str) -> bool:
    return value == value.strip()


# RFC 9110 5.6.2: a header name is a token; a value (as parse_response strips it) has no CR, LF or edge spaces.
tokens = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}", fullmatch=True).filter(_not_content_length)
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cc", "Cs")), max_size=40)
header_values = line_text.filter(_stripped)
SAMPLE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\n\r\nhello"


@PROPERTIES
@given(st.integers(100, 999), line_text.filter(bool), st.lists(st.tuples(tokens, header_values), max_size=5),
       st.binary())
def test_built_responses_parse_back_into_their_parts(status: int, reason: str, headers: list[tuple[str, str]],
                                                     body: bytes) -> None:
    raw = build_response(body, status, reason, headers)
    assert parse_response(raw) == (status, reason, [*headers, ("Content-Length", str(len(body)))], body)


@PROPERTIES
@given(st.binary() | mutated([SAMPLE]))
@example("HTTP/1.1 \u00b2 OK\r\n\r\n".encode())    # a digit int() does not read
@example("HTTP/1.1 \u0661\u0660\u0660 OK\r\n\r\n".encode())  # digits int() reads, but not HTTP's
def test_any_bytes_parse_into_parts_or_raise_value_error(raw: bytes) -> None:
    try:
        parse_response(raw)
    except ValueError:
        return
    assert raw.split(b"\r\n", 1)[0].split(b" ")[1].isdigit()  # (bytes.isdigit: ASCII digits only)
