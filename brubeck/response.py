"""What a web handler returns: the bytes of an HTTP response that still knows its parts.

`HTTPResponse` *is* the response bytes (Mongrel2 sends them as they are) and keeps status, headers and body
as attributes (WSGI needs them apart). Brubeck 0.4's module-level `render()` builds one.
"""

from __future__ import annotations

from brubeck.wire.http import HeaderInput, build_response, header_pairs, parse_response, status_phrase


class HTTPResponse(bytes):
    """A complete HTTP/1.1 response as bytes, with `status_code`, `status_msg`, `headers`, `body`."""

    status_code: int
    status_msg: str
    headers: list[tuple[str, str]]
    body: bytes

    def __new__(cls, body: bytes | str = b"", status_code: int = 200, status_msg: str | None = None,
                headers: HeaderInput | None = None) -> HTTPResponse:
        payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        msg = status_msg or status_phrase(status_code)
        # Content-Length is always computed from the body (the bytes already replace a given one); keeping
        # it in `headers` too would make WSGI send it twice.
        pairs = [(name, value) for name, value in header_pairs(headers) if name.lower() != "content-length"]
        self = super().__new__(cls, build_response(payload, status_code, msg, pairs))
        self.status_code, self.status_msg, self.headers, self.body = status_code, msg, pairs, payload
        return self

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> HTTPResponse:
        """Recover the parts of HTTP response bytes a handler built by hand."""
        if isinstance(raw, HTTPResponse):
            return raw
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        code, reason, pairs, body = parse_response(data)
        return cls(body, code, reason, pairs)


def render(body: bytes | str, status_code: int = 200, status_msg: str | None = None,
           headers: HeaderInput | None = None) -> HTTPResponse:
    """Brubeck 0.4's helper: the HTTP response a function route returns."""
    return HTTPResponse(body, status_code, status_msg, headers)
