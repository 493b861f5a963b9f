"""The one error root of brubeckservice, split by who is at fault, each with its HTTP status hint.

`ServiceError` derives from `brubeck.errors.BrubeckError`, so a web handler that lets one escape answers
its client with the class's status (504 for a timeout, 503 for an unreachable service, ...). A failure
inside the remote service crosses the wire as data (status, type name, message), never as an object.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from brubeck.errors import BrubeckError, ConfigurationError
from brubeck.errors import ProtocolError as BrubeckProtocolError

if TYPE_CHECKING:
    from brubeckservice.models import ServiceResponse


# -- a remote failure as data ----------------------------------------------------------------------------
#
# A reply with an error status carries {"error": {"type": <exception or status name>, "message": <text>, ...}}
# (docs/protocol.md, REP). These two functions are the only places that build and read it.


def build_error_body(error_type: str, message: str, **extra: Any) -> dict[str, Any]:
    """The body of an error reply: `{"error": {"type", "message", **extra}}` (405 adds `allow`)."""
    return {"error": {"type": error_type, "message": message, **extra}}


def parse_error_body(body: object) -> dict[str, Any] | None:
    """The `error` object of a reply body, when it has one with a string `type` and `message`; else None
    (a handler's own error payload of another shape is left to the caller)."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("type"), str) and isinstance(error.get("message"), str):
        return error
    return None


class ServiceError(BrubeckError):
    """Root of every error raised by brubeckservice."""

    status_code: int = HTTPStatus.BAD_GATEWAY


class ServiceTimeout(ServiceError):
    """The service did not answer within the call's timeout. The call is forgotten; a late reply is dropped."""

    status_code = HTTPStatus.GATEWAY_TIMEOUT


class ServiceUnavailable(ServiceError):
    """No connection to the service could be had, or it was lost while the call was in flight."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class ServiceCancelled(ServiceError):
    """The call was given up by its own caller (`ServiceClient.cancel`); the worker was told to stop it."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE


class ForwardFailed(ServiceError):
    """A forwarded answer could not be sent to the browser (`status_code` says why: 503 not connected to
    Mongrel2 or its queue is full, 504 past the deadline). Raised by `Stream.write`."""

    def __init__(self, message: str, status_code: int = HTTPStatus.SERVICE_UNAVAILABLE) -> None:
        super().__init__(message)
        self.status_code = status_code


class ResolutionError(ServiceUnavailable):
    """A DNS name in a service address could not be resolved (brubeckservice.discovery). `reason` says why:
    "NXDOMAIN" (no such name), "no answer" (no record of that type), "timeout" (no server answered in time)
    "server failure" (the servers answered SERVFAIL, REFUSED...) or "failed" (anything else, such as a
    malformed name); `detail` may add to it."""

    def __init__(self, name: str, rdtype: str, reason: str, server: str, detail: str = "") -> None:
        self.name = name
        self.rdtype = rdtype
        self.reason = reason
        self.server = server
        self.detail = detail
        super().__init__(f"cannot resolve {name} ({rdtype}): {reason}{': ' + detail if detail else ''} "
                         f"(asked {server})")


class AuthenticationError(ServiceError):
    """The service rejected our signature (wrong passphrase), or a message failed verification."""

    status_code = HTTPStatus.BAD_GATEWAY


class RequestExpired(ServiceError):
    """A request reached the service after its caller's deadline. It is not served and not answered: its
    caller has stopped waiting (it queued while the service was down or busy, or the clocks disagree)."""

    status_code = HTTPStatus.GATEWAY_TIMEOUT


class RequestTooLarge(ServiceError):
    """The encoded request is larger than the client's `max_message_size`; it was not sent."""

    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class AddressInUse(ServiceError, ConfigurationError):
    """A `ServiceConnection` was given an address that a live process already serves. Nothing was bound:
    the running service keeps its address (libzmq alone would take an ipc:// path over silently)."""

    status_code = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, address: str, pid: int | None = None, holder: str = "") -> None:
        self.address = address
        self.pid = pid
        super().__init__(f"a service is already serving {address}{holder}; stop it, or give this one another "
                         "address")


class ProtocolError(ServiceError, BrubeckProtocolError):
    """A service message that does not follow the wire protocol (docs/protocol.md)."""

    status_code = HTTPStatus.BAD_REQUEST


class RemoteServiceError(ServiceError):
    """The service answered with an error status; `response` holds its reply (type and message included)."""

    def __init__(self, response: ServiceResponse) -> None:
        self.response = response
        self.status_code = response.status_code
        error = parse_error_body(response.body)
        detail = f" ({error['type']}: {error['message']})" if error is not None else ""
        super().__init__(f"{response.status_code} {response.status_msg} from {response.path}{detail}")
