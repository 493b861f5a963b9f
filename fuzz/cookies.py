"""Fuzz target: the Cookie header and signed cookie values (`brubeck.cookies`).

The input is used twice: as a Cookie header (read as latin-1, as a WSGI server passes it), each of whose
values is then unsigned; and as the payload of a value correctly signed with the application's secret, so
that the fuzzer also reaches what `unsign_value` does once the MAC is good (decoding the JSON inside).

Oracle: `parse_cookie_header` gives {str: str} and never raises; `unsign_value` gives a value or None and
never raises; a value that comes out, signed again, unsigns to the same value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from brubeck.cookies import parse_cookie_header, sign_value, unsign_value
from fuzz import Mismatch, same

SECRET = "fuzz-cookie-secret"
NAME = "session"
logging.getLogger("brubeck.cookies").setLevel(logging.ERROR)  # one warning per forged value drowns the log


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(name: str, payload: bytes) -> str:
    """`payload` as a cookie value with a good MAC, whatever its bytes: the format of the module docstring of
    `brubeck.cookies`, written out here rather than borrowed from it."""
    encoded = _b64(payload)
    mac = hmac.new(SECRET.encode(), f"{name}|{encoded}".encode(), hashlib.sha256).digest()
    return f"{encoded}.{_b64(mac)}"


def _unsigned(name: str, value: str) -> None:
    found = unsign_value(name, value, SECRET, max_age=3600)
    if found is not None:
        same(unsign_value(name, sign_value(name, found, SECRET), SECRET, max_age=3600), found,
             "unsign(sign(value))")


def check(data: bytes) -> None:
    cookies = parse_cookie_header(data.decode("latin-1"))
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in cookies.items()):
        raise Mismatch(f"parse_cookie_header gave {cookies!r:.300}")
    for name, value in cookies.items():
        _unsigned(name, value)
    _unsigned(NAME, signed(NAME, data))
