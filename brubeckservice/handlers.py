"""`ServiceMessageHandler`: handlers for service requests (on the service) and replies (on the client).

On a service, `self.message` is the `ServiceRequest`; the handler fills the payload, sets its status and
`self.headers = {"METHOD": "response"}` (the METHOD its reply is routed to on the client) and returns
`self.render()`, which the service's connection sends back. On a client, a reply is routed through the
client app's own handlers the same way; there `self.message` is the `ServiceResponse` and the handler
starts with its status and payload.

A request the web app forwarded (`forward_to_service`: `self.forwarded`) is answered to the browser
through Mongrel2 (brubeckservice/forwarding.py): the payload as JSON, or the text of `set_body`, and a long
answer in pieces with `stream(piece)`, ended when the handler's reply goes. The same handler serves a call
that is not forwarded: its pieces are then joined into the body of its reply.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from brubeck.handlers import HTTPStatusCodes, MessageHandler
from brubeck.wire.http import status_phrase
from brubeckservice.errors import build_error_body
from brubeckservice.forwarding import Forwarding, Stream
from brubeckservice.models import ServiceResponse

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeckservice.handlers")

SERVICE_METHODS = ("get", "post", "put", "delete", "options", "connect", "response", "request")


class ServiceMessageHandler(HTTPStatusCodes, MessageHandler):
    """Base class for service handlers; METHODs: get, post, put, delete, options, connect, response,
    request. Status codes are HTTP-like and default to 500 until the handler earns success."""

    SUPPORTED_METHODS: ClassVar[tuple[str, ...]] = SERVICE_METHODS

    def __init__(self, application: Application, message: Any, *args: Any, **kwargs: Any) -> None:
        self._body: bytes | str | None = None  # set_body's, or the pieces streamed (not forwarded)
        self._stream: Stream | None = None
        self._status_set = False
        super().__init__(application, message, *args, **kwargs)
        if isinstance(message, ServiceResponse):
            self.status_code, self.status_msg = message.status_code, message.status_msg
            if isinstance(message.body, dict):
                self._payload = dict(message.body)

    def set_status(self, status_code: int, status_msg: str | None = None, extra_txt: str | None = None) -> None:
        self._status_set = True
        super().set_status(status_code, status_msg, extra_txt)

    # -- answering the browser (forwarded requests) ---------------------------------------------------

    def _forwarding(self) -> Forwarding | None:
        forwarding = getattr(self.application.msg_conn, "forwarding", None)
        return forwarding if isinstance(forwarding, Forwarding) else None

    @property
    def forwarded(self) -> bool:
        """True when this request's answer goes to the browser through Mongrel2 (`forward_to_service`)."""
        return bool(getattr(self.message, "reply_to", "")) and self._forwarding() is not None

    def set_body(self, body: bytes | str, content_type: str = "text/html; charset=utf-8") -> None:
        """Answer with this text (or bytes) instead of the JSON payload, as `content_type`. Behind
        `forward_to_service` it is what the browser gets; a call that is not forwarded carries it as a JSON
        string (bytes as UTF-8)."""
        self._body = body
        self.headers["Content-Type"] = content_type

    def stream(self, piece: bytes | str) -> None:
        """Send one piece of a long answer to the browser now (forwarded requests). The first piece sends
        the status (200 unless one was set) and `self.headers`, with `Transfer-Encoding: chunked`; what
        follows is sent at most once per `Mongrel2Server.flush_interval`, coalesced; the reply (`render()`)
        ends the body. Once streaming, the status cannot change: `render_error` or an exception cuts the
        answer short (the browser sees it incomplete). Raises `ForwardFailed` when the browser cannot be
        answered (past the deadline, Mongrel2 gone, the stream cut short): stop working then. For a call
        that is not forwarded, the pieces are joined into the body of the reply."""
        data = piece.encode("utf-8") if isinstance(piece, str) else bytes(piece)
        if self._stream is None:
            if not self._status_set:
                self.set_status(self._SUCCESS_CODE)
            self.headers.setdefault("Content-Type", "text/plain; charset=utf-8")
            forwarding = self._forwarding()
            if forwarding is None or not getattr(self.message, "reply_to", ""):
                self._body = (self._body.encode("utf-8") if isinstance(self._body, str) else self._body or b"") + data
                return
            headers = {str(k): str(v) for k, v in self.headers.items() if k != "METHOD"}
            self._stream = forwarding.stream(self.message, self.status_code, self.status_msg, headers)
        self._stream.write(data)

    def render(self, status_code: int | None = None, **kwargs: Any) -> ServiceResponse:
        """The reply: status, the payload as body (or `set_body`'s text), the request's path, and METHOD
        from `self.headers`. For a forwarded request, what the browser gets (or, streaming, its end)."""
        if status_code is not None:
            self.set_status(status_code)
        headers = {str(k): str(v) for k, v in self.headers.items() if k != "METHOD"}
        body: Any = self._payload
        if self._body is not None and self._stream is None:
            body = self._body
            if isinstance(body, bytes) and not self.forwarded:  # (JSON holds text, not bytes)
                body = body.decode("utf-8", "replace")
        return ServiceResponse(status_code=self.status_code, status_msg=self.status_msg, body=body,
                               path=self.message.path, method=str(self.headers.get("METHOD", "response")),
                               headers=headers, conn_id=getattr(self.message, "conn_id", ""),
                               msg_id=getattr(self.message, "msg_id", b""))

    def _error_payload(self, error_type: str, message: str, **extra: Any) -> ServiceResponse:
        self.clear_payload()
        self._body = None  # (an error answers in the protocol's shape, whatever body was set)
        for key, value in build_error_body(error_type, message, **extra).items():
            self.add_to_payload(key, value)
        return self.render()

    def render_error(self, error_code: int, status_msg: str | None = None) -> ServiceResponse:
        self.set_status(error_code, status_msg)
        # The type names the status (403 -> "Forbidden"), whatever message the handler chose.
        return self._error_payload(status_phrase(error_code).replace(" ", ""),
                                   f"{self.status_msg} ({self.message.method} {self.message.path})")

    def unsupported(self, allowed: Sequence[str] | None = None) -> ServiceResponse:
        # The same answer whether the handler or the routes lack the METHOD: upper-case names, in the body
        # and in an Allow header (docs/protocol.md, REP).
        methods = list(self.allowed_methods() if allowed is None else allowed)
        self.set_status(self._NOT_ALLOWED, f"Method {self.message.method!r} not supported")
        self.headers["Allow"] = ", ".join(methods)
        return self._error_payload("MethodNotAllowed", self.status_msg, allow=methods)

    def error(self, err: BaseException) -> ServiceResponse:
        """A 500 reply naming the exception's type and message (data, never a pickled object)."""
        log.error("%s failed on %s %s", type(self).__name__, self.message.method, self.message.path,
                  exc_info=err)
        self.set_status(self._SERVER_ERROR, f"{type(err).__name__}: {err}"[:200])
        return self._error_payload(type(err).__name__, str(err))
