"""`ServiceClient`: call a service from any gevent program, and wait (`call`) or not (`send`).

Topology: the service binds a ROUTER; the client connects one DEALER per service address (several
addresses = several workers, each call goes to the connected one with the fewest calls in flight). No
REQ/REP lock-step: any number of calls share a socket, told apart by correlation id. Replies are read in
the gevent hub as they arrive (brubeck.transports.channel): each wakes its waiting caller directly, or
(for `send`) runs the reply callback on a recycled greenlet. Connection events are read the same way: the
calls in flight on a connection fail the moment it drops.

Waiting for a connection (docs/protocol.md §1): the DEALER sets ZMQ_IMMEDIATE, so ZeroMQ queues a message
only to a connection whose handshake is done, and refuses it (EAGAIN) when there is none, instead of
queueing it for a service that may never come. The socket monitor says when a connection becomes usable
(EVENT_HANDSHAKE_SUCCEEDED) and when it drops. A message that cannot be queued now is *held* here, in
order, and one flusher greenlet sends it the moment a connection (or room in a full queue) appears: `send`
never waits, and `call` waits only for its reply. A message waits for a connection at most
`connect_timeout`, counted from when the client began connecting or lost its last connection; once every
address has been without one for that long, calls and sends fail at once with ServiceUnavailable until a
connection is back (libzmq keeps reconnecting in the background).

Never hang: a call waits at most its timeout (ServiceTimeout, from the reaper greenlet's timer wheel), no
message waits longer than `connect_timeout` for a connection (ServiceUnavailable), `close()` waits at most
its timeout for the calls still out, and nothing the peer sends can stop the reading. Use a client from
the gevent hub (thread) that created it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gevent
import zmq
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from greenlet import getcurrent, greenlet
from zmq.utils.monitor import parse_monitor_message

from brubeck.transports.channel import Channel, Workers
from brubeckservice import envelope
from brubeckservice.addresses import endpoints
from brubeckservice.clock import now_ms
from brubeckservice.correlation import Call, ErrorCallback, PendingCalls, ReplyCallback
from brubeckservice.envelope import DEFAULT_MAX_MESSAGE_SIZE
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

log = logging.getLogger("brubeckservice.client")

#: Seconds a call waits for its reply, unless it or the client says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Seconds a message waits for a connection to the service before failing with ServiceUnavailable.
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Seconds `close()` waits for the calls still out (and their reply callbacks) before failing them.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: How often held messages look again at a live connection whose queue is full. ZeroMQ raises no event for
#: room, and tells a writer of it only once the reader has taken half the queue: the other half keeps the
#: connection busy far longer than this.
ROOM_POLL = 0.005

# A connection is usable once its ZMTP handshake is done: only then does ZMQ_IMMEDIATE let a message be
# queued to it. libzmq reports that from 4.3 on; older ones report only the transport's connect.
USABLE = zmq.EVENT_HANDSHAKE_SUCCEEDED if zmq.zmq_version_info() >= (4, 3) else zmq.EVENT_CONNECTED

#: Builds a message's frames for a correlation id, at the moment it is sent.
Build = Callable[[bytes], list[bytes]]


class Endpoint:
    """One service address: its socket, whether it has a usable connection, and its calls in flight."""

    __slots__ = ("address", "channel", "connected", "inflight", "monitor", "socket", "unconnected_since")

    def __init__(self, address: str, socket: zmq.Socket[bytes], channel: Channel, monitor: Channel) -> None:
        self.address = address
        self.socket = socket
        self.channel = channel
        self.monitor = monitor
        # inproc:// reports no connection events, and its queue exists from the connect on.
        self.connected = address.startswith("inproc://")
        self.unconnected_since = time.monotonic()  # when it last had (or began waiting for) a connection
        self.inflight = 0

    def __repr__(self) -> str:
        return f"<Endpoint {self.address} connected={self.connected} inflight={self.inflight}>"


class ServiceClient:
    """A client of one service (at one or more addresses), signing with the shared `passphrase`.

    `service_response_addr` is accepted for compatibility with brubeck-service 2013's two-address API;
    protocol v1 carries replies on the request connection, so it is not used (see docs/protocol.md).
    `timeout` is the default time a call waits for its reply; `connect_timeout` (None:
    DEFAULT_CONNECT_TIMEOUT, 3 s) how long a message waits for a connection to the service.
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
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.on_reply = on_reply
        self.window_ms = window_ms
        self.max_message_size = max_message_size
        self.stats: Counter[str] = Counter()
        self.calls = PendingCalls()
        self.session = os.urandom(8).hex()
        self._seq = 0
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self._closing = False  # close() began: no new calls
        self._closed = False  # close() is done waiting: everything still out fails
        self._expiry_changed = Event()
        self.endpoints: list[Endpoint] = []
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        # Messages that could not be queued yet, oldest first, and the greenlet that sends them.
        self._held: deque[tuple[bytes, Call, Build]] = deque()
        self._flusher: gevent.Greenlet[Any, Any] | None = None
        self._wake = Event()  # set when a connection becomes usable (or the client closes): held ones may go
        self._in_callbacks: set[greenlet] = set()  # greenlets running a reply or error callback now (for close)
        self._quiet: Event | None = None  # while close() waits: set when a call or a callback finishes
        for index, address in enumerate(self.addresses):
            sock = self.context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live connections: no send into the void
            sock.setsockopt(zmq.ROUTING_ID, f"{self.session}-{index}".encode())
            monitor = sock.get_monitor_socket(USABLE | zmq.EVENT_DISCONNECTED)
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
        """Calls sent (or held for a connection) and not yet answered, timed out or failed."""
        return len(self.calls)

    @property
    def available(self) -> bool:
        """False when the service is known to be out of reach: no address has a usable connection and each
        has been without one for `connect_timeout`, so a call fails at once. True while connecting."""
        deadline = self._connect_deadline()
        return deadline is None or time.monotonic() < deadline

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

        Raises ServiceTimeout (no reply in time), ServiceUnavailable (no connection within the connect
        timeout, or it dropped), AuthenticationError (the service refused our signature), ProtocolError (the
        reply is malformed). A reply with an error status is returned, not raised: see
        `ServiceResponse.raise_for_status()`.
        """
        limit = self.timeout if timeout is None else timeout
        response: ServiceResponse = self._wait(Call(request.path), self._builder(request, limit), limit)
        return response

    def send(self, path: str, method: str = "request", arguments: dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, conn_id: str = "", timeout: float | None = None,
             on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None) -> bytes:
        """Send a request without waiting; returns its correlation id.

        Never waits: the request is queued to a live connection, or held until one comes (at most the
        connect timeout). The reply goes to `on_reply` (default: the client's), run in its own greenlet.
        A failure after `send` returned goes to `on_error` (default: a log line): ServiceUnavailable when no
        connection came within the connect timeout or it dropped, ServiceTimeout when no reply came within
        `timeout` (a later reply is dropped). Raises ServiceUnavailable at once when the service is
        already known to be out of reach (see `available`) or the client is closed.
        """
        request = ServiceRequest(path=path, method=method, arguments=arguments or {}, headers=headers or {},
                                 conn_id=conn_id)
        return self.send_request(request, timeout, on_reply=on_reply, on_error=on_error)

    def send_request(self, request: ServiceRequest, timeout: float | None = None, *,
                     on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None) -> bytes:
        """`send` for a ready-made `ServiceRequest`."""
        limit = self.timeout if timeout is None else timeout
        call = Call(request.path, on_reply=on_reply or self.on_reply, on_error=on_error)
        return self._submit(call, self._builder(request, limit), limit)

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        """Ask the service how it is (its PONG: in-flight requests, counters), waiting at most `timeout`
        seconds (default: the client's timeout); raises like `call`."""
        limit = self.timeout if timeout is None else timeout
        info: dict[str, Any] = self._wait(
            Call("PING"), lambda msg_id: envelope.build_ping(self.signer, msg_id, now_ms()), limit)
        return info

    # -- sending ------------------------------------------------------------------------------------

    def _builder(self, request: ServiceRequest, timeout: float) -> Build:
        # The caller's request is left as it is (reusable); a retry gets a deadline of its own.
        deadline = request.deadline if request.deadline is not None else now_ms() + int(timeout * 1000)

        def build(msg_id: bytes) -> list[bytes]:
            # Numbered at the moment of sending, so numbers leave in order (the service's replay window).
            self._seq += 1
            return envelope.build_request(self.signer, msg_id, request, now_ms(), self.session, self._seq,
                                           deadline)

        return build

    def _wait(self, call: Call, build: Build, timeout: float) -> Any:
        waiter = Waiter()
        call.waiter = waiter
        # No timer of its own: the reaper fails the waiter with ServiceTimeout when the call expires.
        msg_id = self._submit(call, build, timeout)
        try:
            return waiter.get()
        finally:
            self._forget(msg_id)

    def _choose(self) -> Endpoint:
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        live = [e for e in self.endpoints if e.connected] or self.endpoints
        return min(live, key=lambda e: e.inflight)

    def _submit(self, call: Call, build: Build, timeout: float) -> bytes:
        """Register `call` and queue its message now, or hold it for a connection, or raise
        ServiceUnavailable when none can be had. Returns its correlation id."""
        if self._closing:
            raise ServiceUnavailable("the service client is closed")
        msg_id = self.calls.new_id()
        frames = build(msg_id)
        size = sum(map(len, frames))
        if size > self.max_message_size:
            raise RequestTooLarge(f"request of {size} bytes exceeds max_message_size {self.max_message_size}")
        if self.calls.add(msg_id, call, time.monotonic() + timeout):  # before the send: no reply can beat it
            self._expiry_changed.set()  # the reaper sleeps until the earliest expiry: wake it sooner
        if not self._held:  # (else this one must wait its turn: the held ones were sent first)
            endpoint = self._choose()
            try:
                endpoint.channel.send(frames)
            except zmq.Again:
                pass  # no usable connection (ZMQ_IMMEDIATE), or its queue is full
            except zmq.ZMQError as exc:
                raise self._refuse(msg_id, ServiceUnavailable(f"cannot send to {endpoint.address}: {exc}")) from None
            else:
                self._sent(call, endpoint)
                return msg_id
        if not self.available:
            error = self._refuse(msg_id, self._no_connection(f"for {self.connect_timeout:g}s"))
            if getcurrent() is not get_hub():
                gevent.sleep(0)  # let the hub read connection events: a retry loop must not starve it
            raise error
        self._held.append((msg_id, call, build))
        self.stats["held"] += 1
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush)
        return msg_id

    def _sent(self, call: Call, endpoint: Endpoint) -> None:
        call.endpoint = endpoint
        endpoint.inflight += 1
        self.stats["sent"] += 1

    def _refuse(self, msg_id: bytes, error: ServiceUnavailable) -> ServiceUnavailable:
        """Forget a call that could not be sent; returns the error to raise."""
        self.calls.pop(msg_id)
        self.stats["unavailable"] += 1
        return error

    def _no_connection(self, how_long: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"no connection to the service at {','.join(self.addresses)} {how_long} "
                                  "(is it running? ZeroMQ keeps trying to connect)")

    def _connect_deadline(self) -> float | None:
        """When a message waiting for a connection gives up (a time.monotonic() value); None while some
        address has a usable connection."""
        latest = 0.0
        for endpoint in self.endpoints:
            if endpoint.connected:
                return None
            latest = max(latest, endpoint.unconnected_since)
        return latest + self.connect_timeout

    def _flush(self) -> None:
        """Send the held messages, in order, as a connection (or room in its queue) appears; fail them
        when the connect timeout runs out with no connection. Alive only while messages are held."""
        held = self._held
        try:
            while held and not self._closed:
                msg_id, call, build = held[0]
                if msg_id not in self.calls:  # it timed out or was failed meanwhile
                    held.popleft()
                    continue
                endpoint = self._choose()
                if not endpoint.channel.writable():  # (this also lets libzmq attach a new connection)
                    if not self._await_sendable():
                        break
                    continue
                try:
                    endpoint.channel.send(build(msg_id))  # built again: a fresh timestamp and number
                except zmq.Again:
                    continue
                except zmq.ZMQError as exc:
                    held.popleft()
                    self.stats["unavailable"] += 1
                    self._fail(msg_id, ServiceUnavailable(f"cannot send to {endpoint.address}: {exc}"))
                    continue
                held.popleft()
                self._sent(call, endpoint)
            while held and not self._closed:  # the connect timeout ran out
                msg_id, _, _ = held.popleft()
                if msg_id in self.calls:
                    self.stats["unavailable"] += 1
                    self._fail(msg_id, self._no_connection(f"within {self.connect_timeout:g}s"))
        finally:
            self._flusher = None

    def _await_sendable(self) -> bool:
        """Wait for a reason to try a held message again; False when the connect timeout has run out."""
        self._wake.clear()
        deadline = self._connect_deadline()
        if deadline is None:  # connected, and its queue is full
            self._wake.wait(ROOM_POLL)
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._wake.wait(remaining)
        return True

    def _forget(self, msg_id: bytes) -> None:
        call = self.calls.pop(msg_id)
        if call is not None and call.endpoint is not None:
            call.endpoint.inflight -= 1

    # -- receiving (run in the hub by the endpoint's Channel: nothing here may block) -----------------

    def _on_frames(self, endpoint: Endpoint, frames: list[bytes]) -> None:
        try:
            env = envelope.parse_envelope(frames)
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
            response = envelope.parse_reply(env, self.signer, now_ms(), self.window_ms)
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
        if call.endpoint is not None:
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
            header, _ = envelope.parse_control(env, None, now_ms(), self.window_ms)
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
            _, info = envelope.parse_control(env, self.signer, now_ms(), self.window_ms)
        except ServiceError as err:
            self.stats["forged"] += 1
            log.warning("dropped PONG from %s: %s", endpoint.address, err)
            return
        call = self.calls.pop(env.msg_id)
        if call is None:
            return
        if call.endpoint is not None:
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
        me = getcurrent()
        self._in_callbacks.add(me)  # close() waits for running callbacks too
        try:
            callback(value)
        except Exception:
            log.exception("reply callback %r failed", callback)
        finally:
            self._in_callbacks.discard(me)
            if self._quiet is not None:
                self._quiet.set()

    def _on_event(self, endpoint: Endpoint, frames: list[bytes]) -> None:
        """Track the connection; when it drops, fail its calls now instead of at their timeouts."""
        event = parse_monitor_message(frames)["event"]
        if event == USABLE:
            endpoint.connected = True
            self._wake.set()
            log.debug("connected to %s", endpoint.address)
        elif event == zmq.EVENT_DISCONNECTED:
            if endpoint.connected:  # (a failed handshake never made it usable: its wait goes on)
                endpoint.unconnected_since = time.monotonic()
            endpoint.connected = False
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
                    if call.endpoint is None and self._connect_deadline() is not None:
                        # Still held, for want of a connection: say so, not that the service was slow.
                        self.stats["unavailable"] += 1
                        self._fail_call(call, self._no_connection("before the call's timeout"))
                        continue
                    if call.endpoint is not None:
                        call.endpoint.inflight -= 1
                    self.stats["timeouts"] += 1
                    self._fail_call(call, ServiceTimeout(
                        f"no reply from {call.path} at {','.join(self.addresses)} in time; call forgotten"))
            except Exception:  # the reaper is what guarantees no call waits forever: it must not die
                log.exception("failed to expire calls")

    # -- closing ------------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop taking calls and let the outstanding ones finish: wait up to `timeout` seconds (default
        DEFAULT_CLOSE_TIMEOUT, 5 s; 0 not to wait) for their replies and reply callbacks, then fail the rest
        with ServiceUnavailable, stop the greenlets and close the sockets. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        limit = DEFAULT_CLOSE_TIMEOUT if timeout is None else timeout
        if limit > 0 and getcurrent() is not get_hub():  # (the hub cannot wait)
            self._settle(limit)
        self._closed = True
        self._wake.set()
        self._held.clear()
        for _, call in self.calls.drain():
            self._fail_call(call, ServiceUnavailable("the service client was closed"))
        for endpoint in self.endpoints:
            endpoint.socket.disable_monitor()
            endpoint.monitor.close(linger=0)
            endpoint.channel.close(linger=0)
        greenlets = [*self._greenlets, *([self._flusher] if self._flusher is not None else [])]
        gevent.killall(greenlets, block=False)
        self._callbacks.close()
        if self._own_context:
            self.context.term()

    def _settle(self, timeout: float) -> None:
        """Wait until no call is outstanding and no callback runs (but the caller's own), at most `timeout`."""
        give_up = time.monotonic() + timeout
        quiet = self._quiet = Event()
        self.calls.on_empty = quiet.set
        # Callbacks count from their dispatch (Workers.busy), so one not yet started is waited for too; a
        # callback that closes the client does not wait for itself.
        mine = 1 if getcurrent() in self._in_callbacks else 0
        try:
            while True:
                quiet.clear()
                if not self.calls and self._callbacks.busy <= mine:
                    return
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    log.warning("closing with %d calls still out after %gs", len(self.calls), timeout)
                    return
                quiet.wait(remaining)
        finally:
            self.calls.on_empty = None
            self._quiet = None

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
