"""`ServiceClientMixin`: service calls from a Brubeck web handler, with the 2013 API.

Clients are cached per application (`application.extensions["brubeckservice"]`), so `register_service` is
idempotent and a connection is shared by all requests of one app, never by two apps. Each client is closed
by the app's `close()` (which `run()` ends with), through its `on_close` hooks. Every reply, sync or not,
is routed through the *client* app's own handlers by path and METHOD, exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from brubeck.types import Application
from brubeckservice.client import DEFAULT_TIMEOUT, ServiceClient
from brubeckservice.errors import ServiceError
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Passphrases

log = logging.getLogger("brubeckservice.mixin")

EXTENSION = "brubeckservice"


def registry(application: Application) -> dict[str, ServiceClient]:
    """The service clients of one application, by service address."""
    services: dict[str, ServiceClient] = application.extensions.setdefault(EXTENSION, {})
    return services


def handle_reply(application: Application, response: ServiceResponse) -> Any:
    """Route a service reply through the application's handlers; returns what the handler returned."""
    return application.handle(response, base_handler=ServiceMessageHandler)


class ServiceClientMixin:
    """Mix into a web handler: `register_service`, `create_service_request`, `send_service_request`
    (sync: waits for the reply, blocking only this request's greenlet) and `send_service_request_nowait`."""

    application: Application
    message: Any

    def register_service(self, service_addr: str, service_response_addr: str | None = None,
                         passphrase: Passphrases = "", **options: Any) -> ServiceClient:
        """Connect this application to a service once; later calls return the same client, and the
        application's `close()` closes it.

        Options go to `ServiceClient`: e.g. `timeout`, how long a call to this service waits for its reply
        (else the app's `service_timeout` setting, else 30 s), and `connect_timeout`, how long a call waits
        for a connection to it (else the app's `service_connect_timeout` setting, else 3 s), and `curve`
        (a `brubeckservice.curve.CurveClient`: the service's public key and this app's key pair; no app
        setting, as each service has a key of its own). The app's `close()` (the end of `run()`) closes the
        client, waiting for its calls still out at most the app's `service_close_timeout` setting (else 5 s).
        """
        services = registry(self.application)
        client = services.get(service_addr)
        if client is None:
            app = self.application
            options.setdefault("timeout", app.settings.get("service_timeout", DEFAULT_TIMEOUT))
            options.setdefault("connect_timeout", app.settings.get("service_connect_timeout"))
            client = ServiceClient(service_addr, service_response_addr, passphrase,
                                   on_reply=lambda response: handle_reply(app, response), **options)
            services[service_addr] = client
            # Brubeck apps take close hooks; an Application of another kind closes its clients itself.
            # The app's `service_close_timeout` setting says how long closing waits for calls still out.
            on_close: Callable[[Callable[[], object]], object] | None = getattr(app, "on_close", None)
            if on_close is not None:
                on_close(partial(client.close, app.settings.get("service_close_timeout")))
            log.info("registered service at %s", service_addr)
        return client

    def service_client(self, service_addr: str) -> ServiceClient:
        client = registry(self.application).get(service_addr)
        if client is None:
            raise ServiceError(f"no service registered at {service_addr!r}: call register_service first")
        return client

    def create_service_request(self, path: str, method: str = "request",
                               arguments: dict[str, Any] | None = None, msg: Any = None,
                               headers: dict[str, str] | None = None) -> ServiceRequest:
        """A request for `path` and `method`, carrying this web request's connection id along."""
        conn_id = str(getattr(self.message, "conn_id", "") or "")
        return ServiceRequest(path=path, method=method, arguments=dict(arguments or {}),
                              headers=dict(headers or {}), conn_id=conn_id)

    def send_service_request(self, service_addr: str, service_req: ServiceRequest,
                             timeout: float | None = None) -> tuple[ServiceResponse, Any]:
        """Send and wait; returns (the service's response, what this app's response handler returned).

        Raises ServiceTimeout (504 to the web client if not caught), ServiceUnavailable (503: no
        connection within the connect timeout, or it dropped), AuthenticationError or ProtocolError.
        """
        response = self.service_client(service_addr).call_request(service_req, timeout)
        return response, handle_reply(self.application, response)

    def send_service_request_nowait(self, service_addr: str, service_req: ServiceRequest,
                                    timeout: float | None = None) -> bytes:
        """Send without waiting; the reply is handled by this app's response handler when it comes.

        Returns at once: the request is queued to a live connection, or held until one comes (at most the
        connect timeout; a failure after that is logged). Raises ServiceUnavailable (503) at once when the
        service is already known to be out of reach.
        """
        return self.service_client(service_addr).send_request(service_req, timeout)
