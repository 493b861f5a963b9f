"""`ServiceConnection`: the transport that makes a Brubeck app a service (one *worker* of it).

It binds a ROUTER at `service_addr`. Each message is checked (shape, signature, age, replay) before any of
it is trusted; each request then runs in a worker greenlet of its own through the app's routes (by path
and METHOD), and the handler's `ServiceResponse` goes back to the caller's connection under the request's
correlation id (waiting for room, up to the request's deadline, when the caller reads slowly). Bad input
never stops the loop: a malformed message is dropped (answered with ERR when it carries an id), a forged
one is refused with an unsigned ERR 401, and both are counted in `stats` and logged.

Many workers (docs/protocol.md §8): at most `capacity` requests run at once and up to `max_queued` more
wait in arrival order, while PINGs go on being answered with the load (`inflight`, `queued`,
`capacity`); past that, ZeroMQ's queues hold the rest. libzmq's own heartbeats run on the socket. The
connection remembers which clients it heard from lately, so that `drain()` can tell each of them it is
about to stop (`DRAIN`) and wait until its calls are answered and each client has acknowledged or gone
quiet; a client sent answers after its DRAIN is sent one more, so that its acknowledgement shows it has
read them (a client with ZMQ_IMMEDIATE set loses unread messages when the connection closes).
A supervisor running several workers of one app names each one's address and the whole set through
the environment (`BRUBECK_SERVICE_BIND`, `BRUBECK_SERVICE_WORKERS`).
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import zmq
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from brubeck import __version__, observe, otel
from brubeck.context import RequestContext
from brubeck.errors import Cancelled, ConfigurationError
from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Channel, Pump, set_heartbeats
from brubeck.wire.tracecontext import parse_traceparent
from brubeckservice import envelope
from brubeckservice.addresses import (
    BIND_ENV,
    WORKERS_ENV,
    describe_process,
    endpoints,
    ipc_inode,
    ipc_listener,
    prepare_ipc,
    reachable_from_other_hosts,
    remove_ipc,
    tcp_listener_pid,
)
from brubeckservice.admission import DEFAULT_AUTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT, Admission
from brubeckservice.backlog import Backlogs
from brubeckservice.clock import now_ms
from brubeckservice.curve import HANDSHAKE_FAILED, CurveServer, Gatekeeper, HandshakeWatch
from brubeckservice.envelope import DEFAULT_MAX_MESSAGE_SIZE
from brubeckservice.errors import (
    AddressInUse,
    AuthenticationError,
    ProtocolError,
    RequestExpired,
    build_error_body,
)
from brubeckservice.forwarding import Forwarding, Mongrel2Server
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.latency import LATENCY_SAMPLES, latency_summary
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Passphrases, ReplayGuard, SeenMacs, Signer

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeckservice.server")

#: How many requests run at once when neither `capacity` nor the app's pool size says.
DEFAULT_CAPACITY = 100
#: Clients remembered at most (for DRAIN); past it, the one heard from least recently is forgotten.
MAX_CLIENTS = 10_000
#: Replies ZeroMQ queues per caller (ZMQ_SNDHWM) before the rest wait in its backlog (backlog.py).
REPLY_HWM = 10_000

#: A client connection, as the ROUTER names it: the routing frames it prefixes to that client's messages.
Peer = tuple[bytes, ...]


@dataclass(slots=True)
class Told:
    """A client sent DRAIN: the last one's id, how many it was sent and acknowledged, and whether it is
    settled ("acked" or "silent") or yet to be ("")."""

    last_id: str = ""
    sent: int = 0
    acked: int = 0
    settled: str = ""


#: The service connections of this process serving, not closed yet (for metrics: brubeckservice.metrics).
LIVE_CONNECTIONS: weakref.WeakSet[ServiceConnection] = weakref.WeakSet()


class ServiceConnection:
    """`ServiceConnection(service_addr, service_response_addr, passphrase)`: pass as a Brubeck `msg_conn`.

    `service_response_addr` is kept for compatibility with the 2013 API; protocol v1 answers on the
    request connection (docs/protocol.md), so it is not bound.

    Keyword arguments:

    - `capacity`: how many requests run at once. None: the app's pool size when it has one
      (`Brubeck(pool=Pool(n))`), else 100. Use 1 for a CPU-bound handler.
    - `max_queued`: how many requests accepted beyond `capacity` may wait, first in first out (reported
      as `queued`; 0 is taken as 1). Once that many wait the socket is not read, so ZeroMQ's queues push
      back on the callers; PINGs are then not answered either, until a queued request has started.
    - `drain_grace`: how long `drain()` waits at most, in seconds (30).
    - `heartbeat`: the heartbeat interval in seconds (0.5). libzmq's heartbeats use it with a timeout of
      twice that and a TTL of six times that; a client silent for the TTL is forgotten.
    - `bind`: the address to bind instead of `service_addr`; else $BRUBECK_SERVICE_BIND; else
      `service_addr`. `service_addr` is then the address bound, `configured_addr` the one given.
    - `workers`: every worker address of this service on this host, listed in PONG; else
      $BRUBECK_SERVICE_WORKERS (comma-separated); else none (and PONG has no `workers`).
    - `curve`: a `brubeckservice.curve.CurveServer`: ZeroMQ CURVE beneath the signatures (its keys, the
      clients allowed, a next key on a second address; docs/protocol.md §1). Without it, a tcp address that
      other hosts can reach is logged as a warning: the traffic is signed but not encrypted.
    - `max_connections`, `auth_timeout`, `idle_timeout`: which connections it keeps (ipc and tcp;
      brubeckservice/admission.py): at most `max_connections` (default: the file-descriptor limit less
      100), none that has sent no correctly signed message `auth_timeout` (10) seconds after connecting,
      none silent for `idle_timeout` (300) seconds. At the limit the oldest connection that never signed
      makes room (docs/security.md).
    """

    base_handler: type[ServiceMessageHandler] = ServiceMessageHandler

    def __init__(self, service_addr: str, service_response_addr: str | None = None, passphrase: Passphrases = "",
                 *, context: zmq.Context[zmq.Socket[bytes]] | None = None, window_ms: int = 30_000,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, capacity: int | None = None,
                 max_queued: int = 1000, drain_grace: float = 30.0, heartbeat: float = 0.5,
                 bind: str | None = None, workers: Sequence[str] | None = None,
                 curve: CurveServer | None = None, max_connections: int | None = None,
                 auth_timeout: float = DEFAULT_AUTH_TIMEOUT, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 mongrel2: Mapping[str, Mongrel2Server] | None = None) -> None:
        if capacity is not None and capacity < 1:
            raise ConfigurationError(f"capacity must be at least 1, got {capacity}")
        if max_queued < 0:
            raise ConfigurationError(f"max_queued must be 0 or more, got {max_queued}")
        if heartbeat <= 0 or drain_grace < 0:
            raise ConfigurationError(f"heartbeat must be positive and drain_grace not negative, got {heartbeat} "
                                     f"and {drain_grace}")
        self.configured_addr = service_addr
        self.service_addr = self._bind_address(service_addr, bind)
        self._check_transport(curve)
        self.service_response_addr = service_response_addr
        listed = os.environ.get(WORKERS_ENV, "")
        self.workers = list(workers) if workers is not None else endpoints(listed) if listed.strip() else []
        self.signer = Signer(passphrase)
        self.guard = ReplayGuard(window_ms)
        self.pings = SeenMacs(window_ms)  # a PING captured and played again gets no PONG
        self._log = LogThrottle(log)  # what peers send is logged at a bounded rate (brubeck.throttle)
        self.window_ms = window_ms
        self.stats: Counter[str] = Counter()
        self.inflight = 0
        self._capacity = capacity
        self.capacity = capacity if capacity is not None else DEFAULT_CAPACITY  # settled by process_messages
        self.max_queued = max_queued
        self.drain_grace = drain_grace
        self.heartbeat = heartbeat
        self.heartbeat_ttl = 6 * heartbeat
        # When it started, and how long its last LATENCY_SAMPLES answered requests ran (s): PONG's figures.
        self._started, self.latencies = time.monotonic(), deque[float](maxlen=LATENCY_SAMPLES)
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self.curve = curve
        self._admission_options = (max_connections, auth_timeout, idle_timeout)
        #: Which connections it keeps (brubeckservice/admission.py); None on inproc, which has none to close.
        self.admission: Admission | None = None
        self._gatekeeper: Gatekeeper | None = None  # the ZAP handler (with CURVE)
        self._watch: HandshakeWatch | None = None  # counts and logs refused handshakes (with CURVE)
        #: The addresses bound, as libzmq names them (`*` ports resolved): service_addr, then curve.next_bind.
        self.bound: list[str] = []
        self.socket = self._open(max_message_size)
        self.channel = Channel(self.socket, max_frames=envelope.FRAMES + envelope.MAX_ROUTING_FRAMES,
                               track_source=self.admission is not None)
        self._ipc_inodes = (ipc_inode(self.service_addr),
                            ipc_inode(curve.next_bind) if curve is not None and curve.next_bind else None)
        self._closed = False
        self._stopped = Event()
        self._pump: Pump[ServiceRequest] | None = None
        #: Clients by the monotonic time they were last heard from, least recent first.
        self._clients: OrderedDict[Peer, float] = OrderedDict()
        self.draining = False
        self._drained = Event()
        self._progress = Event()  # set when a call finishes, a client acknowledges, or we close (drain waits)
        #: Replies waiting for room in slow callers' queues.
        self.backlogs = Backlogs(self.channel, self.stats, self._log, self.service_addr, self._progress.set)
        self._told: dict[Peer, Told] = {}  # the clients sent DRAIN
        self._unread: set[Peer] = set()  # told, and sent answers since their last DRAIN
        self._drains_sent, self._give_up = 0, 0.0  # DRAINs sent; when the drain's grace ends (monotonic)
        #: The requests accepted and not finished, by (caller, correlation id): what CANCEL finds.
        self._serving: dict[tuple[Peer, bytes], RequestContext] = {}
        #: The Mongrel2 servers this service answers browsers through, by name (`forward_to_service`).
        self.forwarding = (Forwarding(mongrel2, self.context, self._reply_to_caller, self.stats, self._log)
                           if mongrel2 else None)

    def __repr__(self) -> str:
        return f"ServiceConnection({self.service_addr!r})"

    def _open(self, max_message_size: int) -> zmq.Socket[bytes]:
        """The ROUTER, configured and bound (or nothing left open, and the error raised)."""
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished caller is an error we log
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        sock.setsockopt(zmq.SNDHWM, REPLY_HWM)
        set_heartbeats(sock, self.heartbeat)
        try:
            curve = self.curve
            if curve is not None:
                self._gatekeeper = curve.secure(sock, self.context)  # its keys, the ZAP domain and handler
                self._watch = HandshakeWatch(self.stats, self._gatekeeper, log)
            if not self.service_addr.startswith("inproc://"):
                # The socket's one monitor (libzmq keeps one per socket): it hands failed handshakes on.
                watch = self._watch
                most, auth_timeout, idle_timeout = self._admission_options
                self.admission = Admission(sock, self.stats, log, max_connections=most, auth_timeout=auth_timeout,
                                           idle_timeout=idle_timeout,
                                           extra_events=HANDSHAKE_FAILED if watch is not None else 0,
                                           on_event=watch.on_event if watch is not None else None,
                                           backlog=self._behind)
            elif self._watch is not None:
                self._watch.monitor(sock)
            self._bind(sock, self.service_addr)
            self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            if curve is not None and curve.next_keys is not None and curve.next_bind is not None:
                # libzmq copies a socket's options into a listener when it binds: this one serves the next key.
                curve.use_key(sock, curve.next_keys)
                self._bind(sock, curve.next_bind)
                self.bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        except BaseException:
            if self.admission is not None:
                self.admission.close()
            self._close_curve()
            sock.close(linger=0)
            if self._own_context:
                self.context.term()
            raise
        return sock

    def _check_transport(self, curve: CurveServer | None) -> None:
        """CURVE where it applies; without it, a warning when other hosts can reach the address."""
        if curve is None:
            if reachable_from_other_hosts(self.service_addr):
                log.warning("%s can be reached from other hosts without CURVE: its traffic is signed but not "
                            "encrypted, and any host that reaches the port can connect (give the ServiceConnection "
                            "curve=, docs/security.md §5)", self.service_addr)
        elif self.service_addr.startswith("inproc://") or (curve.next_bind or "").startswith("inproc://"):
            raise ConfigurationError(f"CURVE does not apply to inproc:// (it has no handshake: libzmq delivers what "
                                     f"any socket of the context sends): bind {self.service_addr} over ipc:// or "
                                     "tcp://, or drop curve=")

    @staticmethod
    def _bind_address(service_addr: str, bind: str | None) -> str:
        if bind:
            return bind
        from_env = os.environ.get(BIND_ENV, "").strip()
        if from_env and from_env != service_addr:
            log.info("binding %s (%s) instead of %s", from_env, BIND_ENV, service_addr)
        return from_env or service_addr

    @property
    def queued(self) -> int:
        """Requests accepted that wait for a free slot."""
        return self._pump.queued if self._pump is not None else 0

    def _bind(self, sock: zmq.Socket[bytes], address: str) -> None:
        """Bind, unless a live process serves `address` already (`AddressInUse`); a stale ipc socket file
        left by a dead process is reclaimed."""
        if address.startswith("ipc://"):
            prepare_ipc(address)
            try:
                live, pid = ipc_listener(address)
            except FileExistsError as exc:
                raise ConfigurationError(f"cannot serve {address}: {exc}") from None
            if live:
                raise AddressInUse(address, pid, describe_process(pid))
            if ipc_inode(address) is not None:
                log.info("reclaiming %s: its socket file was left by a process that is gone", address)
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE:
                pid = tcp_listener_pid(address) if address.startswith("tcp://") else None
                raise AddressInUse(address, pid, describe_process(pid)) from None
            raise ConfigurationError(f"cannot serve {address}: {exc}") from None

    # -- receiving ----------------------------------------------------------------------------------

    def process_messages(self, application: Application) -> None:
        """Serve until `close()`: each request runs in a worker greenlet of its own (see
        brubeck.transports.channel), at most `capacity` at once."""
        if self._capacity is None:
            pool_size = application.pool.size if application.pool is not None else None
            self.capacity = pool_size if pool_size else DEFAULT_CAPACITY
        LIVE_CONNECTIONS.add(self)  # (until close())
        if self.forwarding is not None:
            self.forwarding.start()
        self._pump = Pump(self.channel, self.accept, lambda request: self.answer(application, request),
                          self.capacity, log, max_queued=self.max_queued)
        self._stopped.wait()

    def accept(self, frames: list[bytes]) -> ServiceRequest | None:
        """Check one received message; return the request to serve, or None when it was dealt with here."""
        if len(frames) > envelope.FRAMES + envelope.MAX_ROUTING_FRAMES:
            # (Channel kept only the first of them.) Nothing is answered: an ERR would go back to the
            # "routing" frames, that is to the frames themselves.
            self.stats["malformed"] += 1
            self._refused()
            self._log.log(logging.WARNING, "too many frames", "dropped a message of more than %d frames on %s, "
                          "unanswered", envelope.FRAMES + envelope.MAX_ROUTING_FRAMES, self.service_addr)
            return None
        admission = self.admission
        if admission is not None and not admission.admits(self.channel.source, sum(map(len, frames))):
            self.stats["oversized"] += 1  # (from a connection that has signed nothing: it was closed)
            return None
        try:
            routing, body = envelope.split_routing(frames)
            env = envelope.parse_envelope(body)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            self._refused()
            status = self._reject_malformed(frames, err)
            if status is None:
                self._log.log(logging.WARNING, "malformed, unanswered",
                              "dropped malformed message on %s (no id to answer): %s", self.service_addr, err)
            else:
                self._log.log(logging.WARNING, "malformed, answered", "malformed message on %s, answered ERR %d: %s",
                              self.service_addr, status, err)
            return None
        if env.kind == envelope.REQ:
            return self._open_request(routing, env)
        if env.kind == envelope.PING:
            self._pong(routing, env)
            return None
        if env.kind == envelope.CANCEL:
            self._cancel(routing, env)
            return None
        self.stats["malformed"] += 1
        self._refused()
        self._log.log(logging.WARNING, "unexpected", "refused unexpected %r message %r on %s, answered ERR 400",
                      env.kind, env.msg_id, self.service_addr)
        self._send(routing, envelope.build_error(env.msg_id, 400, f"a service does not accept {env.kind!r}",
                                                  now_ms()))
        return None

    def _open_request(self, routing: list[bytes], env: envelope.Envelope) -> ServiceRequest | None:
        now = now_ms()
        try:
            request = envelope.parse_request(env, self.signer, now, self.guard)
        except AuthenticationError as err:
            self.stats["forged"] += 1
            self._refused()
            self._log.log(logging.WARNING, "forged", "refused request %r on %s, answered ERR 401: %s", env.msg_id,
                          self.service_addr, err)
            self._send(routing, envelope.build_error(env.msg_id, 401, str(err), now))
            return None
        except RequestExpired as err:
            # Its caller has given up: no work, and no answer (docs/protocol.md, REQ). Signed, but possibly a
            # recording (neither age nor replay was checked): no credit to its connection.
            self._heard(tuple(routing))
            self.stats["expired"] += 1
            self._log.log(logging.INFO, "expired", "skipped request %r on %s, not answered: %s", env.msg_id,
                          self.service_addr, err)
            return None
        except ProtocolError as err:
            # Correctly signed, so the caller holds the key: answer with a signed 400 it can trust. (Age and
            # replay were not checked: no credit to its connection.)
            self._heard(tuple(routing))
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "malformed request", "malformed request %r on %s, answered REP 400: %s",
                          env.msg_id, self.service_addr, err)
            bad = ServiceResponse(status_code=400, status_msg="Bad Request",
                                  body=build_error_body("ProtocolError", str(err)))
            self._send(routing, envelope.build_reply(self.signer, env.msg_id, bad, now))
            return None
        request.sender = self._signed(routing)
        if request.reply_to:
            refused = ((400, "this service answers no browser") if self.forwarding is None
                       else self.forwarding.refuse(request))
            if refused is not None:
                status, refusal = refused
                self.stats["forward_refused"] += 1
                self._log.log(logging.WARNING, "forward refused", "refused forwarded request %r on %s, answered "
                              "REP %d: %s", env.msg_id, self.service_addr, status, refusal)
                bad = ServiceResponse(status_code=status, status_msg=HTTPStatus(status).phrase, path=request.path,
                                      body=build_error_body("ForwardRefused", refusal))
                self._send(routing, envelope.build_reply(self.signer, env.msg_id, bad, now))
                return None
        key = (request.sender, env.msg_id)
        if key in self._serving:  # (a buggy client: a CANCEL could not tell the two apart)
            self.stats["malformed"] += 1
            self._log.log(logging.WARNING, "duplicate id", "refused request %r on %s, answered REP 400: its id is "
                          "already in flight on that connection", env.msg_id, self.service_addr)
            bad = ServiceResponse(status_code=400, status_msg="Bad Request", path=request.path, body=build_error_body(
                "ProtocolError", "a request with this id is already in flight on this connection"))
            self._send(routing, envelope.build_reply(self.signer, env.msg_id, bad, now))
            return None
        self._serving[key] = RequestContext(None, request.deadline, traceparent=request.traceparent,
                                            tracestate=request.tracestate)
        return request

    def _signed(self, routing: list[bytes]) -> Peer:
        """The message being accepted passed every check (signature, age, replay): its connection is a key
        holder's, and a client to tell when draining. Returns the peer."""
        peer = tuple(routing)
        self._heard(peer)
        if self.admission is not None:
            self.admission.signed(self.channel.source)
        return peer

    def _refused(self) -> None:
        """The message being accepted was refused: one more against its connection, if it never signed."""
        if self.admission is not None:
            self.admission.refused(self.channel.source)

    def _behind(self) -> bool:
        """Whether messages wait unread (the service is saturated, or the hub was busy)."""
        return self.channel.paused or self.channel.readable()

    def _reject_malformed(self, frames: list[bytes], err: ProtocolError) -> int | None:
        """Answer what looks like our protocol with a usable id with ERR, so the caller fails fast; return
        the status sent, or None when nothing was answered."""
        if len(frames) >= 7 and frames[-6][:3] == envelope.MARKER[:3]:
            msg_id = frames[-4]
            status = 400 if frames[-6] == envelope.MARKER else 505  # 505: another protocol version
            if 0 < len(msg_id) <= envelope.MAX_ID_SIZE:
                self._send(frames[:-6], envelope.build_error(msg_id, status, str(err), now_ms()))
                return status
        return None

    def _control(self, routing: list[bytes], env: envelope.Envelope, now: int,
                 kind: str) -> tuple[envelope.ControlHeader, Any] | None:
        """The header and body of a signed PING or CANCEL; None when it is forged or malformed (counted,
        logged, answered ERR 401)."""
        try:
            return envelope.parse_control(env, self.signer, now, self.window_ms)
        except (AuthenticationError, ProtocolError) as err:
            self.stats["forged"] += 1
            self._refused()
            self._log.log(logging.WARNING, f"forged {kind.lower()}", "refused %s on %s, answered ERR 401: %s",
                          kind, self.service_addr, err)
            self._send(routing, envelope.build_error(env.msg_id, 401, str(err), now))
            return None

    def _pong(self, routing: list[bytes], env: envelope.Envelope) -> None:
        now = now_ms()
        control = self._control(routing, env, now, "PING")
        if control is None:
            return
        header, body = control
        replayed = self.pings.check(env.mac, header.ts, now)
        if replayed is not None:
            # Dropped, not answered: a client that sent the same bytes twice (two 0.4 clients beating in
            # step) only misses a beat, while an ERR 401 would make it take the worker for refusing it.
            self.stats["replayed"] += 1
            self._refused()
            self._log.log(logging.INFO, "replayed ping", "dropped PING %r on %s, unanswered: %s", env.msg_id,
                          self.service_addr, replayed)
            return
        self._signed(routing)
        if self.draining and isinstance(body, dict) and "drain_ack" in body:
            self._acknowledged(tuple(routing), body["drain_ack"])
        self._send(routing, envelope.build_pong(self.signer, env.msg_id, now, self.describe()))

    def _cancel(self, routing: list[bytes], env: envelope.Envelope) -> None:
        """A caller gave up on a request of its own: stop its handler, or drop it if it has not started."""
        control = self._control(routing, env, now_ms(), "CANCEL")
        if control is None:
            return
        _, body = control
        # No replay guard: a CANCEL acts only on a request in flight under its id on its own connection, so
        # a recorded one finds nothing (and sharing the PINGs' guard would let a timeout storm crowd it).
        peer = self._signed(routing)
        ctx = self._serving.get((peer, env.msg_id))  # only the caller's own connection can cancel its call
        if ctx is None:
            self.stats["cancel_unknown"] += 1  # answered already, or its CANCEL overtook nothing: fine
            return
        reason = body.get("reason") if isinstance(body, dict) else None
        why = f"its caller cancelled it ({reason})" if isinstance(reason, str) and reason else "its caller cancelled it"
        self.stats["cancelled"] += 1
        if ctx.active:
            ctx.cancel(why[:200])
        elif not ctx.cancelled:
            ctx.cancelled = why[:200]  # still queued: skipped when its turn comes
        log.info("cancelling request %r on %s: %s (trace %s)", env.msg_id, self.service_addr, why[:200],
                 ctx.trace_id)

    def describe(self) -> dict[str, Any]:
        """What PONG says of this worker (docs/protocol.md §4)."""
        info: dict[str, Any] = {
            "inflight": self.inflight, "queued": self.queued, "capacity": self.capacity, "draining": self.draining,
            "served": self.stats["served"], "errors": self.stats["failed"] + self.stats["errors"],
            "latency_ms": latency_summary(self.latencies),
            "uptime": round(time.monotonic() - self._started, 3),
            "version": __version__, "accepts": list(envelope.ACCEPTED),
        }
        if self.workers:
            info["workers"] = self.workers
        info["stats"] = dict(self.stats)
        if self.signer.other_keys_used:  # during a rotation: messages signed with another than the first
            info["stats"]["other_passphrase"] = self.signer.other_keys_used
        return info

    # -- clients heard from, for DRAIN ----------------------------------------------------------------

    def _heard(self, peer: Peer) -> None:
        """Note that `peer` just sent something (anything counts); forget those silent for the TTL."""
        now = time.monotonic()
        clients = self._clients
        if peer in clients:
            clients.move_to_end(peer)
        clients[peer] = now
        if len(clients) > MAX_CLIENTS:
            clients.popitem(last=False)
        oldest = now - self.heartbeat_ttl
        while clients:  # least recent first: stop at the first one heard from lately (at worst `peer`)
            first, when = next(iter(clients.items()))
            if when >= oldest:
                break
            del clients[first]
        if self.draining and peer not in self._told and not self._drained.is_set():
            self._tell(peer, now)  # it came after the drain began: it must learn it too

    def clients(self) -> list[Peer]:
        """The clients heard from within the heartbeat TTL, least recently heard first."""
        oldest = time.monotonic() - self.heartbeat_ttl
        return [peer for peer, when in self._clients.items() if when >= oldest]

    # -- serving ------------------------------------------------------------------------------------

    def answer(self, application: Application, request: ServiceRequest) -> None:
        """Run the app's handler for one request in the request's context (brubeck.context: its deadline,
        trace and cancellation) and send its reply (if it returned one). A request cancelled, or past its
        deadline, before its turn is not started and not answered; one cancelled while running is stopped
        where it waits and not answered."""
        key = (request.sender, request.msg_id)
        ctx = self._serving.get(key) or RequestContext(None, request.deadline, traceparent=request.traceparent,
                                                       tracestate=request.tracestate)
        try:
            if ctx.cancelled:
                log.info("dropped request %r (%s %s) before it started: %s (trace %s)", request.msg_id,
                         request.method, request.path, ctx.cancelled, ctx.trace_id)
                self._observe(request, ctx, None, "cancelled", 0.0)
                return
            if request.deadline is not None and request.deadline < now_ms():
                self.stats["expired"] += 1  # it waited here for a free slot past its caller's deadline
                self._log.log(logging.INFO, "expired in queue", "skipped request %r (%s %s), not answered: its "
                              "caller's deadline passed while it waited for a free slot (trace %s)", request.msg_id,
                              request.method, request.path, ctx.trace_id)
                self._observe(request, ctx, None, "expired", 0.0)
                return
            self._run(application, request, ctx)
        finally:
            if self._serving.get(key) is ctx:
                del self._serving[key]

    def _run(self, application: Application, request: ServiceRequest, ctx: RequestContext) -> None:
        self.inflight += 1
        started = time.perf_counter()
        outcome, status = "failed", None
        received = parse_traceparent(request.traceparent, request.tracestate) if otel.enabled() else None
        try:
            with otel.service_request(received, self.service_addr, request.path, request.method) as span, \
                    ctx.entered():  # (the span ends outside: a processor that waits is not cancelled)
                if span is not None:
                    ctx.trace = span.trace  # what the calls it makes carry on
                response = application.handle(request)
                if span is not None and isinstance(response, ServiceResponse):
                    span.set_status_code(response.status_code)
            self.stats["served"] += 1
            if response is None:
                outcome = "deferred"
            else:
                self.reply(request, response)  # (one that cannot be sent raises: reported as failed)
                # What was sent: anything but a ServiceResponse went as a 500.
                status = response.status_code if isinstance(response, ServiceResponse) else 500
                outcome = "answered"
        except Cancelled as stopped:
            outcome = "cancelled"
            log.info("stopped request %r (%s %s), not answered: %s (trace %s)", request.msg_id, request.method,
                     request.path, stopped, ctx.trace_id)
        except Exception:  # handle() answers handler errors itself; this is a bug in the transport
            self.stats["errors"] += 1
            log.exception("failed to serve %s %s (trace %s)", request.method, request.path, ctx.trace_id)
        finally:
            self.inflight -= 1
            took = time.perf_counter() - started
            if status is not None:
                self.latencies.append(took)
                if status >= 500:
                    self.stats["failed"] += 1  # answered with a server error (a handler that raised: 500)
            self._observe(request, ctx, status, outcome, took)
            if self.draining:
                self._progress.set()

    def _observe(self, request: ServiceRequest, ctx: RequestContext, status: int | None, outcome: str,
                 took: float) -> None:
        """Tell the observers of served requests (brubeck.observe: the access log, metrics)."""
        if observe.wanted(observe.SERVED):
            observe.report(observe.SERVED, observe.ServedRequest(
                service=self.bound[0] if self.bound else self.service_addr, path=request.path,
                method=request.method, route=ctx.route, status=status, outcome=outcome, duration=took,
                trace_id=ctx.trace_id))

    def reply(self, message: Any, response: Any) -> None:
        """Send `response` to the caller of `message` (a handler may call this later itself); for a
        forwarded request, to the browser through Mongrel2 (and a short REP to the caller)."""
        if getattr(message, "reply_to", "") and self.forwarding is not None:
            self.forwarding.answer(message, response)
            return
        self._reply_to_caller(message, response)

    def _reply_to_caller(self, message: Any, response: Any) -> None:
        if not isinstance(response, ServiceResponse):
            log.error("handler for %s returned %.60r, not a ServiceResponse (use self.render())",
                      message.path, response)
            response = ServiceResponse(status_code=500, status_msg="Handler returned no ServiceResponse",
                                       path=message.path,
                                       body=build_error_body("TypeError", "handler did not return render()"))
        now = now_ms()
        # A request without a deadline gets the replay window: its caller's view of "too late" anyway.
        deadline = message.deadline if message.deadline is not None else now + self.window_ms
        self._send(list(message.sender), envelope.build_reply(self.signer, message.msg_id, response, now), deadline)

    def _send(self, routing: list[bytes], frames: list[bytes], deadline: int | None = None) -> None:
        """Send to one caller. When its queue is full (it sends faster than it reads replies), a reply with
        a `deadline` joins that caller's backlog (brubeckservice/backlog.py) and the worker goes on; what
        the hub sends (PONG, ERR) is dropped then. A caller that is gone (EHOSTUNREACH) is not waited for."""
        message = [*routing, *frames]
        peer = tuple(routing)
        if self.draining and frames[1] != envelope.PONG:
            self._unread.add(peer)  # (see _await_settled)
        backlogs = self.backlogs
        if peer not in backlogs:
            # With the other replies of this turn of the loop (one wake-up of libzmq's I/O thread for all).
            self.channel.send_soon(message, partial(self._unsent, peer, deadline))
        elif deadline is None or getcurrent() is get_hub():
            backlogs.dropped(1, "the caller's queue is full")
        else:
            backlogs.add(peer, message, deadline)

    def _unsent(self, peer: tuple[bytes, ...], deadline: int | None, message: Sequence[bytes],
                error: zmq.ZMQError) -> None:
        """A reply that could not be queued when flushed: it waits in the caller's backlog when it has a
        deadline and the caller's queue is full; else (a PONG or ERR of the hub's, a caller gone) dropped."""
        if isinstance(error, zmq.Again) and deadline is not None:
            self.backlogs.add(peer, list(message), deadline)
        else:
            self.backlogs.dropped(1, "the caller's queue is full" if isinstance(error, zmq.Again) else str(error))

    # -- draining -------------------------------------------------------------------------------------

    def drain(self, grace: float | None = None) -> None:
        """Stop in order (docs/protocol.md, DRAIN); blocks the calling greenlet, then the caller closes.

        Sends DRAIN to every client heard from within the heartbeat TTL (and to any that turns up later),
        goes on serving every request that arrives, and returns once nothing is running or queued and each
        client told has acknowledged (a PING with `{"drain_ack": true}`, or naming the DRAIN's id) or been
        silent for the TTL; or when `grace` seconds (default `drain_grace`) have passed, or when the
        connection is closed meanwhile. A client answered after its DRAIN gets a last one once nothing
        runs, and must acknowledge that too.
        """
        if self._closed:
            return
        if self.draining:  # drained, or another greenlet is draining: wait for that one
            self._drained.wait()
            return
        started = time.monotonic()
        give_up = self._give_up = started + (self.drain_grace if grace is None else grace)
        self.draining = True
        for peer in self.clients():
            self._tell(peer, started)
        log.info("draining %s: told %d clients; %d calls in flight, %d queued", self.service_addr,
                 len(self._told), self.inflight, self.queued)
        try:
            self._await_settled(give_up)
        finally:
            self._drained.set()
        how = Counter(told.settled for told in self._told.values())
        log.info("drained %s in %.2fs: %d clients acknowledged, %d went silent", self.service_addr,
                 time.monotonic() - started, how["acked"], how["silent"])

    def _await_settled(self, give_up: float) -> None:
        while True:
            self._progress.clear()
            now = time.monotonic()
            if self._closed:
                log.warning("drain of %s cut short by close: %d calls still running, %d queued",
                            self.service_addr, self.inflight, self.queued)
                return
            wake = give_up
            for peer, told in self._told.items():
                if not told.settled:
                    last = self._clients.get(peer)
                    if last is None or now - last > self.heartbeat_ttl:
                        told.settled = "silent"
                    else:
                        wake = min(wake, last + self.heartbeat_ttl)
            idle = self.inflight == 0 and self.queued == 0 and not len(self.backlogs)
            if idle and self._unread:
                # A client that set ZMQ_IMMEDIATE (as §1 advises) loses what it has not read yet when the
                # connection closes, so answers sent since its DRAIN may still be lost. One more DRAIN after
                # them, acknowledged, shows they were read (one connection keeps its order).
                unread, self._unread = self._unread, set()
                for peer in unread:
                    if peer in self._told:
                        self._tell(peer, now)
                continue
            unsettled = sum(not told.settled for told in self._told.values())
            if idle and not unsettled:
                return
            if now >= give_up:
                log.warning("drain of %s: the grace period ended with %d calls still running, %d queued and %d "
                            "clients yet to acknowledge; closing anyway", self.service_addr, self.inflight,
                            self.queued, unsettled)
                return
            self._progress.wait(max(0.0, wake - now) + 0.001)  # (just past a TTL, not just before it)

    def _tell(self, peer: Peer, now: float) -> None:
        """Send DRAIN to one client, which then has to settle (unless it is gone already)."""
        self._drains_sent += 1
        drain_id = f"drain-{self._drains_sent}"
        info = {"grace": round(max(0.0, self._give_up - now), 3), "inflight": self.inflight}
        frames = envelope.build_drain(self.signer, drain_id.encode(), now_ms(), info)
        told = self._told.get(peer)
        try:
            self.channel.send([*peer, *frames])
        except zmq.Again:
            # Its queue is full: no DRAIN, so no acknowledgement; it settles by going silent (or the grace
            # period ends).
            log.warning("could not send DRAIN to %r on %s: its queue is full", peer, self.service_addr)
        except zmq.ZMQError as err:  # EHOSTUNREACH: it is gone, nothing to wait for
            log.debug("no DRAIN for %r on %s: %s", peer, self.service_addr, err)
            if told is not None and not told.settled:
                told.settled = "silent"
            return
        if told is None:
            told = self._told[peer] = Told()
        told.last_id, told.sent, told.settled = drain_id, told.sent + 1, ""

    def _acknowledged(self, peer: Peer, ack: object) -> None:
        """A PING's `drain_ack`: the id of the DRAIN it acknowledges, or `true` (docs/protocol.md §4), which
        settles the client once it has acknowledged each DRAIN it was sent."""
        told = self._told.get(peer)
        if told is None or told.settled:
            return
        if ack is True:
            told.acked += 1
            done = told.acked >= told.sent
        else:
            done = ack == told.last_id
        if done:
            told.settled = "acked"
            self._progress.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        LIVE_CONNECTIONS.discard(self)
        self._serving.clear()
        self._progress.set()  # a drain in progress returns
        self._stopped.set()
        self._log.close()
        if self._pump is not None:
            self._pump.close()
        self.backlogs.close()
        if self.admission is not None:
            self.admission.close()  # (its monitor goes before the socket)
        # Answers already sent (the last ones of a drain) get a second to leave; linger 0 would drop them.
        self.channel.close(linger=1000)
        self._close_curve()
        if self.forwarding is not None:
            self.forwarding.close()
        remove_ipc(self.service_addr, self._ipc_inodes[0])
        if self.curve is not None and self.curve.next_bind is not None:
            remove_ipc(self.curve.next_bind, self._ipc_inodes[1])
        if self._own_context:
            self.context.term()

    def _close_curve(self) -> None:
        """Stop the handshake monitor and the ZAP handler: their sockets must be closed before the context."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._gatekeeper is not None:
            self._gatekeeper.close()
            self._gatekeeper = None
