"""`ServiceMessageHandler`: handlers for service requests (on the service) and replies (on the client).

On a service, `self.message` is the `ServiceRequest`; the handler fills the payload, sets its status and
`self.headers = {"METHOD": "response"}` (the METHOD its reply is routed to on the client) and returns
`self.render()`, which the service's connection sends back. On a client, a reply is routed through the
client app's own handlers the same way; there `self.message` is the `ServiceResponse` and the handler
starts with its status and payload.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from brubeck.handlers import HTTPStatusCodes, MessageHandler
from brubeck.wire.http import status_phrase
from brubeckservice.errors import build_error_body
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
        super().__init__(application, message, *args, **kwargs)
        if isinstance(message, ServiceResponse):
            self.status_code, self.status_msg = message.status_code, message.status_msg
            if isinstance(message.body, dict):
                self._payload = dict(message.body)

    def render(self, status_code: int | None = None, **kwargs: Any) -> ServiceResponse:
        """The reply: status, the payload as body, the request's path, and METHOD from `self.headers`."""
        if status_code is not None:
            self.set_status(status_code)
        headers = {str(k): str(v) for k, v in self.headers.items() if k != "METHOD"}
        return ServiceResponse(status_code=self.status_code, status_msg=self.status_msg, body=self._payload,
                               path=self.message.path, method=str(self.headers.get("METHOD", "response")),
                               headers=headers, conn_id=getattr(self.message, "conn_id", ""),
                               msg_id=getattr(self.message, "msg_id", b""))

    def _error_payload(self, error_type: str, message: str, **extra: Any) -> ServiceResponse:
        self.clear_payload()
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
