"""brubeck-service 2013's import path: `from brubeckservice.base import ServiceConnection, ...`."""

from gevent import sleep as coro_sleep

from brubeckservice.client import ServiceClient
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteServiceError,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection

__all__ = [
    "AuthenticationError",
    "ProtocolError",
    "RemoteServiceError",
    "ServiceClient",
    "ServiceClientMixin",
    "ServiceConnection",
    "ServiceError",
    "ServiceMessageHandler",
    "ServiceRequest",
    "ServiceResponse",
    "ServiceTimeout",
    "ServiceUnavailable",
    "coro_sleep",
]
