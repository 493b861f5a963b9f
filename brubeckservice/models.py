"""The values a service call carries: `ServiceRequest` and `ServiceResponse`, typed and validated.

They are msgspec Structs (the role dictshield played in 2013): decoding wire JSON into them checks every
field's type, and a bad field is a `ProtocolError`, not a crash deeper in.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brubeckservice.clock import now_ms
from brubeckservice.errors import RemoteServiceError


class ServiceRequest(msgspec.Struct, kw_only=True):
    """A call to a service: which handler (`path`, `method`) and with what `arguments`.

    `conn_id` names the web connection the call is made for (it travels along for the service's logs and
    for answering that client later); `deadline` is when the caller stops waiting (ms since the epoch).
    `body` is the raw JSON of the arguments as received (empty on the sending side).
    """

    path: str
    method: str = "request"
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    conn_id: str = ""
    timestamp: int = msgspec.field(default_factory=now_ms)
    deadline: int | None = None
    body: bytes = b""
    #: The correlation id the request travelled under (set by the transport).
    msg_id: bytes = b""
    #: The routing frames of the caller's connection (set by the service's transport).
    sender: tuple[bytes, ...] = ()
    #: W3C trace context of the call (the caller's span as parent): set by the client from the request
    #: it serves, else a new trace (brubeck.context).
    traceparent: str = ""
    tracestate: str = ""
    #: For `forward_to_service`: the name of the Mongrel2 server (one the service is configured with)
    #: through which the service answers the web connection `conn_id` itself.
    reply_to: str = ""

    def get_argument(self, name: str, default: Any = None, strip: bool = True) -> Any:
        """The argument's value (the last one when it is a list of strings, as on the web)."""
        value = self.arguments.get(name, default)
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]
        if strip and isinstance(value, str):
            return value.strip()
        return value

    def get_arguments(self, name: str, strip: bool = True) -> list[Any]:
        value = self.arguments.get(name)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [v.strip() if strip and isinstance(v, str) else v for v in values]


class ServiceResponse(msgspec.Struct, kw_only=True):
    """A service's answer: HTTP-like `status_code`/`status_msg`, the payload as `body`, routed back by
    `path` and `method` (the METHOD the service's handler put in its headers)."""

    status_code: int
    status_msg: str = ""
    body: Any = msgspec.field(default_factory=dict)
    path: str = ""
    method: str = "response"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    conn_id: str = ""
    timestamp: int = msgspec.field(default_factory=now_ms)
    msg_id: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 400

    def raise_for_status(self) -> ServiceResponse:
        """Raise `RemoteServiceError` for a 4xx/5xx answer; return self otherwise."""
        if not self.ok:
            raise RemoteServiceError(self)
        return self

    # A reply is routed through the client app's handlers like any message, so it answers the same calls.
    def get_argument(self, name: str, default: Any = None, strip: bool = True) -> Any:
        value = self.body.get(name, default) if isinstance(self.body, dict) else default
        return value.strip() if strip and isinstance(value, str) else value

    @property
    def arguments(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}
