"""brubeck-service: Brubeck apps calling each other over ZeroMQ, sync or fire-and-forget."""

from brubeck import __version__  # one distribution, one version
from brubeckservice.client import ServiceClient
from brubeckservice.errors import (
    AddressInUse,
    AuthenticationError,
    ProtocolError,
    RemoteServiceError,
    RequestTooLarge,
    ServiceCancelled,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection

__all__ = [
    "AddressInUse",
    "AuthenticationError",
    "ProtocolError",
    "RemoteServiceError",
    "RequestTooLarge",
    "ServiceCancelled",
    "ServiceClient",
    "ServiceClientMixin",
    "ServiceConnection",
    "ServiceError",
    "ServiceMessageHandler",
    "ServiceRequest",
    "ServiceResponse",
    "ServiceTimeout",
    "ServiceUnavailable",
    "__version__",
]
