"""`Admission`: which connections a service keeps, so that peers without the key cannot use up its sockets.

libzmq accepts every connection to a bound ROUTER and offers no call to refuse or close one. Its monitor
reports each connection accepted and closed with the connection's file descriptor, and each message
carries the descriptor it came on (`ZMQ_SRCFD`), so the service can tell, per connection, when it last
sent a correctly signed message. To close one it shuts the descriptor down (shutdown(2), never close(2):
libzmq owns it), which libzmq takes for the peer leaving: it frees the connection, and a genuine client,
whose ZeroMQ socket reconnects by itself, is back a moment later.

The rules (docs/security.md, "Limits"):

- a connection that has sent no correctly signed message (signature, age and replay checks all passed)
  `auth_timeout` seconds after it was accepted is closed (a client of ours PINGs as soon as it connects);
- one that has sent no signed message for `idle_timeout` seconds is closed;
- one that has not signed yet is closed at its `REFUSED_BUDGET`-th refused message, or at once when it
  sends a message larger than `UNSIGNED_MAX_MESSAGE`: closing it makes libzmq free what it buffered of
  that connection, so a peer without the key cannot keep many large messages queued;
- at `max_connections`, a new connection makes room by closing the oldest one that has not signed and is
  older than `ROOM_GRACE` (its first message may still be on its way); when there is none, the newcomer
  is closed instead. Peers without the key therefore only ever crowd out each other.

Connections are judged only while the service has read everything that arrived: a signed message waiting
unread (the service saturated, the hub busy) must not get its connection closed.

Before shutting a descriptor down it checks that it is still the socket it was when accepted (its inode):
libzmq may have closed it and the process reused the number meanwhile. The monitor's events are read from
a pair with no high-water mark: libzmq blocks its I/O thread, and every socket of the context, when a
monitor's queue is full, so a hub busy for a while queues events (one per connection opened or closed)
instead. inproc connections have no descriptor and are not counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import gevent
import zmq
from zmq.utils.monitor import parse_monitor_message

from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Channel

#: Seconds a new connection has to send a correctly signed message.
DEFAULT_AUTH_TIMEOUT = 10.0
#: Seconds a connection may go without a signed message (our clients PING every 0.5 s by default).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Descriptors left to the rest of the process when `max_connections` comes from the limit on them.
FD_RESERVE = 100
#: Refused messages (forged, malformed) a connection that has not signed may send; the next closes it.
REFUSED_BUDGET = 16
#: The largest message a connection that has not signed may send (bytes, all frames); a larger one closes it.
UNSIGNED_MAX_MESSAGE = 64 * 1024
#: Seconds a new connection is safe from being closed to make room.
ROOM_GRACE = 1.0
#: The monitor events read here; the rest of a socket's events can be handed on (`on_event`).
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED

OnEvent = Callable[[int, int, str], None]


def default_max_connections() -> int:
    """The process's soft limit on open files, less FD_RESERVE (at least 16, at most 100,000)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 100_000
    return max(16, min(100_000, soft - FD_RESERVE))


@dataclass(slots=True)
class _Connection:
    accepted_at: float
    inode: int | None  # of its socket, to tell it from a later one under the same descriptor
    signed_at: float | None = None  # when it last sent a correctly signed message
    refused: int = 0  # messages refused before it signed


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def unbounded_monitor(sock: zmq.Socket[bytes], events: int) -> zmq.Socket[bytes]:
    """`sock`'s monitor, as a PAIR with no receive high-water mark (see the module's docstring)."""
    address = f"inproc://brubeck-monitor-{os.urandom(8).hex()}"
    sock.monitor(address, events)
    pair: zmq.Socket[bytes] = sock.context.socket(zmq.PAIR)
    pair.setsockopt(zmq.RCVHWM, 0)
    pair.setsockopt(zmq.LINGER, 0)
    pair.connect(address)
    return pair


class Admission:
    """Tracks `sock`'s connections through its monitor and closes those the rules above say must go.

    The service asks `admits(fd, size)` of each message before it checks anything, and calls `signed(fd)`
    for each message that passed every check and `refused(fd)` for each it refused (`Channel.source`
    tells the descriptor). `backlog()` says whether messages wait unread. `stats` counts
    `connections_closed` by reason; `on_event(event, value, endpoint)` receives the monitor events of
    `extra_events` (e.g. failed handshakes)."""

    def __init__(self, sock: zmq.Socket[bytes], stats: Counter[str], logger: logging.Logger, *,
                 max_connections: int | None = None, auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT, extra_events: int = 0,
                 on_event: OnEvent | None = None, backlog: Callable[[], bool] | None = None) -> None:
        self.max_connections = default_max_connections() if max_connections is None else max_connections
        self.auth_timeout = auth_timeout
        self.idle_timeout = idle_timeout
        self.stats = stats
        self._log = LogThrottle(logger)
        self._on_event = on_event
        self._backlog = backlog
        self._sock = sock
        self.connections: OrderedDict[int, _Connection] = OrderedDict()  # by descriptor, oldest first
        #: Descriptors shut down whose DISCONNECTED is not read yet: what libzmq had queued from them is
        #: dropped unread (no MAC computed for a connection already refused).
        self._cut: set[int] = set()
        self.channel = Channel(unbounded_monitor(sock, EVENTS | extra_events), self._event, log=logger)
        self._sweeper = gevent.spawn(self._sweep_loop)

    def __len__(self) -> int:
        return len(self.connections)

    def _record(self, fd: int) -> _Connection | None:
        """The record of the connection a message just read came on. libzmq's I/O thread writes a
        connection's ACCEPTED event (and the DISCONNECTED of the one that had its descriptor before) to the
        monitor before it delivers any of its messages, so reading the events waiting first makes the
        record the right one, even for a descriptor reused a moment ago. (One getsockopt when none wait.)"""
        if fd < 0:
            return None
        self.channel.deliver_waiting()
        return self.connections.get(fd)

    def signed(self, fd: int) -> None:
        """A correctly signed message came on descriptor `fd`."""
        connection = self._record(fd)
        if connection is not None:
            connection.signed_at = time.monotonic()

    def _unsigned(self, fd: int) -> _Connection | None:
        connection = self._record(fd)
        return connection if connection is not None and connection.signed_at is None else None

    def admits(self, fd: int, size: int) -> bool:
        """Whether to look at a message of `size` bytes from `fd`: not when its connection has not signed
        and the message is larger than UNSIGNED_MAX_MESSAGE (the connection is then closed), nor when it
        comes from a connection closed already."""
        if self._cut and fd in self._cut:
            self.channel.deliver_waiting()  # (its DISCONNECTED, or a new connection's ACCEPTED, may wait)
            if fd in self._cut:
                return False
        if size <= UNSIGNED_MAX_MESSAGE:
            return True
        if fd < 0:
            return False  # (no descriptor: a ZMTP 1.0 peer, which cannot be closed, or nothing to tell)
        connection = self._unsigned(fd)
        if connection is None:
            return True
        self._close(fd, connection, "oversized", "closed a connection that sent a %d-byte message before "
                    "signing any (at most %d)", size, UNSIGNED_MAX_MESSAGE)
        return False

    def refused(self, fd: int) -> None:
        """A message from `fd` was refused (forged, malformed...): at the budget, its unsigned connection goes."""
        connection = self._unsigned(fd)
        if connection is None:
            return
        connection.refused += 1
        if connection.refused >= REFUSED_BUDGET:
            self._close(fd, connection, "refused", "closed a connection that sent %d refused messages and no "
                        "signed one", connection.refused)

    def _event(self, frames: list[bytes]) -> None:
        message = parse_monitor_message(frames)
        event, value = int(message["event"]), int(message["value"])
        if event == zmq.EVENT_ACCEPTED:
            self._cut.discard(value)
            self._accepted(value)
        elif event == zmq.EVENT_DISCONNECTED:
            self._cut.discard(value)
            self.connections.pop(value, None)
        elif self._on_event is not None:
            self._on_event(event, value, message["endpoint"].decode("utf-8", "replace"))

    def _accepted(self, fd: int) -> None:
        connections = self.connections
        connections.pop(fd, None)  # (a descriptor reused before its DISCONNECTED was read)
        now = time.monotonic()
        newcomer = connections[fd] = _Connection(now, _inode(fd))
        if len(connections) <= self.max_connections:
            return
        grace = min(ROOM_GRACE, self.auth_timeout)
        victim = next((old for old, c in connections.items()
                       if c.signed_at is None and now - c.accepted_at >= grace), None)
        if victim is None:
            self._close(fd, newcomer, "over max_connections",
                        "closed a new connection: %d connections are open, none that could make room, and "
                        "max_connections is %d", len(connections) - 1, self.max_connections)
        else:
            self._close(victim, connections[victim], "made room",
                        "closed the oldest connection that never signed a message, to admit a new one (%d "
                        "open, max_connections %d)", len(connections) - 1, self.max_connections)

    def sweep(self) -> None:
        """Close the connections that stayed unsigned past `auth_timeout` or silent past `idle_timeout`."""
        if self._backlog is not None and self._backlog():
            return  # (a signed message may be waiting unread: judge nobody until it is read)
        self.channel.deliver_waiting()  # (events first: a descriptor closed and reused must not be taken for the old)
        now = time.monotonic()
        for fd, connection in list(self.connections.items()):
            if connection.signed_at is None:
                if now - connection.accepted_at >= self.auth_timeout:
                    self._close(fd, connection, "unauthenticated", "closed a connection that sent no signed "
                                "message within %gs (auth_timeout)", self.auth_timeout)
            elif now - connection.signed_at >= self.idle_timeout:
                self._close(fd, connection, "idle", "closed a connection silent for %gs (idle_timeout)",
                            self.idle_timeout)

    def _sweep_loop(self) -> None:
        interval = max(0.05, min(self.auth_timeout, self.idle_timeout) / 4)
        while True:
            gevent.sleep(interval)
            try:
                self.sweep()
            except Exception:  # (the sweeper must outlive anything)
                self._log.logger.exception("connection sweep failed")

    def _close(self, fd: int, connection: _Connection, reason: str, msg: str, *args: object) -> None:
        if self.connections.get(fd) is connection:
            del self.connections[fd]
        self.stats["connections_closed"] += 1
        self.stats[f"connections_closed_{reason.replace(' ', '_')}"] += 1
        self._log.log(logging.WARNING, f"closed ({reason})", msg, *args)
        if connection.inode is None:
            return
        try:
            duplicate = os.dup(fd)
        except OSError:
            return  # (closed meanwhile: nothing to shut down)
        try:
            if _inode(duplicate) != connection.inode:
                return  # (the number was reused: not ours to touch)
            self._cut.add(fd)
            with contextlib.suppress(OSError):
                shut = socket.socket(fileno=duplicate)
                duplicate = -1  # (the socket object owns it now)
                with shut:
                    shut.shutdown(socket.SHUT_RDWR)  # (shutting the duplicate down shuts the connection down)
        finally:
            if duplicate >= 0:
                os.close(duplicate)

    def close(self) -> None:
        self._sweeper.kill(block=False)
        self._log.close()
        with contextlib.suppress(zmq.ZMQError):
            self._sock.disable_monitor()
        self.channel.close(linger=0)
