"""`ServiceClient`: call a service from any gevent program, and wait (`call`) or not (`send`).

Topology: the service's workers each bind a ROUTER; the client connects one DEALER per worker (pool.py:
membership from addresses, DNS names and the siblings a worker lists; liveness from heartbeats; the choice
of worker by free capacity). No REQ/REP lock-step: any number of calls share a socket, told apart by
correlation id. Replies are read in the gevent hub as they arrive (brubeck.transports.channel): each wakes
its waiting caller directly, or (for `send`) runs the reply callback on a recycled greenlet. The calls in
flight on a worker fail the moment its connection drops (or go once to another worker, when idempotent).

A call goes at once to the alive worker with the most free capacity. When none has room (all full, busy,
draining, or not connected yet), it waits in the client's queue (correlation.py: FIFO, at most
`max_queued`), and one flusher greenlet sends it the moment a worker has room: `send` never waits, and
`call` waits only for its reply. Past the bound a call fails at once (ServiceUnavailable). A call waits for
a connection at most `connect_timeout`, counted from when the client began connecting or lost its last
connection; once every worker has been without one for that long, calls fail at once with
ServiceUnavailable until a connection is back (libzmq keeps reconnecting in the background).

Never hang: a call waits at most its timeout (ServiceTimeout, from the reaper greenlet's timer wheel), no
message waits longer than `connect_timeout` for a connection (ServiceUnavailable), `close()` waits at most
its timeout for the calls still out, and nothing the peer sends can stop the reading. Use a client from
the gevent hub (thread) that created it.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

import gevent
import zmq
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from greenlet import getcurrent, greenlet

from brubeck import observe, otel
from brubeck.context import current as current_context
from brubeck.context import new_traceparent
from brubeck.errors import Cancelled
from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Workers
from brubeck.wire.tracecontext import TraceContext
from brubeckservice import envelope
from brubeckservice.addresses import endpoints
from brubeckservice.clock import now_ms
from brubeckservice.correlation import Build, Call, ErrorCallback, PendingCalls, ReplyCallback
from brubeckservice.curve import CurveClient
from brubeckservice.discovery import Resolver
from brubeckservice.envelope import DEFAULT_MAX_MESSAGE_SIZE
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RequestTooLarge,
    ServiceCancelled,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.pool import DEFAULT_HEARTBEAT, DEFAULT_RESOLVE_INTERVAL, Worker, WorkerInfo, WorkerPool
from brubeckservice.signing import Passphrases, Signer

log = logging.getLogger("brubeckservice.client")

#: Seconds a call waits for its reply, unless it or the client says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Seconds a message waits for a connection to the service before failing with ServiceUnavailable.
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Seconds `close()` waits for the calls still out (and their reply callbacks) before failing them.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Calls that may wait in the client for a worker with room; past it, calls fail at once.
DEFAULT_MAX_QUEUED = 1000
#: How often queued messages look again at a live connection whose queue is full. ZeroMQ raises no event for
#: room, and tells a writer of it only once the reader has taken half the queue: the other half keeps the
#: connection busy far longer than this.
ROOM_POLL = 0.005

_REQ, _PING = envelope.REQ, envelope.PING


#: The clients of this process not closed yet (for metrics and status pages: brubeckservice.metrics).
LIVE_CLIENTS: weakref.WeakSet[ServiceClient] = weakref.WeakSet()


def _outcome(error: BaseException) -> str:
    """How a failed call ended, in a word (brubeck.observe.CallMade.outcome)."""
    if isinstance(error, (ServiceTimeout, gevent.Timeout)):
        return "timeout"
    if isinstance(error, (ServiceCancelled, Cancelled, gevent.GreenletExit)):
        return "cancelled"
    if isinstance(error, AuthenticationError):
        return "refused"
    if isinstance(error, ProtocolError):
        return "malformed"
    if isinstance(error, (ServiceUnavailable, RequestTooLarge)):
        return "unavailable" if isinstance(error, ServiceUnavailable) else "too_large"
    return "error"


class ServiceClient:
    """A client of one service (at one or more addresses), signing with the shared `passphrase`.

    `service_addr`: an address, a comma-separated list or a sequence of them; `tcp://NAME:PORT` with a DNS
    name stands for every A/AAAA record of NAME, `srv://NAME` for its SRV records (re-resolved every
    `resolve_interval` seconds by `resolver`, default: the system's DNS servers). `service_response_addr` is
    accepted for compatibility with brubeck-service 2013's two-address API; protocol v1 carries replies on
    the request connection, so it is not used (see docs/protocol.md).
    `timeout` is the default time a call waits for its reply; `connect_timeout` (None:
    DEFAULT_CONNECT_TIMEOUT, 3 s) how long a message waits for a connection to the service; `heartbeat` the
    seconds between heartbeats (a stopped or cut-off worker is found within about 3 of them; one silent
    for `heartbeat_timeout`, default 3 heartbeats, is busy); `max_queued` how many calls may wait for a
    worker with room. `on_reply` receives the replies of `send()` calls that name no callback of their own.
    `curve` (a `brubeckservice.curve.CurveClient`: the service's public key and this client's key pair)
    connects with ZeroMQ CURVE; a handshake the service refuses fails the calls waiting for it with
    AuthenticationError, at once.
    """

    def __init__(self, service_addr: str | Sequence[str], service_response_addr: str | None = None,
                 passphrase: Passphrases = "", *, context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None,
                 on_reply: ReplyCallback | None = None, window_ms: int = 30_000,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_queued: int = DEFAULT_MAX_QUEUED,
                 heartbeat: float = DEFAULT_HEARTBEAT, heartbeat_timeout: float | None = None,
                 resolver: Resolver | None = None, resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
                 max_reply_size: int | None = None, curve: CurveClient | None = None) -> None:
        self.addresses = endpoints(service_addr)
        #: The service as it was given (its addresses, comma-separated): names it in spans and logs.
        self.service = ",".join(self.addresses)
        self.service_response_addr = service_response_addr
        self.signer = Signer(passphrase)
        self.timeout = timeout
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
        self.on_reply = on_reply
        self.window_ms = window_ms
        self.max_message_size = max_message_size
        self.max_reply_size = max_message_size if max_reply_size is None else max_reply_size
        self._log = LogThrottle(log)  # what services send is logged at a bounded rate (brubeck.throttle)
        self.max_queued = max_queued
        self.stats: Counter[str] = Counter()
        self.calls = PendingCalls()
        self.session = os.urandom(8).hex()
        self._seq = 0
        self._sent_seq = 0  # the highest number handed to a worker's channel
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self._closing = False  # close() began: no new calls
        self._closed = False  # close() is done waiting: everything still out fails
        self._expiry_changed = Event()
        self._flusher: gevent.Greenlet[Any, Any] | None = None
        self._wake = Event()  # set when a worker may have room (or the client closes): queued ones may go
        self._in_callbacks: set[greenlet] = set()  # greenlets running a reply or error callback now (for close)
        self._quiet: Event | None = None  # while close() waits: set when a call or a callback finishes
        # Reply and error callbacks run on recycled greenlets: one each while it runs, none created per reply.
        self._callbacks: Workers[tuple[Any, Any]] = Workers(self._run_callback, log=log)
        self.pool = WorkerPool(self.addresses, context=self.context, signer=self.signer,
                               on_frames=self._on_frames, on_lost=self._on_lost, on_ready=self._on_ready,
                               heartbeat=heartbeat, heartbeat_timeout=heartbeat_timeout, resolver=resolver,
                               resolve_interval=resolve_interval, max_reply_size=self.max_reply_size, curve=curve)
        self._reaper = gevent.spawn(self._reap)
        LIVE_CLIENTS.add(self)  # (last: only a client built whole is listed)

    def __repr__(self) -> str:
        return f"ServiceClient({','.join(self.addresses)!r}, pending={len(self.calls)})"

    @property
    def pending(self) -> int:
        """Calls sent (or queued for a worker) and not yet answered, timed out or failed."""
        return len(self.calls)

    @property
    def queued(self) -> int:
        """Calls waiting in this client for a worker with room."""
        return self.calls.waiting

    @property
    def endpoints(self) -> list[Worker]:
        """The workers, live objects (see `workers` for snapshots)."""
        return self.pool.workers

    @property
    def workers(self) -> list[WorkerInfo]:
        """Each worker's state: address, alive/busy/draining/dead/..., calls in flight, capacity, load, when
        it was last heard from, recent latency (docs/protocol.md §8)."""
        return self.pool.snapshot()

    @property
    def available(self) -> bool:
        """False when the service is known to be out of reach: no worker has a usable connection and none
        has had one for `connect_timeout`, so a call fails at once. True while connecting."""
        since = self.pool.unconnected_since()
        return since is None or time.monotonic() < since + self.connect_timeout

    # -- calling ------------------------------------------------------------------------------------

    def call(self, path: str, method: str = "request", arguments: dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, conn_id: str = "",
             timeout: float | None = None, idempotent: bool = False) -> ServiceResponse:
        """Send a request and wait (this greenlet only) for its reply, at most `timeout` seconds.

        `idempotent=True` says running it twice does no harm: when its worker is lost while it is in flight,
        it is sent once more, to another worker, instead of failing."""
        request = ServiceRequest(path=path, method=method, arguments=arguments or {}, headers=headers or {},
                                 conn_id=conn_id)
        return self.call_request(request, timeout, idempotent=idempotent)

    def call_request(self, request: ServiceRequest, timeout: float | None = None, *,
                     idempotent: bool = False) -> ServiceResponse:
        """`call` for a ready-made `ServiceRequest`.

        Raises ServiceTimeout (no reply in time), ServiceUnavailable (no connection within the connect
        timeout, it dropped, or the client's queue is full), AuthenticationError (the service refused our
        signature), ProtocolError (the reply is malformed). A reply with an error status is returned, not
        raised: see `ServiceResponse.raise_for_status()`.
        """
        started = time.perf_counter()
        limit = self._limit_observed(request, timeout)
        ctx = current_context()
        with otel.service_call(None if ctx is None else ctx.trace, self.service, request.path,
                               request.method) as span:
            build, trace_id = self._builder(request, limit, None if span is None else span.trace)
            call = Call(request.path, build=build, idempotent=idempotent)
            try:
                response: ServiceResponse = self._wait(call, limit)
            except BaseException as failed:
                if observe.wanted(observe.CALLS):
                    self._observe(request, call, trace_id, started, failed)
                raise
            if span is not None:
                span.set_status_code(response.status_code)
        if observe.wanted(observe.CALLS):
            self._observe(request, call, trace_id, started, response)
        return response

    def send(self, path: str, method: str = "request", arguments: dict[str, Any] | None = None, *,
             headers: dict[str, str] | None = None, conn_id: str = "", timeout: float | None = None,
             on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None,
             idempotent: bool = False) -> bytes:
        """Send a request without waiting; returns its correlation id.

        Never waits: the request is queued to a worker with room, or waits in the client until one has (at
        most the connect timeout for a connection, and its own timeout). The reply goes to `on_reply`
        (default: the client's), run in its own greenlet. A failure after `send` returned goes to
        `on_error` (default: a log line): ServiceUnavailable when no connection came within the connect
        timeout or it dropped, ServiceTimeout when no reply came within `timeout` (a later reply is
        dropped). Raises ServiceUnavailable at once when the service is already known to be out of reach
        (see `available`), the client's queue is full, or the client is closed.
        """
        request = ServiceRequest(path=path, method=method, arguments=arguments or {}, headers=headers or {},
                                 conn_id=conn_id)
        return self.send_request(request, timeout, on_reply=on_reply, on_error=on_error, idempotent=idempotent)

    def send_request(self, request: ServiceRequest, timeout: float | None = None, *,
                     on_reply: ReplyCallback | None = None, on_error: ErrorCallback | None = None,
                     idempotent: bool = False) -> bytes:
        """`send` for a ready-made `ServiceRequest`."""
        limit = self._limit_observed(request, timeout)
        on_reply = on_reply or self.on_reply
        ctx = current_context()
        span = otel.start_service_call(None if ctx is None else ctx.trace, self.service, request.path,
                                       request.method)
        if span is not None:  # (ended by the reply or the failure, in whichever greenlet runs it)
            on_reply, on_error = self._ending(span, on_reply, on_error)
        build, trace_id = self._builder(request, limit, None if span is None else span.trace)
        call = Call(request.path, on_reply=on_reply, on_error=on_error, build=build, idempotent=idempotent)
        if observe.wanted(observe.CALLS):
            on_reply, on_error = self._observing(request, call, trace_id, on_reply, on_error)
            call.on_reply, call.on_error = on_reply, on_error
        try:
            return self._submit(call, limit)
        except BaseException as refused:
            if span is not None:
                span.end(refused)
            if observe.wanted(observe.CALLS):
                self._observe(request, call, trace_id, time.perf_counter(), refused)
            raise

    def ping(self, timeout: float | None = None) -> dict[str, Any]:
        """Ask one alive worker how it is (its PONG: in flight, queued, capacity, counters...), waiting at
        most `timeout` seconds (default: the client's timeout); raises like `call`. It goes the way of a
        call, but needs no free capacity."""
        limit = self.timeout if timeout is None else timeout
        call = Call("PING", kind=_PING, build=lambda msg_id: envelope.build_ping(self.signer, msg_id, now_ms()))
        info: dict[str, Any] = self._wait(call, limit)
        return info

    # -- sending ------------------------------------------------------------------------------------

    def _limit(self, request: ServiceRequest, timeout: float | None) -> float:
        """How long a call may wait: its timeout (else the client's), or what is left of the deadline of the
        request being served (brubeck.context) when that is less. None left: ServiceTimeout at once."""
        limit = self.timeout if timeout is None else timeout
        ctx = current_context()
        if ctx is not None and ctx.deadline is not None:
            limit = ctx.limit(limit)
            if limit <= 0:
                self.stats["past_deadline"] += 1
                raise ServiceTimeout(f"{request.path} not sent: the request being served passed its deadline "
                                     f"(trace {ctx.trace_id})")
        return limit

    def _ending(self, span: otel.Span, on_reply: ReplyCallback | None,
                on_error: ErrorCallback | None) -> tuple[ReplyCallback, ErrorCallback]:
        """Callbacks that end the span of a call sent without waiting, then do what was asked."""
        def replied(response: ServiceResponse) -> Any:
            span.set_status_code(response.status_code)
            span.end()
            return on_reply(response) if on_reply is not None else None

        def failed(error: BaseException) -> Any:
            span.end(error)
            if on_error is not None:
                return on_error(error)
            self._log.log(logging.WARNING, "failed", "call failed: %s", error)
            return None

        return replied, failed

    def _limit_observed(self, request: ServiceRequest, timeout: float | None) -> float:
        """`_limit`, reporting a call refused for want of time (the request it serves is past its deadline)."""
        started = time.perf_counter()
        try:
            return self._limit(request, timeout)
        except ServiceError as refused:
            if observe.wanted(observe.CALLS):
                ctx = current_context()
                trace_id = request.traceparent[3:35] or (ctx.trace_id if ctx is not None else "")
                self._observe(request, None, trace_id, started, refused)
            raise

    def _observing(self, request: ServiceRequest, call: Call, trace_id: str, on_reply: ReplyCallback | None,
                   on_error: ErrorCallback | None) -> tuple[ReplyCallback, ErrorCallback]:
        """Callbacks of a call sent without waiting that tell the observers how it ended, then go on."""
        started = time.perf_counter()

        def replied(response: ServiceResponse) -> Any:
            self._observe(request, call, trace_id, started, response)
            if on_reply is not None:
                return on_reply(response)
            log.info("reply to %s (%d %s) has no handler", response.path, response.status_code, response.status_msg)
            return None

        def failed(error: BaseException) -> Any:
            self._observe(request, call, trace_id, started, error)
            if on_error is not None:
                return on_error(error)
            self._log.log(logging.WARNING, "failed", "call failed: %s", error)
            return None

        return replied, failed

    def _observe(self, request: ServiceRequest, call: Call | None, trace_id: str, started: float,
                 ended: ServiceResponse | BaseException) -> None:
        """Tell the observers of calls (brubeck.observe: the access log, metrics) how this one ended (`call`:
        None for one refused before it was made)."""
        held = None if call is None else call.worker or call.last_worker
        worker = held.address if held is not None else ""
        if isinstance(ended, ServiceResponse):
            status, outcome, error = ended.status_code, "ok", ""
        else:
            status, outcome, error = None, _outcome(ended), str(ended) or type(ended).__name__
        observe.report(observe.CALLS, observe.CallMade(
            service=self.service, worker=worker, path=request.path, method=request.method, status=status,
            outcome=outcome, duration=time.perf_counter() - started, trace_id=trace_id, error=error[:200]))

    def _builder(self, request: ServiceRequest, timeout: float,
                 span: TraceContext | None = None) -> tuple[Build, str]:
        # The caller's request is left as it is (reusable); a retry gets a deadline of its own. The call
        # carries the trace of the request being served on, in a span of its own (`span`, the call's span
        # when tracing is on; else a new span id of that trace, or a new trace).
        deadline = request.deadline if request.deadline is not None else now_ms() + int(timeout * 1000)
        ctx = current_context()
        if request.deadline is None and ctx is not None and ctx.deadline is not None:
            deadline = min(deadline, ctx.deadline)  # (never a millisecond later than the request it serves)
        trace = None  # the request's own, when it has one
        if not request.traceparent:
            # Tracing on: the call's span. Off: nothing records spans here, so the trace goes on as it came
            # (W3C: a participant that records nothing passes the parent on), or a new one starts.
            if span is not None:
                trace = (span.traceparent, span.state)
            elif ctx is not None:
                trace = (ctx.trace.traceparent, ctx.trace.state)
            else:  # (a call made outside any request: a trace of its own)
                trace = (new_traceparent(), "")
        # (a traceparent is 00-TRACEID-SPANID-FLAGS)
        trace_id = trace[0][3:35] if trace is not None else request.traceparent[3:35]

        def build(msg_id: bytes) -> list[bytes]:
            # Numbered at the moment of building, and built when sent (or just before: see `_frames`), so
            # numbers leave in order (the service's replay window).
            self._seq += 1
            return envelope.build_request(self.signer, msg_id, request, now_ms(), self.session, self._seq,
                                           deadline, trace)

        return build, trace_id

    def _frames(self, msg_id: bytes, call: Call) -> list[bytes]:
        """The call's message: the one built when it was submitted while still fresh, else built anew (a
        fresh timestamp for the service's replay window)."""
        frames = call.frames
        # (numbers leave in increasing order, docs/protocol.md §5: frames numbered before a request that
        # has left already, e.g. a call put back behind the queue by `_unsent`, are numbered anew)
        if (frames is None or time.monotonic() - call.built_at > self.window_ms / 4000
                or call.seq <= self._sent_seq):
            assert call.build is not None
            frames = call.frames = call.build(msg_id)
            call.built_at, call.seq = time.monotonic(), self._seq
        return frames

    def _wait(self, call: Call, timeout: float) -> Any:
        waiter = Waiter()
        call.waiter = waiter
        # No timer of its own: the reaper fails the waiter with ServiceTimeout when the call expires.
        msg_id = self._submit(call, timeout)
        reason = "the caller stopped waiting"
        try:
            return waiter.get()
        except Cancelled as stopped:  # the request this call serves was cancelled: say why, one hop on
            reason = str(stopped) or reason
            raise
        finally:
            worker = call.worker
            if self.calls.pop(msg_id) is not None and worker is not None and call.kind == _REQ:
                # Still in flight, and its caller stops waiting (killed, cancelled, a gevent.Timeout): the
                # worker is told, so that it stops the work.
                self._cancel_remote(msg_id, worker, reason)

    def _submit(self, call: Call, timeout: float) -> bytes:
        """Register `call` and queue its message to a worker now, or queue it here for one with room, or
        raise ServiceUnavailable when none can be had. Returns its correlation id."""
        if self._closing:
            raise ServiceUnavailable("the service client is closed")
        msg_id = self.calls.new_id()
        assert call.build is not None
        frames = call.frames = call.build(msg_id)  # built once: sent now, or kept for when it is sent
        call.seq = self._seq
        size = sum(map(len, frames))
        if size > self.max_message_size:
            raise RequestTooLarge(f"request of {size} bytes exceeds max_message_size {self.max_message_size}")
        now = time.monotonic()
        call.built_at = now
        if self.calls.add(msg_id, call, now + timeout):  # before the send: no reply can beat it
            self._expiry_changed.set()  # the reaper sleeps until the earliest expiry: wake it sooner
        if not self.calls.waiting:  # (else this one must wait its turn: the queued ones go first)
            worker = self.pool.choose(call.kind == _REQ)
            if worker is not None and worker.channel is not None:
                # Sent with the other requests of this turn of the loop: one wake-up of libzmq's I/O thread
                # for them all. Counted sent now; one that finds the worker's queue full goes back to the
                # front of the client's queue (`_unsent`).
                self.calls.sent(msg_id, call, worker, now)  # (first: a full outbox sends, and may put it back)
                self.stats["sent"] += 1
                self._sent_seq = call.seq
                worker.channel.send_soon(frames, partial(self._unsent, msg_id, call))
                return msg_id
        self._queue(msg_id, call)
        return msg_id

    def _unsent(self, msg_id: bytes, call: Call, frames: Sequence[bytes], error: zmq.ZMQError) -> None:
        """A request `_submit` counted sent could not be queued when its channel flushed it: to the front of
        the client's queue when the worker's queue was full (ZMQ_SNDHWM) or its connection just went, else
        the call fails (ServiceUnavailable)."""
        worker = call.worker
        if not self.calls.unsent(msg_id, call):
            return
        self.stats["sent"] -= 1
        if isinstance(error, zmq.Again) and not self._closing:
            self.stats["queued"] += 1
            if self._flusher is None:
                self._flusher = gevent.spawn(self._flush)
            return
        self.calls.pop(msg_id)
        self.stats["unavailable"] += 1
        where = worker.address if worker is not None else self.pool.describe()
        self._fail_call(call, ServiceUnavailable(f"cannot send to {where}: {error}"))

    def _queue(self, msg_id: bytes, call: Call) -> None:
        """Queue a call for a worker with room, or refuse it (raise) when it could not go anywhere soon."""
        refused = self.pool.refusal()
        if refused is not None:
            self.calls.pop(msg_id)
            raise AuthenticationError(refused)
        if not self.available:
            error = self._refuse(msg_id, self._no_connection(f"for {self.connect_timeout:g}s"))
            if getcurrent() is not get_hub():
                gevent.sleep(0)  # let the hub read connection events: a retry loop must not starve it
            raise error
        if self.calls.waiting >= self.max_queued:
            raise self._refuse(msg_id, ServiceUnavailable(
                f"every worker of {self.pool.describe()} is at capacity and {self.calls.waiting} calls are "
                f"queued in this client (max_queued={self.max_queued})"))
        self.calls.hold(msg_id, call)
        self.stats["queued"] += 1
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush)

    def _refuse(self, msg_id: bytes, error: ServiceUnavailable) -> ServiceUnavailable:
        """Forget a call that could not be sent; returns the error to raise."""
        self.calls.pop(msg_id)
        self.stats["unavailable"] += 1
        return error

    def _no_connection(self, how_long: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"no connection to the service at {self.pool.describe()} {how_long} "
                                  "(is it running? ZeroMQ keeps trying to connect)")

    def _flush(self) -> None:
        """Send the queued calls, in order, as workers have room; fail them when the connect timeout runs out
        with no connection. Alive only while calls are queued."""
        calls = self.calls
        try:
            while not self._closed:
                first = calls.first_waiting()
                if first is None:
                    break
                msg_id, call = first
                worker = self.pool.choose(call.kind == _REQ)
                if worker is None or worker.channel is None or not worker.channel.writable():
                    if not self._await_room(worker is not None):
                        break
                    continue
                try:
                    worker.channel.send(self._frames(msg_id, call))
                except zmq.Again:
                    continue
                except zmq.ZMQError as exc:
                    calls.pop(msg_id)
                    self.stats["unavailable"] += 1
                    self._fail_call(call, ServiceUnavailable(f"cannot send to {worker.address}: {exc}"))
                    continue
                calls.sent(msg_id, call, worker, time.monotonic())
                self.stats["sent"] += 1
                self._sent_seq = max(self._sent_seq, call.seq)
            while not self._closed:  # no connection came within the connect timeout, or every worker refuses us
                first = calls.first_waiting()
                if first is None:
                    break
                msg_id, call = first
                calls.pop(msg_id)
                refused = self.pool.refusal(wait_for_connecting=False)
                if refused is not None:
                    self._fail_call(call, AuthenticationError(refused))
                else:
                    self.stats["unavailable"] += 1
                    self._fail_call(call, self._no_connection(f"within {self.connect_timeout:g}s"))
        finally:
            self._flusher = None

    def _await_room(self, connected: bool) -> bool:
        """Wait for a reason to try a queued call again; False when it cannot go anywhere (no connection for
        the connect timeout, or the service refuses us: our signature, or our CURVE handshake)."""
        self._wake.clear()
        if self.pool.refusal() is not None:
            return False
        since = self.pool.unconnected_since()
        if since is None:  # connected: every worker is full, busy or draining, or its queue is full
            self._wake.wait(ROOM_POLL if connected else None)
            return True
        remaining = since + self.connect_timeout - time.monotonic()
        if remaining <= 0:
            return False
        self._wake.wait(remaining)
        return True

    def _on_ready(self) -> None:
        if self.calls.waiting:
            self._wake.set()

    # -- receiving (run in the hub by the worker's Channel: nothing here may block) -----------------

    def _on_frames(self, worker: Worker, frames: list[bytes]) -> None:
        try:
            env = envelope.parse_envelope(frames)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "malformed", "dropped malformed message from %s: %s", worker.address, err)
            return
        kind = env.kind
        if kind == envelope.REP:
            self._on_reply(worker, env)
        elif kind == envelope.PONG:
            self._on_pong(worker, env)
        elif kind == envelope.ERR:
            self._on_rejection(worker, env)
        elif kind == envelope.DRAIN:
            self._on_drain(worker, env)
        else:
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "unexpected", "dropped unexpected %r message from %s", kind,
                          worker.address)

    def _on_reply(self, worker: Worker, env: envelope.Envelope) -> None:
        expected = self.calls.get(env.msg_id)
        if expected is None or expected.worker is not worker:
            # Late (timed out, failed), or not ours: dropped before its signature is checked, so that a
            # worker sending replies nobody asked for costs little.
            self.stats["late"] += 1
            self._log.log(logging.WARNING, "late", "dropped reply %r from %s: no call of ours in flight there "
                          "with that id (it timed out or failed, or was never ours)", env.msg_id, worker.address)
            return
        try:
            response = envelope.parse_reply(env, self.signer, now_ms(), self.window_ms)
        except AuthenticationError as err:
            self.stats["forged"] += 1
            self._log.log(logging.WARNING, "forged", "dropped reply from %s that failed verification: %s",
                          worker.address, err)
            return
        except ProtocolError as err:
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "malformed reply", "malformed reply from %s: %s", worker.address, err)
            self._fail(env.msg_id, worker, ProtocolError(f"the service's reply does not parse: {err}"))
            return
        now = time.monotonic()
        self.pool.heard(worker, now)
        call = self.calls.answer(env.msg_id, worker, _REQ)
        if call is None:  # (a PING's id: a REP does not answer it)
            self.stats["late"] += 1
            self._log.log(logging.WARNING, "late", "dropped reply %r from %s: no request of ours has that id",
                          env.msg_id, worker.address)
            return
        worker.latencies.append(now - call.sent_at)
        self.stats["replies"] += 1
        if self.calls.waiting:
            self._wake.set()  # its worker has room again
        if call.resolve(response):
            return
        if call.on_reply is not None:
            self._callbacks.dispatch((call.on_reply, response))
        else:
            log.info("reply to %s (%d %s) has no handler", response.path, response.status_code,
                     response.status_msg)

    def _on_rejection(self, worker: Worker, env: envelope.Envelope) -> None:
        # ERR is unsigned: it can only fail a call in flight on the connection it came on, never deliver data.
        try:
            header, _ = envelope.parse_control(env, None, now_ms(), self.window_ms)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "malformed ERR", "malformed ERR from %s: %s", worker.address, err)
            return
        if env.msg_id.startswith(b"hb-"):  # a heartbeat of ours
            if header.status == 401:
                self.pool.refuse(worker, header.msg)
            return
        call = self.calls.get(env.msg_id)
        if call is None or call.worker is not worker:
            self.stats["late"] += 1
            self._log.log(logging.WARNING, "stray ERR", "dropped ERR %d from %s for a call not in flight there: %r",
                          header.status, worker.address, env.msg_id)
            return
        self._log.log(logging.WARNING, "rejected", "service at %s rejected call %r: %d %s", worker.address,
                      env.msg_id, header.status, header.msg)
        error: ServiceError
        if header.status == 401:
            error = AuthenticationError(f"the service at {worker.address} refused our signature: {header.msg} "
                                        "(is the passphrase the same on both sides?)")
        else:
            error = ProtocolError(f"the service at {worker.address} rejected the request: {header.status} "
                                  f"{header.msg}")
        self._fail(env.msg_id, worker, error)

    def _on_pong(self, worker: Worker, env: envelope.Envelope) -> None:
        try:
            _, info = envelope.parse_control(env, self.signer, now_ms(), self.window_ms)
        except ServiceError as err:
            self.stats["forged"] += 1
            self._log.log(logging.WARNING, "forged PONG", "dropped PONG from %s: %s", worker.address, err)
            return
        self.pool.heard(worker, time.monotonic())
        call = self.calls.answer(env.msg_id, worker, _PING)
        self.pool.report(worker, info)
        if call is not None:
            call.resolve(info)

    def _on_drain(self, worker: Worker, env: envelope.Envelope) -> None:
        try:
            _, info = envelope.parse_control(env, self.signer, now_ms(), self.window_ms)
        except ServiceError as err:
            self.stats["forged"] += 1
            self._log.log(logging.WARNING, "forged DRAIN", "dropped DRAIN from %s: %s", worker.address, err)
            return
        self.pool.heard(worker, time.monotonic())
        if not worker.draining:
            self.stats["drains"] += 1  # (a worker sends one more DRAIN after its last answers: counted once)
        self.pool.drain_notice(worker, info, env.msg_id)

    def _on_lost(self, worker: Worker) -> None:
        """Its connection dropped: its calls in flight fail now instead of at their timeouts, or are sent
        once more elsewhere when idempotent."""
        resent, failed = self.calls.lose(worker)
        if resent or failed:
            log.warning("connection to %s lost with %d calls in flight: %d failed, %d sent again elsewhere",
                        worker.address, len(resent) + len(failed), len(failed), len(resent))
        self.stats["lost"] += len(failed)
        self.stats["resent"] += len(resent)
        for _, call in failed:
            self._fail_call(call, ServiceUnavailable(
                f"connection to the service at {worker.address} lost while {call.path} was in flight (the "
                f"service stopped, the network failed, or it sent a reply over max_reply_size, "
                f"{self.max_reply_size} bytes)"))
        if resent:
            self._wake.set()
            if self._flusher is None and not self._closed:
                self._flusher = gevent.spawn(self._flush)

    def _fail(self, msg_id: bytes, worker: Worker, error: BaseException) -> None:
        call = self.calls.get(msg_id)
        if call is None or call.worker is not worker:
            return
        self.calls.pop(msg_id)
        self._fail_call(call, error)

    def _fail_call(self, call: Call, error: BaseException) -> None:
        if call.fail(error):
            return
        if call.on_error is not None:
            self._callbacks.dispatch((call.on_error, error))
        else:
            self._log.log(logging.WARNING, "failed", "call to %s failed: %s", call.path, error)

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

    def _reap(self) -> None:
        """Fail the calls whose reply did not come in time: a waiting caller gets ServiceTimeout, a
        fire-and-forget call's `on_error` too; the call is forgotten, so a later reply is a late reply."""
        while not self._closed:
            next_expiry = self.calls.next_expiry()
            wait = None if next_expiry is None else max(0.0, next_expiry - time.monotonic())
            self._expiry_changed.clear()
            self._expiry_changed.wait(timeout=wait)
            try:
                for msg_id, call in self.calls.expire(time.monotonic()):
                    if call.worker is None and self.pool.unconnected_since() is not None:
                        # Still queued, for want of a connection: say so, not that the service was slow.
                        self.stats["unavailable"] += 1
                        self._fail_call(call, self._no_connection("before the call's timeout"))
                        continue
                    self.stats["timeouts"] += 1
                    if call.worker is None:
                        error = ServiceTimeout(
                            f"{call.path} waited its whole timeout in this client's queue: no worker of "
                            f"{self.pool.describe()} had room (all at capacity, busy or draining); call forgotten")
                    else:
                        error = ServiceTimeout(f"no reply from {call.path} at {call.worker.address} in time; "
                                               "call forgotten")
                        if call.kind == _REQ:
                            self._cancel_remote(msg_id, call.worker, "timed out")
                    self._fail_call(call, error)
            except Exception:  # the reaper is what guarantees no call waits forever: it must not die
                log.exception("failed to expire calls")

    # -- cancelling ---------------------------------------------------------------------------------

    def cancel(self, msg_id: bytes, reason: str = "cancelled by its caller") -> bool:
        """Give up on an outstanding call (the id `send` returned): it fails with `ServiceCancelled` (its
        `on_error`, or its waiting caller), a later reply is dropped, and the worker running it is told
        (CANCEL), so that it stops it. False when no such call is outstanding. (To stop a sync `call`, kill
        or cancel the greenlet that waits: the worker is told the same way.)"""
        call = self.calls.get(msg_id)
        if call is None:
            return False
        worker = call.worker
        self.calls.pop(msg_id)
        if worker is not None:
            self._cancel_remote(msg_id, worker, reason)
        self._fail_call(call, ServiceCancelled(f"{call.path}: {reason}"))
        return True

    def _cancel_remote(self, msg_id: bytes, worker: Worker, reason: str) -> None:
        """Tell `worker` we gave up on the call `msg_id` (when it said it accepts CANCEL; best effort)."""
        channel = worker.channel
        accepts = worker.reported.get("accepts")
        if channel is None or not isinstance(accepts, list) or "CANCEL" not in accepts:
            return
        try:
            channel.send(envelope.build_cancel(self.signer, msg_id, now_ms(), reason))
        except zmq.ZMQError:
            self.stats["cancels_unsent"] += 1  # its queue is full or it is gone: it will find out itself
        else:
            self.stats["cancels_sent"] += 1

    # -- closing ------------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Stop taking calls and let the outstanding ones finish: wait up to `timeout` seconds (default
        DEFAULT_CLOSE_TIMEOUT, 5 s; 0 not to wait) for their replies and reply callbacks, then fail the rest
        with ServiceUnavailable, stop the greenlets and close the sockets. Safe to call twice."""
        if self._closing:
            return
        self._closing = True
        LIVE_CLIENTS.discard(self)
        limit = DEFAULT_CLOSE_TIMEOUT if timeout is None else timeout
        if limit > 0 and getcurrent() is not get_hub():  # (the hub cannot wait)
            self._settle(limit)
        self._closed = True
        self._wake.set()
        for msg_id, call in list(self.calls):  # (drain() forgets where each call went)
            if call.worker is not None and call.kind == _REQ:
                self._cancel_remote(msg_id, call.worker, "the client closed")
        for _, call in self.calls.drain():
            self._fail_call(call, ServiceUnavailable("the service client was closed"))
        self.pool.close()
        self._log.close()
        greenlets = [self._reaper, *([self._flusher] if self._flusher is not None else [])]
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
