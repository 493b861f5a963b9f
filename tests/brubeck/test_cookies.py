"""Cookie headers both ways, and signed cookie values that cannot be forged, replayed or pickled."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from brubeck.cookies import format_set_cookie, parse_cookie_header, sign_value, unsign_value

SECRET = "a long random application secret"

COOKIE_HEADERS: list[tuple[str, dict[str, str]]] = [
    ("", {}),
    ("session=abc123", {"session": "abc123"}),
    ("session=abc123; theme=dark", {"session": "abc123", "theme": "dark"}),
    ("a=1;b=2", {"a": "1", "b": "2"}),
    ('quoted="x y"', {"quoted": "x y"}),
    ("signed=eyJhIjoxfQ.c2ln-_", {"signed": "eyJhIjoxfQ.c2ln-_"}),
]

# Browsers send whatever any site on the domain set; one bad pair must not hide the others.
MALFORMED_COOKIE_HEADERS: list[tuple[str, dict[str, str]]] = [
    ('prefs={"x": 1}; session=abc', {"session": "abc"}),
    ("bad name=1; session=abc", {"session": "abc"}),
    ("session=abc; novalue; theme=dark", {"session": "abc", "theme": "dark"}),
    ("session=abc;; theme=dark", {"session": "abc", "theme": "dark"}),
    ("=orphan; session=abc", {"session": "abc"}),
]


@pytest.mark.parametrize(("header", "expected"), COOKIE_HEADERS)
def test_parse_cookie_header(header: str, expected: dict[str, str]) -> None:
    assert parse_cookie_header(header) == expected


@pytest.mark.parametrize(("header", "expected"), MALFORMED_COOKIE_HEADERS)
def test_a_malformed_pair_loses_only_itself(header: str, expected: dict[str, str]) -> None:
    cookies_read = parse_cookie_header(header)
    assert {name: cookies_read.get(name) for name in expected} == expected


@pytest.mark.parametrize("value", ["plain", "with space", 'a;b,c"d\\e', "caf\u00e9", ""])
def test_a_value_set_comes_back_in_the_cookie_header(value: str) -> None:
    # What the browser echoes is the `name=value` part of Set-Cookie, whatever quoting it needed.
    set_cookie = format_set_cookie("c", value)
    assert parse_cookie_header(set_cookie.split("; Path=")[0]) == {"c": value}


SET_COOKIES: list[tuple[dict[str, Any], str]] = [
    ({}, "c=v; Path=/"),
    ({"path": None}, "c=v"),
    ({"path": "/app", "domain": "example.com"}, "c=v; Domain=example.com; Path=/app"),
    ({"max_age": 3600, "secure": True, "httponly": True, "samesite": "Lax"},
     "c=v; HttpOnly; Max-Age=3600; Path=/; SameSite=Lax; Secure"),
    ({"expires": datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)}, "c=v; expires=Wed, 02 Jan 2030 03:04:05 GMT; Path=/"),
]


@pytest.mark.parametrize(("options", "expected"), SET_COOKIES)
def test_format_set_cookie(options: dict[str, Any], expected: str) -> None:
    assert format_set_cookie("c", "v", **options) == expected


@pytest.mark.parametrize("value", ["user-42", 42, 4.5, True, None, ["a", 1], {"id": 7, "roles": ["admin"]},
                                   "caf\u00e9"])
def test_signed_values_round_trip(value: Any) -> None:
    assert unsign_value("session", sign_value("session", value, SECRET), SECRET) == value


def test_a_signed_value_needs_no_quoting_in_a_cookie_header() -> None:
    signed = sign_value("session", {"id": 7, "name": "a b;c"}, SECRET)
    assert format_set_cookie("session", signed, path=None) == f"session={signed}"
    assert parse_cookie_header(f"session={signed}; theme=dark")["session"] == signed


def test_a_value_signed_with_another_secret_is_refused() -> None:
    assert unsign_value("session", sign_value("session", "u", "other secret"), SECRET) is None


def test_a_value_signed_for_another_cookie_is_refused() -> None:
    assert unsign_value("admin", sign_value("session", "u", SECRET), SECRET) is None


def test_a_tampered_value_is_refused() -> None:
    signed = sign_value("session", {"id": 7}, SECRET)
    _, _, mac = signed.partition(".")
    forged = base64.urlsafe_b64encode(b'["session",{"id":1},0]').rstrip(b"=").decode()
    assert unsign_value("session", f"{forged}.{mac}", SECRET) is None


@pytest.mark.parametrize("index", [0, 15, 31])
def test_a_tampered_signature_is_refused(index: int) -> None:
    encoded, _, mac = sign_value("session", "u", SECRET).partition(".")
    # Flip a bit of the MAC itself: its last base64 character also carries padding bits that decode to nothing.
    tampered = bytearray(base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4)))
    tampered[index] ^= 0x01
    forged_mac = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
    assert unsign_value("session", f"{encoded}.{forged_mac}", SECRET) is None


@pytest.mark.parametrize("signed", ["", "no-dot", ".", "abc.", ".abc", "abc.!!!", "abc.d\u00e9f", "a.b.c"])
def test_malformed_signed_values_are_refused_not_raised(signed: str) -> None:
    assert unsign_value("session", signed, SECRET) is None


def test_bytes_and_str_secrets_are_the_same_key() -> None:
    assert unsign_value("s", sign_value("s", "v", SECRET.encode()), SECRET) == "v"


def test_max_age_refuses_values_signed_too_long_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_000_000.0)
    signed = sign_value("session", "u", SECRET)
    monkeypatch.setattr(time, "time", lambda: 1_000_000.0 + 3600)
    assert unsign_value("session", signed, SECRET, max_age=3601) == "u"
    assert unsign_value("session", signed, SECRET, max_age=3599) is None
    assert unsign_value("session", signed, SECRET) == "u"
