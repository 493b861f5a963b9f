"""Properties of cookies (brubeck/cookies.py), for inputs Hypothesis makes.

A Cookie header of any text parses into {name: value}, never an error; a value set with `format_set_cookie`
comes back from the Cookie header the browser echoes; `sign_value` and `unsign_value` are inverses; a
signed value changed anywhere is refused (None), never read as another value; and a value with a good MAC
over anything but what `sign_value` writes is refused too, never an exception. The examples in
test_cookies.py are the golden cases.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from brubeck.cookies import format_set_cookie, parse_cookie_header, sign_value, unsign_value
from tests.strategies import PROPERTIES, json_values, mutation, nested

SECRET = "a long random application secret"
NAME = "session"
RESERVED = {"expires", "path", "comment", "domain", "max-age", "secure", "httponly", "version", "samesite"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_payload(payload: bytes, name: str = NAME) -> str:
    """`payload`, whatever it holds, with a good MAC: the format the module docstring describes."""
    encoded = _b64(payload)
    return f"{encoded}.{_b64(hmac.new(SECRET.encode(), f'{name}|{encoded}'.encode(), hashlib.sha256).digest())}"


@PROPERTIES
@given(st.text())
@example('a="\\"; b="\\777"; c="\\')
@example('=x; a=="; b; c=""; d="\\073"')
def test_any_cookie_header_parses_into_text_pairs(header: str) -> None:
    cookies = parse_cookie_header(header)
    assert all(isinstance(name, str) and name and isinstance(value, str) for name, value in cookies.items())


def _not_reserved(name: str) -> bool:
    return name.lower() not in RESERVED


# A cookie name as http.cookies accepts one (RFC 6265 token), and not one of its attribute names.
cookie_names = st.from_regex(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,20}", fullmatch=True).filter(_not_reserved)


@PROPERTIES
@given(st.dictionaries(cookie_names, st.text(), min_size=1, max_size=4))
def test_values_set_come_back_in_the_cookie_header(cookies: dict[str, str]) -> None:
    # What a browser echoes is the `name=value` of each Set-Cookie, whatever quoting it needed, joined by "; ".
    header = "; ".join(format_set_cookie(name, value, path=None) for name, value in cookies.items())
    assert parse_cookie_header(header) == cookies


@PROPERTIES
@given(cookie_names, json_values)
def test_signed_values_unsign_to_the_same_value(name: str, value: Any) -> None:
    assert unsign_value(name, sign_value(name, value, SECRET), SECRET, max_age=3600) == value


@PROPERTIES
@given(st.data(), json_values)
def test_a_changed_signed_value_is_refused(data: st.DataObject, value: Any) -> None:
    signed = sign_value(NAME, {"value": value}, SECRET)
    changed = data.draw(mutation(signed.encode("ascii"))).decode("latin-1")
    if changed != signed:
        # A base64 character that differs only in bits past the end of the data decodes to the same bytes,
        # so "the same value" is allowed; another value never is.
        assert unsign_value(NAME, changed, SECRET) in (None, {"value": value})


@PROPERTIES
@given(cookie_names, st.text())
def test_any_text_unsigns_to_none_or_a_value(name: str, text: str) -> None:
    assert unsign_value(name, text, SECRET) is None


@PROPERTIES
@given(st.binary() | st.lists(st.just(NAME) | json_values, max_size=4).map(msgspec.json.encode))
@example(b'["session",1,"x"]')                      # issued is not a number (was TypeError)
@example(b'["session",' + nested(b"[", b"]") + b",1]")  # nested too deep (was RecursionError)
@example(b'{"a":1,"b":2,"c":3}')
@example(b'["session",1]')
def test_a_good_mac_over_anything_else_is_refused_not_raised(payload: bytes) -> None:
    value = unsign_value(NAME, signed_payload(payload), SECRET, max_age=3600)
    assert value is None or unsign_value(NAME, sign_value(NAME, value, SECRET), SECRET) == value
