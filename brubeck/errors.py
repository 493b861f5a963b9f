"""The one error root of the brubeck package, split by who is at fault.

`ProtocolError` is malformed input from the wire (a bad Mongrel2 frame, a header block that does not parse):
the peer is at fault. `HTTPError` carries an HTTP status a handler wants the client to see. Each class
carries the status a web client should get, so a transport can answer without knowing the cause.
"""

from __future__ import annotations

from http import HTTPStatus


class BrubeckError(Exception):
    """Root of every error raised by brubeck."""

    status_code: int = HTTPStatus.INTERNAL_SERVER_ERROR


class Cancelled(BaseException):
    """Raised in a handler's greenlet when whoever waited for its request stopped waiting (brubeck.context).

    Not a `BrubeckError`, not even an `Exception`, on purpose (as `asyncio.CancelledError` and gevent's
    `GreenletExit`): a handler's `except Exception` must not swallow it. The transport that cancelled the
    request catches it, answers nothing and frees the request's slot."""


class ConfigurationError(BrubeckError):
    """The application was set up wrongly (e.g. no `msg_conn`)."""


class ProtocolError(BrubeckError):
    """Malformed input from the wire: the peer, not this process, is at fault."""

    status_code = HTTPStatus.BAD_REQUEST


class HTTPError(BrubeckError):
    """Raise from a handler to answer with `status_code` (and an optional message)."""

    def __init__(self, status_code: int, message: str | None = None) -> None:
        self.status_code = status_code
        self.message = message or HTTPStatus(status_code).phrase
        super().__init__(f"{status_code} {self.message}")


class PayloadTooLarge(ProtocolError):
    """A request body larger than the application accepts."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
