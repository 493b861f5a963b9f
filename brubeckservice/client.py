"""`ServiceClient`: call a service from any gevent program, and wait (`call`) or not (`send`).

Topology: the service binds a ROUTER; the client connects one DEALER per service address (several
addresses = several workers, each call goes to the connected one with the fewest calls in flight). No
REQ/REP lock-step: any number of calls share a socket, told apart by correlation id. Replies are read in
the gevent hub as they arrive (brubeck.transports.channel): each wakes its waiting caller directly, or
(for `send`) runs the reply callback on a recycled greenlet. Connection events are read the same way: the
calls in flight on a connection fail the moment it drops.

Never hang: a call waits at most its timeout (ServiceTimeout, from the reaper greenlet's timer wheel), a
send to a service with no connection waits at most `connect_timeout` (ServiceUnavailable), and nothing the
peer sends can stop the reading. Use a client from the gevent hub (thread) that created it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import gevent
import zmq
from gevent.event import AsyncResult, Event
from gevent.hub import Waiter
from zmq.utils.monitor import parse_monitor_message

from brubeck.transports.channel import Channel, Workers
from brubeckservice import envelope
from brubeckservice.correlation import Call, ErrorCallback, PendingCalls, ReplyCallback
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RequestTooLarge,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer
from brubeckservice.sockets import DEFAULT_MAX_MESSAGE_SIZE, endpoints, now_ms

log = logging.getLogger("brubeckservice.client")

DEFAULT_TIMEOUT = 30.0


class Endpoint:
    """One service address: its socket, whether it is connected, and how many calls it has in flight."""

    __slots__ = ("address", "channel", "connected", "inflight", "monitor", "ready", "socket")

    def __init__(self, address: str, socket: zmq.Socket[bytes], channel: Channel, monitor: Channel) -> None:
        self.address = address
        self.socket = socket
        self.channel = channel
        self.monitor = monitor
        self.connected = False
        self.ready = Event()  # set while connected, for senders waiting on a connection
        self.inflight = 0

    def __repr__(self) -> str:
        return f"<Endpoint {self.address} connected={self.connected} inflight={self.inflight}>"


class ServiceClient:
    """A client of one service (at one or more addresses), signing with the shared `passphrase`.

    `service_response_addr` is accepted for compatibility with brubeck-service 2013's two-address API;
    protocol v1 carries replies on the request connection, so it is not used (see docs/protocol.md).
    `on_reply` receives the replies of `send()` calls that name no callback of their own.
    """

    def __init__(self, service_addr: str | Sequence[str], service_response_addr: str | None = None,
                 passphrase: str | bytes = "", *, context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None,
                 on_reply: ReplyCallback | None = None, window_ms: int = 30_000,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.addresses = endpoints(service_addr)
        self.service_response_addr = service_response_addr
        self.signer = Signer(passphrase)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.on_reply = on_reply
        self.window_ms = window_ms
        self.max_message_size = max_message_size
        self.stats: Counter[str] = Counter()
        self.calls = PendingCalls()
        self.session = os.urandom(8).hex()
        self._seq = 0
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self._closed = False
        self._expiry_changed = Event()
        self.endpoints: list[Endpoint] = []
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        for index, address in enumerate(self.addresses):
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live connections: no send into the void
            sock.setsockopt(zmq.ROUTING_ID, f"{self.session}-{index}".encode())
            monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            # Replies and connection events are handled in the hub as they arrive (brubeck's Channel):
            # no listener greenlet stands between a reply and its caller.
            channel, watch = Channel(sock, log=log), Channel(monitor, log=log)
            endpoint = Endpoint(address, sock, channel, watch)
            channel.start(partial(self._on_frames, endpoint))
            watch.start(partial(self._on_event, endpoint))
            sock.connect(address)
            self.endpoints.append(endpoint)
        self._greenlets.append(gevent.spawn(self._reap))
        # Reply and error callbacks run on recycled greenlets: one each while it runs, none created per reply.
        self._callbacks: Workers[tuple[Any, Any]] = Workers(self._run_callback, log=log)

    def __repr__(self) -> str:
        return f"ServiceClient({','.join(self.addresses)!r}, pending={len(self.calls)})"

    @property
    def pending(self) -> int:
        """Calls sent and not yet answered, timed out or failed."""
        return len(self.calls)

    # -- calling ------------------------------------------------------------------------------------

    def call(self, path: str, method: str = "request", arguments: dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, conn_id: str = "",
             timeout: float | None = None) -> ServiceResponse:
        """Send a request and wait (this greenlet only) for its reply, at most `timeout` seconds."""
        request = ServiceRequest(path=path, method=method, arguments=arguments or {}, headers=headers or {},
                                 conn_id=conn_id)
        return self.call_request(request, timeout)

    def call_request(self, request: ServiceRequest, timeout: float | None = None) -> ServiceResponse:
        """`call` for a ready-made `ServiceRequest`.

        Raises ServiceTimeout (no reply in time), ServiceUnavailable (no connection, or it dropped),
        AuthenticationError (the service refused our signature), ProtocolError (the reply is malformed).
        A reply with an error status is returned, not raised: see `ServiceResponse.raise_for_status()`.
        """
        limit = self.timeout if timeout is None else timeout
        waiter = Waiter()
        # No timer of its own: the reaper fails the waiter with ServiceTimeout when the call expires.
        msg_id = self._send(request, Call(request.path, waiter=waiter), limit, time.monotonic() + limit)
        try:
            result: ServiceResponse = waiter.get()
            return result
        finally:
            self._forget(msg_id)

    def send(self, path: str, method: str = "request", arguments: dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, conn_id: str = "", timeout: float | None = None,
             on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None) -> bytes:
        """Send a request without waiting; returns its correlation id.

        The reply goes to `on_reply` (default: the client's), run in its own greenlet. If none comes within
        `timeout`, the call is forgotten and `on_error` gets a ServiceTimeout (a later reply is dropped).
        """
        request = ServiceRequest(path=path, method=method, arguments=arguments or {}, headers=headers or {},
                                 conn_id=conn_id)
        return self.send_request(request, timeout, on_reply=on_reply, on_error=on_error)

    def send_request(self, request: ServiceRequest, timeout: float | None = None, *,
                     on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None) -> bytes:
        limit = self.timeout if timeout is None else timeout
        call = Call(request.path, on_reply=on_reply or self.on_reply, on_error=on_error)
        return self._send(request, call, limit, time.monotonic() + limit)

    def ping(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask the service how it is (its PONG: in-flight requests, counters); raises like `call`."""
        waiter: AsyncResult = AsyncResult()
        msg_id = self.calls.new_id()
        endpoint = self._choose()
        call = Call("PING", waiter=waiter)
        call.endpoint = endpoint
        self.calls.add(msg_id, call)
        # Counted in flight like a call: every path that removes a call (PONG, ERR, lost connection,
        # timeout) gives its count back, so a refused ping must have taken one.
        endpoint.inflight += 1
        try:
            self._transmit(endpoint, lambda: envelope.encode_ping(self.signer, msg_id, now_ms()), timeout)
            info: dict[str, Any] = waiter.get(timeout=timeout)
            return info
        except gevent.Timeout:
            raise ServiceTimeout(f"no PONG from {endpoint.address} within {timeout:g}s") from None
        finally:
            self._forget(msg_id)

    # -- sending ------------------------------------------------------------------------------------

    def _choose(self) -> Endpoint:
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        live = [e for e in self.endpoints if e.connected] or self.endpoints
        return min(live, key=lambda e: e.inflight)

    def _send(self, request: ServiceRequest, call: Call, timeout: float, expires_at: float) -> bytes:
        if self._closed:
            raise ServiceUnavailable("the service client is closed")
        # The caller's request is left as it is (reusable); a retry gets a deadline of its own.
        deadline = request.deadline if request.deadline is not None else now_ms() + int(timeout * 1000)
        endpoint = self._choose()
        msg_id = self.calls.new_id()
        call.endpoint = endpoint
        if self.calls.add(msg_id, call, expires_at):  # registered before the send: no reply can beat it
            self._expiry_changed.set()  # the reaper sleeps until the earliest expiry: wake it sooner
        endpoint.inflight += 1

        def frames() -> list[bytes]:
            # Numbered at the moment of sending, so numbers leave in order (the service's replay window).
            self._seq += 1
            return envelope.encode_request(self.signer, msg_id, request, now_ms(), self.session, self._seq,
                                           deadline)

        try:
            self._transmit(endpoint, frames, timeout)
        except BaseException:
            self._forget(msg_id)
            raise
        self.stats["sent"] += 1
        return msg_id

    def _transmit(self, endpoint: Endpoint, build: Any, timeout: float) -> None:
        wait = timeout if self.connect_timeout is None else min(timeout, self.connect_timeout)
        give_up = time.monotonic() + wait
        channel = endpoint.channel
        while True:
            frames: list[bytes] = build()
            size = sum(len(f) for f in frames)
            if size > self.max_message_size:
                raise RequestTooLarge(f"request of {size} bytes exceeds max_message_size "
                                      f"{self.max_message_size}")
            try:
                channel.send(frames)
                return
            except zmq.Again:
                # No live connection (ZMQ_IMMEDIATE), or its queue is full: wait for one, within the call's time.
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    self.stats["unavailable"] += 1
                    raise ServiceUnavailable(
                        f"no connection to the service at {endpoint.address} within {wait:g}s") from None
                if not endpoint.ready.wait(remaining) or not channel.writable():
                    # Connected, but the handshake is not done yet or the queue is full: try again shortly.
                    gevent.sleep(min(0.005, max(0.0, give_up - time.monotonic())))
            except zmq.ZMQError as exc:
                raise ServiceUnavailable(f"cannot send to {endpoint.address}: {exc}") from None

    def _forget(self, msg_id: bytes) -> None:
        call = self.calls.pop(msg_id)
        if call is not None:
            call.endpoint.inflight -= 1

    # -- receiving ----------------------------------------------------------------------------------

    # -- receiving (run in the hub by the endpoint's Channel: nothing here may block) -----------------

    def _on_frames(self, endpoint: Endpoint, frames: list[bytes]) -> None:
        try:
            env = envelope.parse(frames)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            log.warning("dropped malformed message from %s: %s", endpoint.address, err)
            return
        if env.kind == envelope.REP:
            self._on_reply(endpoint, env)
        elif env.kind == envelope.ERR:
            self._on_rejection(endpoint, env)
        elif env.kind == envelope.PONG:
            self._on_pong(endpoint, env)
        else:
            self.stats["malformed"] += 1
            log.warning("dropped unexpected %r message from %s", env.kind, endpoint.address)

    def _on_reply(self, endpoint: Endpoint, env: envelope.Envelope) -> None:
        try:
            response = envelope.open_reply(env, self.signer, now_ms(), self.window_ms)
        except AuthenticationError as err:
            self.stats["forged"] += 1
            log.warning("dropped reply from %s that failed verification: %s", endpoint.address, err)
            return
        except ProtocolError as err:
            self.stats["malformed"] += 1
            log.warning("malformed reply from %s: %s", endpoint.address, err)
            self._fail(env.msg_id, ProtocolError(f"the service's reply does not parse: {err}"))
            return
        call = self.calls.pop(env.msg_id)
        if call is None:
            self.stats["late"] += 1
            log.warning("dropped late or unknown reply %r for %s (%d %s)", env.msg_id, response.path,
                        response.status_code, response.status_msg)
            return
        call.endpoint.inflight -= 1
        self.stats["replies"] += 1
        if call.resolve(response):
            return
        if call.on_reply is not None:
            self._callbacks.dispatch((call.on_reply, response))
        else:
            log.info("reply to %s (%d %s) has no handler", response.path, response.status_code,
                     response.status_msg)

    def _on_rejection(self, endpoint: Endpoint, env: envelope.Envelope) -> None:
        # ERR is unsigned: it can only fail a call we are waiting on, never deliver data.
        try:
            header, _ = envelope.open_control(env, None, now_ms(), self.window_ms)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            log.warning("malformed ERR from %s: %s", endpoint.address, err)
            return
        log.warning("service at %s rejected call %r: %d %s", endpoint.address, env.msg_id, header.status,
                    header.msg)
        error: ServiceError
        if header.status == 401:
            error = AuthenticationError(f"the service at {endpoint.address} refused our signature: {header.msg} "
                                        "(is the passphrase the same on both sides?)")
        else:
            error = ProtocolError(f"the service at {endpoint.address} rejected the request: {header.status} "
                                  f"{header.msg}")
        self._fail(env.msg_id, error)

    def _on_pong(self, endpoint: Endpoint, env: envelope.Envelope) -> None:
        try:
            _, info = envelope.open_control(env, self.signer, now_ms(), self.window_ms)
        except ServiceError as err:
            self.stats["forged"] += 1
            log.warning("dropped PONG from %s: %s", endpoint.address, err)
            return
        call = self.calls.pop(env.msg_id)
        if call is None:
            return
        call.endpoint.inflight -= 1
        call.resolve(info)

    def _fail(self, msg_id: bytes, error: BaseException) -> None:
        call = self.calls.pop(msg_id)
        if call is None:
            return
        if call.endpoint is not None:
            call.endpoint.inflight -= 1
        self._fail_call(call, error)

    def _fail_call(self, call: Call, error: BaseException) -> None:
        if call.fail(error):
            return
        if call.on_error is not None:
            self._callbacks.dispatch((call.on_error, error))
        else:
            log.warning("call to %s failed: %s", call.path, error)

    def _run_callback(self, item: tuple[Any, Any]) -> None:
        callback, value = item
        try:
            callback(value)
        except Exception:
            log.exception("reply callback %r failed", callback)

    def _on_event(self, endpoint: Endpoint, frames: list[bytes]) -> None:
        """Track the connection; when it drops, fail its calls now instead of at their timeouts."""
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_CONNECTED:
            endpoint.connected = True
            endpoint.ready.set()
            log.debug("connected to %s", endpoint.address)
        elif event == zmq.EVENT_DISCONNECTED:
            endpoint.connected = False
            endpoint.ready.clear()
            lost = self.calls.drain(endpoint)
            endpoint.inflight = 0
            if lost:
                log.warning("connection to %s lost with %d calls in flight", endpoint.address, len(lost))
            self.stats["lost"] += len(lost)
            for _, call in lost:
                self._fail_call(call, ServiceUnavailable(
                    f"connection to the service at {endpoint.address} lost while {call.path} was in flight"))

    def _reap(self) -> None:
        """Fail the calls whose reply did not come in time: a waiting caller gets ServiceTimeout, a
        fire-and-forget call's `on_error` too; the call is forgotten, so a later reply is a late reply."""
        while not self._closed:
            next_expiry = self.calls.next_expiry()
            wait = None if next_expiry is None else max(0.0, next_expiry - time.monotonic())
            self._expiry_changed.clear()
            self._expiry_changed.wait(timeout=wait)
            try:
                for _, call in self.calls.expire(time.monotonic()):
                    if call.endpoint is not None:
                        call.endpoint.inflight -= 1
                    self.stats["timeouts"] += 1
                    self._fail_call(call, ServiceTimeout(
                        f"no reply from {call.path} at {','.join(self.addresses)} in time; call forgotten"))
            except Exception:  # the reaper is what guarantees no call waits forever: it must not die
                log.exception("failed to expire calls")

    # -- closing ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Fail every outstanding call with ServiceUnavailable, stop the greenlets, close the sockets."""
        if self._closed:
            return
        self._closed = True
        for _, call in self.calls.drain():
            self._fail_call(call, ServiceUnavailable("the service client was closed"))
        for endpoint in self.endpoints:
            endpoint.socket.disable_monitor()
            endpoint.monitor.close(linger=0)
            endpoint.channel.close(linger=0)
        gevent.killall(self._greenlets, block=False)
        self._callbacks.close()
        if self._own_context:
            self.context.term()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
