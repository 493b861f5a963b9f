"""HTTP/1.1 response bytes, built from a status, headers and a body and parsed back. Pure: no sockets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from http import HTTPStatus

HeaderPairs = Iterable[tuple[str, str]]
HeaderInput = Mapping[str, str | list[str]] | HeaderPairs


_PHRASES = {status.value: status.phrase for status in HTTPStatus}  # an enum lookup costs more than the response


def status_phrase(status_code: int) -> str:
    """The standard reason phrase for a status code ('Unknown' for codes http.HTTPStatus lacks)."""
    return _PHRASES.get(status_code, "Unknown")


def header_pairs(headers: HeaderInput | None) -> list[tuple[str, str]]:
    """Flatten a header mapping (a list value means a repeated header) or pairs into (name, value) pairs."""
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in headers.items():
            if isinstance(value, list):
                pairs.extend((name, item) for item in value)
            else:
                pairs.append((name, value))
        return pairs
    return list(headers)


def _check(text: str) -> str:
    # A CR or LF inside a header would let a value inject headers or a second response.
    if "\r" in text or "\n" in text:
        raise ValueError(f"header text may not contain CR or LF: {text!r}")
    return text


def build_response(body: bytes | str, status_code: int = 200, status_msg: str | None = None,
                  headers: HeaderInput | None = None) -> bytes:
    """A complete HTTP/1.1 response; Content-Length is computed, any given one is replaced."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {int(status_code)} {_check(status_msg or status_phrase(status_code))}"]
    for name, value in header_pairs(headers):
        if name.lower() != "content-length":
            lines.append(f"{_check(name)}: {_check(str(value))}")
    lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + payload


def head_only(raw: bytes) -> bytes:
    """The response to a HEAD request: the status line and headers of the GET response, Content-Length
    included (RFC 9110, 9.3.2), without the body."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end + 4]


def parse_response(raw: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Split complete HTTP response bytes into (status code, reason, header pairs, body)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("HTTP response has no blank line after its headers")
    lines = head.decode("utf-8", "replace").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    # str.isdigit alone takes any Unicode digit: int() fails on "\u00b2" and reads "\u0661" as 1.
    if not version.startswith("HTTP/") or not (code.isascii() and code.isdigit()):
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    pairs = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        pairs.append((name.strip(), value.strip()))
    return int(code), reason, pairs, body


#: Brubeck 0.4's name for `build_response` (`brubeck.request_handling.http_response`).
http_response = build_response
