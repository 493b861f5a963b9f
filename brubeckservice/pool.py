"""`WorkerPool`: the workers of one service as a client sees them: their sockets, liveness, load and membership.

One DEALER per worker address (libzmq would connect a name to its first DNS record only), each read in the
gevent hub by a `Channel`. The pool decides which worker gets the next call; the client (client.py) keeps
the calls, replies and callbacks. Protocol: docs/protocol.md §8.

Liveness, from two kinds of heartbeat:
- ZMTP heartbeats (set on every DEALER) are answered by libzmq's I/O thread. A dead process, a stopped one
  or a dead network path closes the connection within `heartbeat` + 2 x `heartbeat` (EVENT_DISCONNECTED):
  the worker is *dead*, its calls in flight fail at once (or go once to another worker when idempotent).
  A stopped process's kernel still accepts TCP, so a reconnect is not life: only a completed handshake is.
- Application heartbeats: a PING per worker every `heartbeat`, answered by its event loop with a PONG that
  carries its load and capacity. Any signed message counts. A worker whose connection is up but that has
  not been heard from for `heartbeat_timeout` is *busy* (a handler holds its CPU, or it is stuck): it gets
  no new calls, and its calls in flight wait for their replies, bounded by their own timeouts. It is never
  declared dead for that.
- A worker whose handshake refuses us (CURVE: our key not allowed, a wrong server key, one side without
  CURVE; read from the monitor, curve.py) is *refused* until a handshake succeeds: the calls waiting for a
  worker fail with AuthenticationError once every worker we reached refuses us. Where libzmq gives the
  connection up, we reconnect ourselves, 1 s later and then up to every RETRY_REFUSED_MAX.

Membership: the configured addresses, every record of the DNS names among them (re-resolved every
`resolve_interval`, and soon after a worker is lost), and the sibling workers a worker lists in its PONG.
A worker that leaves the membership gets no new calls and is closed once its calls in flight are done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import gevent
import zmq
from gevent.event import Event
from gevent.hub import get_hub
from zmq.utils.monitor import parse_monitor_message

from brubeck.transports.channel import Channel, set_heartbeats
from brubeckservice import envelope
from brubeckservice.addresses import canonical
from brubeckservice.clock import now_ms
from brubeckservice.curve import HANDSHAKE_FAILED, CurveClient, HandshakeFailure, handshake_failure
from brubeckservice.discovery import Resolver, needs_resolving
from brubeckservice.errors import ServiceError
from brubeckservice.latency import LATENCY_SAMPLES, percentile_ms
from brubeckservice.signing import Signer

log = logging.getLogger("brubeckservice.pool")

#: Milliseconds a closing client's sockets keep trying to deliver what is queued (its last CANCELs).
CLOSE_LINGER = 100
#: Seconds between heartbeats (application PINGs, and ZMTP's own).
DEFAULT_HEARTBEAT = 0.5
#: Seconds between DNS lookups of the names among a client's addresses (CoreDNS's default TTL is 5 s).
DEFAULT_RESOLVE_INTERVAL = 5.0
#: What a worker is assumed to take at once before its first PONG says, and when its PONG does not say.
CAPACITY_BEFORE_REPORT = 1
CAPACITY_UNREPORTED = 100
#: Sibling workers taken from one worker's PONG at most (a PONG is signed, but a broken worker must not
#: make us open thousands of connections).
MAX_LISTED = 64
MAX_ADDRESS = 1024  # characters, for one listed address
#: Seconds after a connection dropped before we reconnect ourselves, if libzmq has not (see _on_event).
RECONNECT_CHECK = 2.0
#: The longest wait, in seconds, between our own reconnects to a worker whose handshake refused us in a way
#: libzmq does not retry (a CURVE key not allowed, a mechanism mismatch): 1 s, doubling to this.
RETRY_REFUSED_MAX = 5.0

# A connection is usable once its ZMTP handshake is done: only then does ZMQ_IMMEDIATE let a message be
# queued to it. libzmq reports that from 4.3 on; older ones report only the transport's connect.
USABLE = zmq.EVENT_HANDSHAKE_SUCCEEDED if zmq.zmq_version_info() >= (4, 3) else zmq.EVENT_CONNECTED

CONNECTING, ALIVE, BUSY, DRAINING, DEAD, REFUSED, LEAVING = (
    "connecting", "alive", "busy", "draining", "dead", "refused", "leaving")


class Worker:
    """One worker address: its socket, connection, reported load, liveness and calls in flight (the count is
    kept by correlation.PendingCalls)."""

    __slots__ = ("address", "capacity", "channel", "connected", "draining", "ever_connected", "handshake_failures",
                 "handshake_refused", "heard_at", "index", "inflight", "latencies", "leaving", "load", "load_mine",
                 "monitor", "reason", "refused", "reported", "retry_at", "socket", "source", "state",
                 "unconnected_since")

    def __init__(self, address: str, source: str, index: int) -> None:
        self.address = address
        self.source = source  # why it is a member: "configured", "dns NAME", "listed by ADDRESS"
        self.index = index
        self.socket: zmq.Socket[bytes] | None = None
        self.channel: Channel | None = None
        self.monitor: Channel | None = None
        # inproc:// reports no connection events, and its queue exists from the connect on.
        self.connected = address.startswith("inproc://")
        self.ever_connected = self.connected
        self.unconnected_since = time.monotonic()  # when it last had (or began waiting for) a connection
        self.heard_at = time.monotonic()  # when it last sent a signed message (or its connection came up)
        self.inflight = 0
        self.capacity = CAPACITY_BEFORE_REPORT
        self.reported: dict[str, Any] = {}  # its last PONG
        self.load = 0  # inflight + queued, for all its clients, as last reported
        self.load_mine = 0  # our calls in flight there when it reported
        self.draining = False
        self.refused: str | None = None  # why it refused our signature, while it does
        self.handshake_refused: str | None = None  # why its handshake (CURVE) refused us, until one succeeds
        self.handshake_failures = 0  # handshakes failed since the last that succeeded
        self.retry_at = 0.0  # when we reconnect, after a refusal libzmq does not retry itself (0: not due)
        self.leaving = False
        self.state = CONNECTING if not self.connected else ALIVE  # as last logged
        self.reason = "connecting"
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def __repr__(self) -> str:
        return f"<Worker {self.address} {self.state} inflight={self.inflight}/{self.capacity}>"

    def free(self) -> int:
        """How many more calls it should be sent now: its capacity less the others' load and ours."""
        others = self.load - self.load_mine
        return self.capacity - (others if others > 0 else 0) - self.inflight

    def current_state(self, now: float, timeout: float) -> str:
        if self.leaving:
            return LEAVING
        if not self.connected:
            if self.handshake_refused is not None:
                return REFUSED
            return DEAD if self.ever_connected else CONNECTING
        if self.refused is not None:
            return REFUSED
        if self.draining:
            return DRAINING
        if now - self.heard_at > timeout:
            return BUSY
        return ALIVE


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A snapshot of one worker, for people: `ServiceClient.workers`."""

    address: str
    state: str  # connecting, alive, busy, draining, dead, refused or leaving (docs/protocol.md §8)
    reason: str  # why it is in that state
    inflight: int  # this client's calls in flight there
    capacity: int  # as reported (or assumed before its first report)
    load: int  # its calls in flight and queued, for all its clients, as last reported
    last_heard: float | None  # seconds since it was last heard from (None: never connected)
    latency_p50_ms: float | None  # over its recent replies to this client (round trips)
    latency_p99_ms: float | None
    source: str  # why it is a member
    # From its last PONG (None before the first, or from a worker that does not say):
    served: int | None = None  # requests it ran since it started, for all its clients
    errors: int | None = None  # of those, answered with a 5xx or failed
    served_p50_ms: float | None = None  # how long its recent requests ran there (without the network)
    served_p99_ms: float | None = None
    uptime: float | None = None  # seconds since it started, when it reported
    version: str | None = None  # its brubeck-service version


def sibling_address(listed: str, reporter: str) -> str:
    """A `workers` entry of a PONG as an address to connect to: `tcp://:PORT` (empty host) is the host the
    reporter was reached by."""
    if listed.startswith("tcp://:"):
        host = urlsplit(reporter).hostname or ""
        host = f"[{host}]" if ":" in host else host
        return f"tcp://{host}:{listed[len('tcp://:'):]}"
    return listed


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _reported(pong: dict[str, Any]) -> dict[str, Any]:
    """The WorkerInfo fields a worker's PONG gives, each only when it has the expected type (a PONG is
    signed, but may come from another version)."""
    latency = pong.get("latency_ms")
    latency = latency if isinstance(latency, dict) else {}
    number = (int, float)
    return {"served": _typed(pong.get("served"), int), "errors": _typed(pong.get("errors"), int),
            "served_p50_ms": _typed(latency.get("p50"), number), "served_p99_ms": _typed(latency.get("p99"), number),
            "uptime": _typed(pong.get("uptime"), number), "version": _typed(pong.get("version"), str)}


OnFrames = Callable[[Worker, list[bytes]], None]


class WorkerPool:
    """The workers of one service. `on_frames(worker, frames)` gets every message a worker sends,
    `on_lost(worker)` is called when a worker's connection drops, `on_ready()` when a worker may have room
    (a connection came up, a report arrived, a busy one answered again)."""

    def __init__(self, addresses: Sequence[str], *, context: zmq.Context[zmq.Socket[bytes]],
                 signer: Signer, on_frames: OnFrames, on_lost: Callable[[Worker], None],
                 on_ready: Callable[[], None], heartbeat: float = DEFAULT_HEARTBEAT,
                 heartbeat_timeout: float | None = None, resolver: Resolver | None = None,
                 resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
                 max_reply_size: int = envelope.DEFAULT_MAX_MESSAGE_SIZE, curve: CurveClient | None = None) -> None:
        self.context = context
        self.curve = curve
        self.max_reply_size = max_reply_size
        self.signer = signer
        self.heartbeat = heartbeat
        self.heartbeat_timeout = 3 * heartbeat if heartbeat_timeout is None else heartbeat_timeout
        self.resolve_interval = resolve_interval
        self._on_frames = on_frames
        self._on_lost = on_lost
        self._on_ready = on_ready
        self.workers: list[Worker] = []
        self._by_address: dict[str, Worker] = {}
        self._overlisted: set[str] = set()  # workers whose PONG listed more than MAX_LISTED
        self._indexes = 0
        self._closed = False
        self.started_at = time.monotonic()
        self._names = [a for a in addresses if needs_resolving(a)]
        self._static = [canonical(a) for a in addresses if a not in self._names]
        self._resolved: dict[str, set[str]] = {name: set() for name in self._names}
        self._listed: dict[str, set[str]] = {}  # reporter address -> the siblings it lists
        self._resolver = resolver
        self._resolve_now = Event()
        self._resolve_errors: dict[str, str] = {}
        for address in self._static:
            self._add(address, "configured")
        self._greenlets = [gevent.spawn(self._beat)]
        if self._names:
            if self._resolver is None:
                self._resolver = Resolver()
            self._greenlets.append(gevent.spawn(self._resolve_loop))

    # -- membership --------------------------------------------------------------------------------

    def _add(self, address: str, source: str) -> Worker:
        worker = Worker(address, source, self._indexes)
        self._indexes += 1
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to live connections: no send into the void
        sock.setsockopt(zmq.IPV6, 1)  # (DNS may answer AAAA records: tcp://[fd00::5]:6000)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_reply_size)  # a bigger frame: ZeroMQ drops the connection
        # No ROUTING_ID of our own: the service's ROUTER then makes one up for each connection, which never
        # crosses the wire, so a peer cannot take our slot by connecting first with our id (issue 11).
        if self.curve is not None:
            self.curve.apply(sock)  # (before it connects)
        ivl = set_heartbeats(sock, self.heartbeat)
        # A TCP connect to a host cut off waits for the kernel's SYN retries (1, 3, 7, 15 s...) without this.
        sock.setsockopt(zmq.CONNECT_TIMEOUT, max(1000, 2 * ivl))
        # A refused handshake is reported on the monitor only (libzmq retries, or gives up, quietly).
        monitor = sock.get_monitor_socket(USABLE | zmq.EVENT_DISCONNECTED | HANDSHAKE_FAILED)
        # Replies and connection events are handled in the hub as they arrive (brubeck's Channel):
        # no listener greenlet stands between a reply and its caller.
        worker.socket = sock
        worker.channel = Channel(sock, partial(self._on_frames, worker), log=log, max_frames=envelope.FRAMES)
        worker.monitor = Channel(monitor, partial(self._on_event, worker), log=log)
        sock.connect(address)
        self.workers.append(worker)
        self._by_address[address] = worker
        if worker.connected:  # inproc
            self._ping(worker)
        if source != "configured":
            log.info("worker %s joined (%s)", address, source)
        return worker

    def _sync(self) -> None:
        """Make the workers match the membership: add the new, let the gone ones leave."""
        wanted: dict[str, str] = {a: "configured" for a in self._static}
        for name, found in self._resolved.items():
            for address in found:
                wanted.setdefault(address, f"dns {name}")
        for reporter, listed in self._listed.items():
            for address in listed:
                wanted.setdefault(address, f"listed by {reporter}")
        for address, source in wanted.items():
            worker = self._by_address.get(address)
            if worker is None:
                self._add(address, source)
            elif worker.leaving:
                worker.leaving = False
                worker.source = source
                self._note(worker, "back in the membership")
        for worker in list(self.workers):
            if worker.address not in wanted and not worker.leaving:
                worker.leaving = True
                self._note(worker, f"no longer listed ({worker.source})")
                self._retire_if_idle(worker)
        self._on_ready()

    def _retire_if_idle(self, worker: Worker) -> None:
        if worker.leaving and worker.inflight == 0:
            self._remove(worker)

    def _remove(self, worker: Worker) -> None:
        self.workers.remove(worker)
        del self._by_address[worker.address]
        self._close_worker(worker)
        log.info("worker %s left: closed", worker.address)

    def _resolve_loop(self) -> None:
        resolver = self._resolver
        assert resolver is not None
        while not self._closed:
            for name in self._names:
                try:
                    found = set(resolver.resolve(name))
                except ServiceError as err:
                    # Keep the last answer: a DNS hiccup must not take every worker away.
                    if self._resolve_errors.get(name) != str(err):
                        log.warning("cannot resolve %s, keeping its %d workers: %s", name,
                                    len(self._resolved[name]), err)
                    self._resolve_errors[name] = str(err)
                    continue
                if self._resolve_errors.pop(name, None) is not None:
                    log.info("%s resolves again", name)
                self._resolved[name] = found
            if self._closed:
                return
            self._sync()
            self._resolve_now.clear()
            self._resolve_now.wait(self.resolve_interval)
            if self._resolve_now.is_set():
                gevent.sleep(min(1.0, self.resolve_interval))  # at most one lookup a second after losses

    # -- liveness ----------------------------------------------------------------------------------

    def _ping(self, worker: Worker, body: dict[str, Any] | None = None) -> None:
        if worker.channel is None:
            return
        # Random, not counted: a service refuses a PING it has seen (by its MAC), and two clients' PINGs
        # signed in the same millisecond must differ (docs/protocol.md §4).
        msg_id = b"hb-" + os.urandom(8).hex().encode("ascii")
        # No usable connection, or its queue is full: the next beat tries again.
        with contextlib.suppress(zmq.ZMQError):
            worker.channel.send(envelope.build_ping(self.signer, msg_id, now_ms(), body))

    def _beat(self) -> None:
        """Every `heartbeat`: a PING to each connected worker, and the states that time changes (busy)."""
        while not self._closed:
            gevent.sleep(self.heartbeat)
            try:
                for worker in list(self.workers):
                    if worker.connected:
                        self._ping(worker)
                    elif worker.retry_at and time.monotonic() >= worker.retry_at:
                        self._reconnect(worker)
                    self._note(worker)
                    self._retire_if_idle(worker)
            except Exception:  # the heartbeat must not die
                log.exception("heartbeat failed")

    def heard(self, worker: Worker, now: float) -> None:
        """A signed message came from `worker` (at `now`, a time.monotonic() value)."""
        worker.heard_at = now
        if worker.state is BUSY:
            self._note(worker, "answering again")
            self._on_ready()

    def report(self, worker: Worker, info: Any) -> None:
        """Its PONG: load, capacity, draining, and the sibling workers it lists."""
        if not isinstance(info, dict):
            return
        worker.reported = info
        capacity = info.get("capacity")
        worker.capacity = capacity if isinstance(capacity, int) and capacity >= 0 else CAPACITY_UNREPORTED
        load = info.get("inflight", 0)
        queued = info.get("queued", 0)
        worker.load = (load if isinstance(load, int) else 0) + (queued if isinstance(queued, int) else 0)
        worker.load_mine = worker.inflight
        if info.get("draining") is True and not worker.draining:
            self.drain_notice(worker, {})  # (its DRAIN did not reach us: no new calls all the same)
        if worker.refused is not None:
            worker.refused = None
            self._note(worker, "accepts our signature again")
        listed = info.get("workers")
        if isinstance(listed, list):
            if len(listed) > MAX_LISTED and worker.address not in self._overlisted:
                self._overlisted.add(worker.address)  # (said once per worker, not at every PONG)
                log.warning("worker %s lists %d workers; taking the first %d", worker.address, len(listed),
                            MAX_LISTED)
            siblings = {canonical(sibling_address(a, worker.address))
                        for a in listed[:MAX_LISTED] if isinstance(a, str) and 0 < len(a) <= MAX_ADDRESS}
            if siblings != self._listed.get(worker.address, set()):
                self._listed[worker.address] = siblings
                self._sync()
        self._on_ready()

    def drain_notice(self, worker: Worker, info: Any, drain_id: bytes | None = None) -> None:
        """It is draining: no new calls. Acknowledge its DRAIN `drain_id` at once: ZeroMQ keeps order on a
        connection, so every REQ we sent reaches it before the acknowledgement, and we have read every
        message it sent before that DRAIN (its last replies, when the DRAIN is its final one)."""
        if not worker.draining:
            worker.draining = True
            grace = info.get("grace") if isinstance(info, dict) else None
            self._note(worker, f"draining (grace {grace}s), {worker.inflight} of our calls in flight there"
                       if grace is not None else f"draining, {worker.inflight} of our calls in flight there")
        if drain_id is not None:
            self._ping(worker, {"drain_ack": drain_id.decode("ascii", "replace")})

    def refuse(self, worker: Worker, why: str, *, handshake: bool = False) -> None:
        """It refused our heartbeat's signature; or (`handshake`) its connection's handshake refused us
        (CURVE), which a handshake that succeeds undoes."""
        if handshake:
            if worker.handshake_refused != why:
                worker.handshake_refused = why
                self._note(worker, f"its handshake refused us: {why}")
                self._on_ready()  # calls waiting for a worker learn of it now
            return
        if worker.refused is None:
            worker.refused = why
            self._note(worker, f"refuses our signature: {why} (is the passphrase the same on both sides?)")

    def _on_event(self, worker: Worker, frames: list[bytes]) -> None:
        message = parse_monitor_message(frames)
        event = message["event"]
        if event == USABLE:
            worker.handshake_refused, worker.handshake_failures, worker.retry_at = None, 0, 0.0
            worker.connected = worker.ever_connected = True
            worker.heard_at = time.monotonic()
            worker.draining = False  # a new process behind the address (a restarted worker)
            worker.capacity, worker.load, worker.load_mine = CAPACITY_BEFORE_REPORT, 0, 0
            self._ping(worker)
            self._note(worker, "connected")
            self._on_ready()
        elif event == zmq.EVENT_DISCONNECTED and worker.connected:
            # (A failed handshake never made it usable: its wait goes on.)
            # Its last replies may be waiting still, read or not: the monitor is another socket, so its
            # event can overtake them. Take them first, so no answered call is failed as lost.
            channel = worker.channel
            while channel is not None and (waiting := channel.recv_now()) is not None:
                self._on_frames(worker, waiting)
            worker.unconnected_since = time.monotonic()
            worker.connected = False
            # libzmq reconnects by itself, except after a protocol error (a frame over ZMQ_MAXMSGSIZE, say),
            # when it gives the connection up for good: then we do, unless a handshake succeeded meanwhile.
            worker.retry_at = worker.unconnected_since + RECONNECT_CHECK
            timer = get_hub().loop.timer(RECONNECT_CHECK, ref=False)
            timer.start(partial(self._reconnect_if_due, worker, timer))
            if worker.draining:
                self._note(worker, "closed after draining, as it announced", logging.INFO)
            else:
                self._note(worker, "connection lost: the process exited or stopped, or the network path failed "
                           "(ZMTP heartbeats)")
            self._on_lost(worker)
            self._resolve_now.set()
            self._retire_if_idle(worker)
            self._on_ready()  # calls waiting for room may now be waiting for a connection: a shorter bound
        elif event & HANDSHAKE_FAILED:
            failure = handshake_failure(int(event), int(message["value"]), self.curve is not None)
            if failure is not None:
                self._handshake_failed(worker, failure)

    def _handshake_failed(self, worker: Worker, failure: HandshakeFailure) -> None:
        """A refusal at once when libzmq gives the connection up; else (it retries) when it happens twice in
        a row, as a process dying mid-handshake looks like one wrong server key."""
        worker.handshake_failures += 1
        if failure.definite:
            # Reconnect ourselves later, so that a key allowed meanwhile is found without a restart.
            worker.retry_at = time.monotonic() + min(RETRY_REFUSED_MAX, 2.0 ** (worker.handshake_failures - 1))
        if failure.definite or worker.handshake_failures >= 2:
            self.refuse(worker, failure.reason, handshake=True)

    def _reconnect_if_due(self, worker: Worker, timer: Any) -> None:
        timer.close()
        if not self._closed and not worker.connected and worker.retry_at and time.monotonic() >= worker.retry_at:
            self._reconnect(worker)

    def _reconnect(self, worker: Worker) -> None:
        worker.retry_at = 0.0
        if worker.socket is None:
            return
        with contextlib.suppress(zmq.ZMQError):
            worker.socket.disconnect(worker.address)
        try:
            worker.socket.connect(worker.address)
        except zmq.ZMQError as exc:
            log.warning("cannot reconnect to %s: %s", worker.address, exc)

    def _note(self, worker: Worker, why: str | None = None, level: int | None = None) -> None:
        """Log a worker's change of state once, with its reason."""
        now = time.monotonic()
        state = worker.current_state(now, self.heartbeat_timeout)
        if state == BUSY and worker.state != BUSY:
            why = (f"no answer to heartbeats for {now - worker.heard_at:.1f}s while its connection is up: a "
                   "handler may hold its CPU; no new calls until it answers")
        if why is None and state == worker.state:
            return
        if why is not None:
            worker.reason = why
        if state != worker.state or why is not None:
            if level is None:
                level = logging.WARNING if state in (DEAD, BUSY, REFUSED) else logging.INFO
            log.log(level, "worker %s is %s: %s", worker.address, state, worker.reason)
        worker.state = state

    # -- choosing ----------------------------------------------------------------------------------

    def choose(self, need_room: bool = True) -> Worker | None:
        """The worker for the next call: alive, with the most free capacity (ties: fewest of our calls in
        flight); None when none has room. Without `need_room` (a PING), any alive one.

        On every call's path, so it reads each worker's state as last noted (`_note` runs on each event that
        changes it, and each heartbeat tick notes a worker gone quiet as busy) instead of the clock."""
        best: Worker | None = None
        best_free = 0 if need_room else -(2**62)
        for worker in self.workers:
            if worker.state is not ALIVE:
                continue
            free = worker.free()
            if free > best_free or (best is not None and free == best_free and worker.inflight < best.inflight):
                best, best_free = worker, free
        return best

    def refusal(self, *, wait_for_connecting: bool = True) -> str | None:
        """Why calls cannot go anywhere, as the message of their AuthenticationError, when the service refuses
        us: every connected worker refuses our signature, or none is connected and the handshakes (CURVE) of
        those that got that far refused us; else None. A worker still on its first connection attempt may yet
        accept us: while one is (and `wait_for_connecting`), refused handshakes are no reason yet."""
        live = [w for w in self.workers if not w.leaving]
        connected = [w for w in live if w.connected]
        if connected:
            if all(w.refused is not None for w in connected):
                return (f"every worker of {self.describe()} refused our signature: {connected[0].refused} (is the "
                        "passphrase the same on both sides?)")
            return None
        refused = [w for w in live if w.handshake_refused is not None]
        if not refused:
            return None
        if wait_for_connecting and any(not w.ever_connected and w.handshake_refused is None for w in live):
            return None
        return f"CURVE handshake with {refused[0].address} refused: {refused[0].handshake_refused}"

    def unconnected_since(self) -> float | None:
        """Since when no worker has had a usable connection (a time.monotonic() value); None while one has."""
        latest = self.started_at
        for worker in self.workers:
            if worker.connected:
                return None
            latest = max(latest, worker.unconnected_since)
        return latest

    def describe(self) -> str:
        names = [*self._static, *self._names]
        return ",".join(names)

    def snapshot(self) -> list[WorkerInfo]:
        now = time.monotonic()
        infos = []
        for worker in self.workers:
            samples = list(worker.latencies)
            infos.append(WorkerInfo(
                address=worker.address, state=worker.current_state(now, self.heartbeat_timeout),
                reason=worker.reason, inflight=worker.inflight, capacity=worker.capacity, load=worker.load,
                last_heard=round(now - worker.heard_at, 3) if worker.ever_connected else None,
                latency_p50_ms=percentile_ms(samples, 0.5), latency_p99_ms=percentile_ms(samples, 0.99),
                source=worker.source, **_reported(worker.reported)))
        return infos

    # -- closing -----------------------------------------------------------------------------------

    def _close_worker(self, worker: Worker, linger: int = 0) -> None:
        if worker.socket is not None:
            with contextlib.suppress(zmq.ZMQError):
                worker.socket.disable_monitor()
        if worker.monitor is not None:
            worker.monitor.close(linger=0)
        if worker.channel is not None:
            worker.channel.close(linger=linger)
        worker.channel = worker.monitor = None
        worker.connected = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._resolve_now.set()
        gevent.killall(self._greenlets, block=False)
        for worker in self.workers:
            self._close_worker(worker, linger=CLOSE_LINGER)
