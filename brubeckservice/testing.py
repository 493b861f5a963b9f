"""An in-memory client/service pair for unit tests of service handlers and of the code that calls them.

    from brubeckservice.testing import ServicePair

    with ServicePair([(r"^/service/slow", SlowHandler)], passphrase="secret") as pair:
        response = pair.client.call("/service/slow", arguments={"RETURN_DATA": "hi"})
        assert response.body == {"RETURN_DATA": "hi"}

Strategy: the service is a real Brubeck app with a real `ServiceConnection`, and the client a real
`ServiceClient`, so everything between them (envelope, signatures, replay checks, correlation, routing) is
what runs in production. Only the transport is swapped: both share one zmq.green context and a fresh
``inproc://`` address, so a test needs no port, no file and no other process, and two pairs never meet.
The app serves in a greenlet, each request in a greenlet of the app's own pool.

Closing undoes it in an order that cannot hang: clients first (their waiting calls fail with
ServiceUnavailable), then the request greenlets and the serving loop (a zmq.green socket must not be
closed under a greenlet waiting on it), then the sockets, then the context.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import gevent
import zmq.green as zmq
from gevent.pool import Pool

from brubeck.application import Brubeck
from brubeckservice.client import ServiceClient
from brubeckservice.correlation import ReplyCallback
from brubeckservice.curve import CurveClient, CurveServer
from brubeckservice.envelope import DEFAULT_MAX_MESSAGE_SIZE
from brubeckservice.server import ServiceConnection
from brubeckservice.signing import Passphrases

__all__ = ["DEFAULT_PASSPHRASE", "ServicePair"]

#: The passphrase both sides use unless a test names another (a test fixture, not a secret).
DEFAULT_PASSPHRASE = "brubeckservice-test-passphrase"  # noqa: S105


class ServicePair:
    """A service app serving `handler_tuples` and a `ServiceClient` connected to it, in this process.

    Starts at once; use it as a context manager (or call `close()`). Attributes: `app` (the service's
    Brubeck app), `connection` (its `ServiceConnection`), `client`, `address` and `context`.

    `address` binds the service elsewhere, e.g. ``ipc://`` or ``tcp://127.0.0.1:*`` (any free port), to see
    connections come and go: inproc connections report no such events. `client_passphrase` gives the
    client another passphrase than the service's (to test refusals); `timeout`, `connect_timeout` and
    `on_reply` go to the client; `window_ms` and `max_message_size` to both sides; `curve` (a
    `CurveServer`) to the service and `client_curve` (a `CurveClient`) to the client, for CURVE over
    ``tcp://`` or ``ipc://`` (inproc has no handshake to secure). Other keyword
    arguments become the app's settings, which handlers read from `self.application.settings`: the place
    to hand them queues or events to report through.
    """

    def __init__(self, handler_tuples: Iterable[tuple[str, Any]], passphrase: Passphrases = DEFAULT_PASSPHRASE,
                 *, address: str | None = None, client_passphrase: Passphrases | None = None,
                 timeout: float = 5.0, connect_timeout: float | None = None, on_reply: ReplyCallback | None = None,
                 window_ms: int = 30_000, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 curve: CurveServer | None = None, client_curve: CurveClient | None = None,
                 **settings: Any) -> None:
        self.passphrase = passphrase
        self.address = address if address is not None else f"inproc://brubeckservice-{uuid.uuid4().hex}"
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._clients: list[ServiceClient] = []
        self._sockets: list[zmq.Socket[bytes]] = []
        self._closed = False
        self.connection = ServiceConnection(self.address, None, passphrase, context=self.context,
                                            window_ms=window_ms, max_message_size=max_message_size, curve=curve)
        # What was bound: "tcp://127.0.0.1:*" becomes the port the system chose.
        self.address = self.connection.bound[0]
        self.app = Brubeck(msg_conn=self.connection, handler_tuples=handler_tuples, pool=Pool(), **settings)
        #: The greenlet serving the app (what `app.run()` does, without taking over SIGINT and SIGTERM,
        #: which belong to the test runner); it is alive as long as the service serves.
        self.serving: gevent.Greenlet[[Brubeck], None] = gevent.spawn(self.connection.process_messages, self.app)
        self.client = self.new_client(passphrase if client_passphrase is None else client_passphrase,
                                      timeout=timeout, connect_timeout=connect_timeout, on_reply=on_reply,
                                      window_ms=window_ms, max_message_size=max_message_size, curve=client_curve)

    def __repr__(self) -> str:
        return f"<ServicePair {self.address} closed={self._closed}>"

    def new_client(self, passphrase: Passphrases | None = None, **options: Any) -> ServiceClient:
        """Another client of this service (same context), closed with the pair; options as `ServiceClient`."""
        client = ServiceClient(self.address, None, self.passphrase if passphrase is None else passphrase,
                               context=self.context, **options)
        self._clients.append(client)
        return client

    def raw_socket(self, socket_type: int = zmq.DEALER) -> zmq.Socket[bytes]:
        """A bare socket connected to the service, closed with the pair: send it anything you like."""
        sock = self.context.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        self._sockets.append(sock)
        return sock

    def close(self) -> None:
        """Close the clients, stop the service and release every socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for client in self._clients:
            client.close(timeout=0)  # a harness close that cannot hang: calls still out fail now
        if self.app.pool is not None:
            self.app.pool.kill()
        self.serving.kill()
        self.connection.close()
        for sock in self._sockets:
            sock.close(linger=0)
        self.context.destroy(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
