"""`ServiceClientMixin`: service calls from a Brubeck web handler, with the 2013 API.

Clients are cached per application (`application.extensions["brubeckservice"]`), so `register_service` is
idempotent and a connection is shared by all requests of one app, never by two apps. Each client is closed
by the app's `close()` (which `run()` ends with), through its `on_close` hooks. Every reply, sync or not,
is routed through the *client* app's own handlers by path and METHOD, exactly once; but for
`forward_to_service`, whose REP only says whether the service answered the browser itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from brubeck.errors import ConfigurationError
from brubeck.response import HTTPResponse
from brubeck.transports.mongrel2 import Mongrel2Connection
from brubeck.types import Application, HandlerClass
from brubeckservice.answers import CLOSE_HINT, METHOD_HINT, http_answer
from brubeckservice.client import DEFAULT_TIMEOUT, ServiceClient
from brubeckservice.errors import ServiceError, parse_error_body
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Passphrases

log = logging.getLogger("brubeckservice.mixin")

EXTENSION = "brubeckservice"


def registry(application: Application) -> dict[str, ServiceClient]:
    """The service clients of one application, by service address."""
    services: dict[str, ServiceClient] = application.extensions.setdefault(EXTENSION, {})
    return services


def register_service(application: Application, service_addr: str, service_response_addr: str | None = None,
                     passphrase: Passphrases = "", **options: Any) -> ServiceClient:
    """`ServiceClientMixin.register_service` outside any request (e.g. when the app is built, so that its
    status page lists the service before the first call): the same client for the same address."""
    services = registry(application)
    client = services.get(service_addr)
    if client is None:
        options.setdefault("timeout", application.settings.get("service_timeout", DEFAULT_TIMEOUT))
        options.setdefault("connect_timeout", application.settings.get("service_connect_timeout"))
        client = ServiceClient(service_addr, service_response_addr, passphrase,
                               on_reply=lambda response: handle_reply(application, response), **options)
        services[service_addr] = client
        # Brubeck apps take close hooks; an Application of another kind closes its clients itself.
        # The app's `service_close_timeout` setting says how long closing waits for calls still out.
        on_close: Callable[[Callable[[], object]], object] | None = getattr(application, "on_close", None)
        if on_close is not None:
            on_close(partial(client.close, application.settings.get("service_close_timeout")))
        log.info("registered service at %s", service_addr)
    return client


def handle_reply(application: Application, response: ServiceResponse) -> Any:
    """Route a service reply through the application's handlers; returns what the handler returned."""
    return application.handle(response, base_handler=ServiceMessageHandler)


class Relay:
    """Answers the browser of a forwarded request when the service did not (`forward_to_service`): the
    call failed (ServiceTimeout 504, ServiceUnavailable 503, ...), or its REP says the browser was not
    answered (a refusal, an error on the service), or it comes from a service that does not forward (its
    answer is relayed). Run by the client's callback greenlets; never raises."""

    def __init__(self, application: Application, message: Any, handler_class: HandlerClass) -> None:
        self.application = application
        self.message = message
        self.handler_class = handler_class

    def replied(self, response: ServiceResponse) -> None:
        body = response.body
        if response.ok and isinstance(body, dict) and body.get("forwarded") is True:
            log.debug("service answered connection %s itself: %s", self.message.conn_id, body)
            return
        if response.ok:  # not forwarded (WSGI, or a service that does not forward): relay its answer
            self._send(http_answer(response))
            return
        error = parse_error_body(body)
        log.info("service did not answer connection %s: %d %s%s", self.message.conn_id, response.status_code,
                 response.status_msg, f" ({error['type']}: {error['message']})" if error else "")
        self._send(self._error_page(response.status_code))

    def failed(self, error: BaseException) -> None:
        status = int(getattr(error, "status_code", 502))
        log.warning("forwarded call for connection %s failed, answering %d: %s", self.message.conn_id, status, error)
        self._send(self._error_page(status))
        # Closed, so that an answer the service still sends finds the connection gone (ids are not reused).
        close = getattr(self.application.msg_conn, "close_connection", None)
        if close is not None:
            close(self.message)

    def _error_page(self, status: int) -> Any:
        """The error response this handler class renders, as brubeck answers errors (else plain text)."""
        for make in (self.handler_class, self.application.base_handler):
            try:
                return make(self.application, self.message).render_error(status)
            except Exception:
                log.exception("rendering the %d page for %s failed", status, self.message.path)
        return HTTPResponse(f"{status} Error\n", status, None, [("Content-Type", "text/plain; charset=utf-8")])

    def _send(self, response: Any) -> None:
        try:
            self.application.msg_conn.reply(self.message, response)
        except Exception:
            log.exception("answering connection %s failed", self.message.conn_id)


class ServiceClientMixin:
    """Mix into a web handler: `register_service`, `create_service_request`, `send_service_request`
    (sync: waits for the reply, blocking only this request's greenlet), `send_service_request_nowait` and
    `forward_to_service` (the service answers the browser itself, through Mongrel2)."""

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
        return register_service(self.application, service_addr, service_response_addr, passphrase, **options)

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

    def forward_to_service(self, service_addr: str, service_request: ServiceRequest, timeout: float | None = None,
                           server: str | None = None) -> None:
        """Hand this web request to a service whose handler answers the browser itself, through Mongrel2
        (docs/forwarding.md); return what this returns, None, so that this handler sends nothing.

        `server` names the Mongrel2 server the service answers through, one it is configured with (else
        the app's `forward_server` setting). Never waits. When the service does not answer the browser, the
        app does, with this handler class's `render_error`: 504 after `timeout` (else the client's) without
        a REP, 503 when the service cannot be reached, or the status its REP gives (400 refused, ...), and
        after a failed call the connection is closed. Behind a transport that is not Mongrel2 (WSGI) the
        call is not forwarded: the service's answer comes back in its REP and this app relays it. Raises
        ServiceUnavailable at once when the service is known to be out of reach, as
        `send_service_request_nowait` does; ConfigurationError without a server name behind Mongrel2.
        """
        application, message = self.application, self.message
        if not getattr(message, "conn_id", "") or not hasattr(message, "sender"):
            raise ConfigurationError("forward_to_service answers a web request: call it from a web handler")
        client = self.service_client(service_addr)
        if isinstance(application.msg_conn, Mongrel2Connection):
            name = server or application.settings.get("forward_server")
            if not name:
                raise ConfigurationError("forward_to_service needs the name of the Mongrel2 server the service "
                                         "answers through: pass server=, or set the app's forward_server setting")
            service_request.reply_to = str(name)
            service_request.conn_id = str(message.conn_id)
            service_request.headers[METHOD_HINT] = str(message.method)
            if message.should_close():
                service_request.headers[CLOSE_HINT] = "1"
        relay = Relay(application, message, cast(HandlerClass, type(self)))  # (mixed into a handler)
        client.send_request(service_request, timeout, on_reply=relay.replied, on_error=relay.failed)
