"""Cookies: parsing the Cookie header, formatting Set-Cookie, and signing values.

A signed cookie value is ``base64url(json([name, value, issued_at])) "." base64url(HMAC-SHA256)``, the MAC
keyed by the application's `cookie_secret` and computed over the cookie name and the encoded value, so a
value signed for one cookie cannot be replayed under another name. Values are JSON, never pickle: nothing
from a cookie is ever unpickled. The MAC is checked with `hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import time
from datetime import datetime
from http.cookies import CookieError, Morsel, SimpleCookie
from typing import Any

import msgspec

log = logging.getLogger("brubeck.cookies")


def parse_cookie_header(header: str) -> dict[str, str]:
    """Cookie header -> {name: value}; a malformed pair is skipped, never an error.

    Pairs are read one at a time (``cookie-string = cookie-pair *( ";" SP cookie-pair )``, RFC 6265 4.2.1):
    given one pair it cannot parse (a JSON value some script set, a space in a name), SimpleCookie silently
    drops the whole header, and with it the session cookie next to that pair.
    """
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        name = name.strip()
        if sep and name:
            cookies[name] = _unquote(value.strip())
    return cookies


def _unquote(value: str) -> str:
    # format_set_cookie lets http.cookies quote values holding separators or non-ASCII ('a;b' is sent as
    # "a\073b"); let http.cookies undo its own quoting too.
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    jar: SimpleCookie = SimpleCookie()
    with contextlib.suppress(CookieError):
        jar.load(f"v={value}")
    morsel = jar.get("v")
    return morsel.value if morsel is not None else value[1:-1]


def format_set_cookie(name: str, value: str, *, path: str | None = "/", domain: str | None = None,
                      expires: datetime | str | int | None = None, max_age: int | None = None,
                      secure: bool = False, httponly: bool = False, samesite: str | None = None) -> str:
    """The value of one Set-Cookie header (http.cookies does the quoting)."""
    jar: SimpleCookie = SimpleCookie()
    jar[name] = value
    morsel: Morsel[str] = jar[name]
    if path:
        morsel["path"] = path
    if domain:
        morsel["domain"] = domain
    if isinstance(expires, datetime):
        morsel["expires"] = expires.strftime("%a, %d %b %Y %H:%M:%S GMT")
    elif expires is not None:
        morsel["expires"] = expires
    if max_age is not None:
        morsel["max-age"] = max_age
    if secure:
        morsel["secure"] = True
    if httponly:
        morsel["httponly"] = True
    if samesite:
        morsel["samesite"] = samesite
    return morsel.OutputString()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str | bytes, name: str, encoded: str) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, f"{name}|{encoded}".encode(), hashlib.sha256).digest()


# What sign_value encodes: [name, value, issued_at]. A good MAC over anything else (another app's format, a
# hand-made value under the same secret) is malformed, not a crash.
_signed_payload = msgspec.json.Decoder(tuple[str, Any, float]).decode


def sign_value(name: str, value: Any, secret: str | bytes) -> str:
    """A tamper-evident cookie value holding any JSON-serialisable `value`."""
    encoded = _b64(msgspec.json.encode([name, value, int(time.time())]))
    return f"{encoded}.{_b64(_mac(secret, name, encoded))}"


def unsign_value(name: str, signed: str, secret: str | bytes, max_age: float | None = None) -> Any:
    """The value inside a signed cookie, or None when it is forged, malformed, for another name or too old."""
    encoded, sep, mac = signed.partition(".")
    if not sep:
        return None
    try:
        given = _unb64(mac)
    except ValueError:
        return None
    if not hmac.compare_digest(given, _mac(secret, name, encoded)):
        log.warning("cookie %r has a bad signature; ignored", name)
        return None
    try:
        signed_name, value, issued = _signed_payload(_unb64(encoded))
    except (ValueError, msgspec.DecodeError, RecursionError):  # (RecursionError: JSON nested too deep)
        return None
    if signed_name != name:
        return None
    if max_age is not None and time.time() - issued > max_age:
        return None
    return value
