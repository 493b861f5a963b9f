"""What a service publishes to a browser for a forwarded request, and the REPs that tell the web app so:
HTTP bytes from a `ServiceResponse`, pure (docs/forwarding.md). brubeckservice/forwarding.py sends them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec

from brubeck.response import HTTPResponse
from brubeck.wire.http import build_response
from brubeckservice.errors import ForwardFailed, build_error_body, parse_error_body
from brubeckservice.models import ServiceResponse

log = logging.getLogger("brubeckservice.forwarding")

#: Request headers the web app adds to a forwarded request: the browser's HTTP method (HEAD gets no body),
#: and "1" when the browser's connection must be closed after the answer (HTTP/1.0, `Connection: close`).
METHOD_HINT = "Forward-Method"
CLOSE_HINT = "Forward-Close"
#: Headers a service's answer may not set: the framing is ours to decide.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def is_error_reply(response: object) -> bool:
    """Whether a handler's response is an error in the protocol's shape (`{"error": {...}}`), which the web
    app answers with its own error page rather than the service publishing it."""
    return (isinstance(response, ServiceResponse) and not response.ok
            and parse_error_body(response.body) is not None)


def _status(response: ServiceResponse) -> int:
    return response.status_code if 200 <= response.status_code <= 599 else HTTPStatus.INTERNAL_SERVER_ERROR


def _headers(headers: Mapping[str, str], content_type: str) -> list[tuple[str, str]]:
    """A handler's headers but the framing ones, with a Content-Type (`content_type` unless it set one)."""
    pairs = [(name, value) for name, value in headers.items() if name.lower() not in _FRAMING]
    if not any(name.lower() == "content-type" for name, _ in pairs):
        pairs.append(("Content-Type", content_type))
    return pairs


def http_answer(response: ServiceResponse, *, close: bool = False) -> HTTPResponse:
    """The HTTP response a browser gets for a service's answer: its status, its headers, and its body: text
    or bytes as they are (`set_body`), else the payload as JSON. Anything that cannot be sent as HTTP (a
    header with CR or LF, a payload JSON cannot hold) is a 500."""
    body = response.body
    try:
        if isinstance(body, bytes | str):
            data, content_type = body, "text/html; charset=utf-8"
        else:
            data, content_type = msgspec.json.encode(body), "application/json"
        pairs = _headers(response.headers, content_type)
        if close:
            pairs.append(("Connection", "close"))
        reason = response.status_msg if response.status_code == _status(response) else None
        return HTTPResponse(data, _status(response), reason or None, pairs)
    except (ValueError, TypeError, msgspec.EncodeError) as err:
        log.error("answer to %s cannot be sent as HTTP: %s", response.path, err)
        plain = [("Content-Type", "text/plain; charset=utf-8"), *([("Connection", "close")] if close else [])]
        return HTTPResponse("500 Internal Server Error\n", 500, None, plain)


def stream_head(status_code: int, status_msg: str, headers: Mapping[str, str], *, chunked: bool) -> bytes:
    """The status line and headers of a streamed answer: `Transfer-Encoding: chunked`, or (`chunked`
    False) `Connection: close`, the body then ending when the connection closes (RFC 9112 §6.3)."""
    code = status_code if 200 <= status_code <= 599 else HTTPStatus.INTERNAL_SERVER_ERROR
    pairs = _headers(headers, "text/plain; charset=utf-8")
    # brubeck's builder checks every line (no CR or LF) and ends with the Content-Length it computes, which
    # we swap for the framing of a stream.
    head = build_response(b"", code, status_msg if code == status_code and status_msg else None, pairs)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Connection: close"
    return head.removesuffix(b"Content-Length: 0\r\n\r\n") + framing + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One HTTP chunk (`SIZE-IN-HEX CRLF data CRLF`); nothing for no data, since an empty chunk ends the body."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def forwarded_reply(request: Any, status_code: int, sent: int, *, streamed: bool) -> ServiceResponse:
    """The REP telling the web app that the service answered its browser."""
    return ServiceResponse(status_code=200, status_msg="Forwarded", path=request.path, conn_id=request.conn_id,
                           msg_id=request.msg_id,
                           body={"forwarded": True, "status": status_code, "bytes": sent, "streamed": streamed})


def failed_reply(request: Any, error: ForwardFailed) -> ServiceResponse:
    """The REP telling the web app that the browser was *not* answered, and why."""
    status = int(error.status_code)
    return ServiceResponse(status_code=status, status_msg=HTTPStatus(status).phrase, path=request.path,
                           conn_id=request.conn_id, msg_id=request.msg_id,
                           body=build_error_body("ForwardFailed", str(error)))
