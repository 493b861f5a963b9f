"""brubeck-service: Brubeck apps calling each other over ZeroMQ, sync or fire-and-forget."""

from brubeckservice.client import ServiceClient
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteServiceError,
    RequestTooLarge,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection

__version__ = "0.2.0"

__all__ = [
    "AuthenticationError",
    "ProtocolError",
    "RemoteServiceError",
    "RequestTooLarge",
    "ServiceClient",
    "ServiceClientMixin",
    "ServiceConnection",
    "ServiceError",
    "ServiceMessageHandler",
    "ServiceRequest",
    "ServiceResponse",
    "ServiceTimeout",
    "ServiceUnavailable",
]
