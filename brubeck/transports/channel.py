"""Fast message I/O for gevent programs on ZeroMQ sockets, and the workers that handle what arrives.

Why not simply zmq.green: it wraps every frame's send and recv in three Python layers (green -> sugar ->
backend), re-reads the socket's state after each with pyzmq's enum flags (their `&` runs in Python), and
wakes a reader greenlet through an event per message. Measured on this machine, that was most of the cost
of a service call: 56 us to send and receive a six-frame message on inproc, 7 us through the backend.

So a `Channel` drives the socket itself, through the backend with plain-int flags:
- libzmq delivers multipart messages atomically: once the first frame of a message can be read, the rest
  are already here; once the first frame is accepted for sending, the rest will be. Nothing ever waits in
  the middle of a message.
- Receiving is event-driven: a libev watcher on the socket's FD runs `_drain` in the hub, which reads every
  waiting message and hands each to `on_message`. The FD is edge-triggered and any call on the socket may
  consume the edge, so after a send the channel checks for waiting messages itself and, if there are any,
  schedules `_drain`. `on_message` runs in the hub: it must not block (set a result, dispatch to a worker).
- Sending never waits: `send` raises `zmq.Again` when the message cannot be queued now; callers decide.

`Workers` run handlers in reusable greenlets: each message gets a greenlet of its own for as long as it is
being handled (a slow handler holds up nothing), and a greenlet that finishes parks and takes the next
message, so a request costs two greenlet switches instead of a new greenlet and a trip through the event
loop (measured: ~95 -> ~55 us of service CPU per call). Dispatching from the hub switches straight into the
worker, so a request starts at once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, cast

import zmq
from gevent.hub import Waiter, get_hub
from greenlet import GreenletExit, getcurrent, greenlet
from zmq.backend import Socket as BackendSocket

from brubeck.types import Application

T = TypeVar("T")

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_SRCFD = int(zmq.SRCFD)
_backend_send = BackendSocket.send
_backend_recv = BackendSocket.recv
_backend_get = BackendSocket.get

#: Messages `_drain` reads before yielding to the event loop, so a flood cannot starve timers and I/O.
BATCH = 256
#: Messages `Channel.send_soon` holds at most: at this many it sends them at once.
OUTBOX_MAX = 64

OnMessage = Callable[[list[bytes]], None]
#: What `Channel.send_soon` calls with a message it could not send, and why.
Unsent = Callable[[Sequence[bytes], zmq.ZMQError], None]


def set_heartbeats(socket: zmq.Socket[bytes], interval: float) -> int:
    """Turn on ZMTP heartbeats on `socket`: a PING every `interval` seconds, the connection dropped after twice
    that without traffic, and the peer told to drop it after six times that (capped at libzmq's largest TTL,
    6553.5 s). libzmq answers them in its I/O thread, so a handler holding the CPU keeps its connections.
    Returns the interval in milliseconds."""
    interval_ms = max(1, round(interval * 1000))
    socket.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 2 * interval_ms)
    socket.setsockopt(zmq.HEARTBEAT_TTL, min(6 * interval_ms, 6_553_500))
    return interval_ms


class Channel:
    """A ZeroMQ socket moved by the gevent hub: `send` from any greenlet, arrivals to `on_message`."""

    __slots__ = ("_checking", "_log", "_loop", "_on_message", "_outbox", "_paused", "_watcher", "max_frames",
                 "socket", "source", "track_source")

    def __init__(self, socket: zmq.Socket[bytes], on_message: OnMessage | None = None,
                 log: logging.Logger | None = None, max_frames: int | None = None,
                 track_source: bool = False) -> None:
        self.socket = socket
        #: With `track_source`: the file descriptor of the connection the message being delivered came on
        #: (ZMQ_SRCFD; -1 for inproc), for `on_message` to read.
        self.track_source = track_source
        self.source = -1
        #: Frames kept of one message at most: past it, the rest are read and thrown away uncopied, and
        #: `on_message` gets the first `max_frames + 1` (so it can tell, and refuse). libzmq bounds each
        #: frame (ZMQ_MAXMSGSIZE), not how many a message has.
        self.max_frames = max_frames
        self._on_message = on_message
        self._log = log or logging.getLogger("brubeck.channel")
        self._loop = get_hub().loop
        self._watcher: Any = None
        self._paused = False
        #: A `_drain` is running, or is scheduled to: it will read what a send may have left unannounced.
        self._checking = False
        #: Messages `send_soon` queued for this turn of the loop, each with what to do when it cannot go.
        self._outbox: list[tuple[Sequence[bytes], Unsent | None]] = []
        if on_message is not None:
            self.start(on_message)

    def start(self, on_message: OnMessage) -> None:
        """Begin handing arriving messages to `on_message` (run in the hub: it must not block)."""
        self._on_message = on_message
        self._watcher = self._loop.io(cast(int, _backend_get(self.socket, zmq.FD)), 1)
        self._watcher.start(self._drain)
        self._schedule_drain()  # messages may be waiting already: their edge is gone

    def _schedule_drain(self) -> None:
        self._checking = True
        self._loop.run_callback(self._drain)

    def readable(self) -> bool:
        return bool(self._events() & _POLLIN)

    def writable(self) -> bool:
        return bool(self._events() & _POLLOUT)

    def _events(self) -> int:
        """ZMQ_EVENTS. Asking processes libzmq's commands, which may consume the FD's edge that would have
        announced a waiting message: when one waits, a drain is scheduled unless one runs or is due (found
        by the bench's 1M-call soak: the service's sweeper asking "messages waiting?" between drains left
        its requests unread for minutes)."""
        events = cast(int, _backend_get(self.socket, _EVENTS))
        if events & _POLLIN and not self._checking and self._on_message is not None and not self._paused:
            self._schedule_drain()
        return events

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue a whole multipart message without waiting; raises zmq.Again when it cannot be queued now.
        What `send_soon` queued goes first (the order of a channel's messages is kept)."""
        if self._outbox:
            self.flush()
        self._send(frames)

    def send_soon(self, frames: Sequence[bytes], unsent: Unsent | None = None) -> None:
        """Send a whole message later in this turn of the event loop, with every other one sent soon, back to
        back. Why: libzmq wakes its I/O thread for a message only when that thread is idle, so messages
        sent in a burst share one wake-up (and one write to the peer), where messages sent one per
        handler, each after a handler's work, cost a wake-up each (measured through Mongrel2: 26 syscalls
        a request with a service call). When the message cannot go then, `unsent(frames, error)` is called
        by whoever flushes, the hub as a rule (zmq.Again: its queue is full; another ZMQError: e.g.
        EHOSTUNREACH); without one, it is logged and dropped."""
        outbox = self._outbox
        outbox.append((frames, unsent))
        if len(outbox) == 1:
            self._loop.run_callback(self.flush)
        elif len(outbox) >= OUTBOX_MAX:
            self.flush()  # (a burst of this many shares the wake-up as well; more would only hold memory)

    def flush(self) -> None:
        """Send what `send_soon` queued, now."""
        outbox, self._outbox = self._outbox, []
        for frames, unsent in outbox:
            if self.socket.closed:
                return
            try:
                self._send(frames)
            except zmq.ZMQError as err:
                if unsent is None:
                    self._log.warning("message dropped: %s", err)
                else:
                    try:
                        unsent(frames, err)
                    except Exception:
                        self._log.exception("failed to handle an unsent message")

    def _send(self, frames: Sequence[bytes]) -> None:
        sock = self.socket
        last = len(frames) - 1
        try:
            for index in range(last):
                _backend_send(sock, frames[index], _SNDMORE_NOBLOCK)
            _backend_send(sock, frames[last], _NOBLOCK)
        finally:
            # Our call may have consumed the edge that would have announced a waiting message. A drain that
            # is running (this send came from a handler it dispatched to) or scheduled reads it anyway; else
            # one is scheduled, once for every send of this turn of the loop (a getsockopt per send cost
            # a syscall each, 1.5 us).
            if not self._checking and self._on_message is not None and not self._paused:
                self._schedule_drain()

    def recv_now(self, checked: bool = False) -> list[bytes] | None:
        """One whole waiting message, or None when none is waiting. `checked`: try to read at once, without
        asking first (ZMQ_EVENTS costs a syscall, 1.5 us; a read that finds nothing costs more, 3.9 us, so
        this pays after a message was just read, when another is likely waiting)."""
        sock = self.socket
        if not checked:
            if not self.readable():
                return None
            frame = _backend_recv(sock, _NOBLOCK, False)
        else:
            try:
                frame = _backend_recv(sock, _NOBLOCK, False)
            except zmq.Again:
                return None
        if self.track_source:
            try:
                self.source = frame.get(_SRCFD)
            except zmq.ZMQError:  # (a ZMTP 1.0 peer's messages carry no metadata: EINVAL)
                self.source = -1
        # Frames (copy=False) know whether more follow: no RCVMORE getsockopt per frame.
        frames = [frame.bytes]
        while frame.more:
            frame = _backend_recv(sock, _NOBLOCK, False)
            frames.append(frame.bytes)
            if self.max_frames is not None and len(frames) > self.max_frames:
                while frame.more:  # (a message is delivered whole: the rest is waiting, not on its way)
                    frame = _backend_recv(sock, _NOBLOCK, False)
                break
        return frames

    def _drain(self, *_: object) -> None:
        on_message = self._on_message
        if on_message is None or self._paused:
            self._checking = False
            return
        self._checking = True  # (sends from the handlers `on_message` starts need no check of their own)
        again = False
        try:
            for count in range(BATCH):
                if self.socket.closed:
                    return
                frames = self.recv_now(count > 0)  # (asked first only when nothing was read yet)
                if frames is None:
                    return
                try:
                    on_message(frames)
                except Exception:  # nothing a peer sends may stop the channel
                    self._log.exception("failed to handle a message")
                if self._paused:
                    return
            again = True
            self._loop.run_callback(self._drain)  # more may be waiting: come back after others ran
        except zmq.ZMQError as err:
            if not self.socket.closed:
                self._log.error("receiving failed: %s", err)
        finally:
            self._checking = again

    @property
    def paused(self) -> bool:
        return self._paused

    def deliver_waiting(self) -> None:
        """Hand every message waiting now to `on_message` at once, as the hub would soon."""
        while self._on_message is not None and not self._paused and not self.socket.closed:
            frames = self.recv_now()
            if frames is None:
                return
            self._on_message(frames)

    def pause(self) -> None:
        """Stop delivering (e.g. while every worker is busy); messages wait in ZeroMQ's queue meanwhile."""
        if self._watcher is not None and not self._paused:
            self._paused = True
            self._watcher.stop()

    def resume(self) -> None:
        if self._watcher is not None and self._paused:
            self._paused = False
            self._watcher.start(self._drain)
            self._schedule_drain()

    def close(self, linger: int | None = None) -> None:
        """Stop delivering, send what `send_soon` queued, and close the socket."""
        if self._outbox and not self.socket.closed:
            self.flush()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None
        self._on_message = None
        self.socket.close(linger=linger)


class Workers(Generic[T]):
    """Reusable greenlets running `handle(item)`, one item per greenlet at a time.

    `dispatch` must be called from the hub (a Channel's `on_message` is). With a `limit`, at most that many
    items are handled at once; past it, `dispatch` returns False and the caller should pause its input
    until `on_free` (called when a worker finishes and nothing is queued) says a worker is available.
    """

    def __init__(self, handle: Callable[[T], None], limit: int | None = None,
                 on_free: Callable[[], None] | None = None, log: logging.Logger | None = None) -> None:
        self._handle = handle
        self.limit = limit
        self._on_free = on_free
        self._log = log or logging.getLogger("brubeck.workers")
        self._hub = get_hub()
        self._idle: list[Waiter] = []
        self._parked: list[greenlet] = []
        self.count = 0  # worker greenlets alive
        self.busy = 0  # items being handled now
        self._closed = False

    def dispatch(self, item: T) -> bool:
        """Start handling `item` now; False when the limit is reached and nothing started."""
        if self._closed:
            return False
        if self._idle:
            waiter = self._idle.pop()
            self._parked.pop()
            self.busy += 1
            if getcurrent() is self._hub:
                waiter.switch(item)  # straight into the parked worker; back here when it waits again
            else:
                self._hub.loop.run_callback(waiter.switch, item)
            return True
        if self.limit is not None and self.count >= self.limit:
            return False
        self.count += 1
        self.busy += 1
        worker = greenlet(self._work, parent=self._hub)
        if getcurrent() is self._hub:
            worker.switch(item)
        else:
            self._hub.loop.run_callback(worker.switch, item)
        return True

    def _work(self, item: T) -> None:
        try:
            while True:
                try:
                    self._handle(item)
                except Exception:  # handle() answers errors itself; this is a bug worth a log, not a dead worker
                    self._log.exception("worker failed")
                self.busy -= 1
                if self._closed:
                    return
                waiter = Waiter()
                self._idle.append(waiter)
                self._parked.append(getcurrent())
                if self._on_free is not None:
                    self._on_free()
                item = waiter.get()
        except GreenletExit:
            return
        finally:
            self.count -= 1

    def close(self) -> None:
        """Let parked workers end; busy ones finish their item first."""
        self._closed = True
        parked, self._parked, self._idle = self._parked, [], []
        for worker in parked:
            self._hub.loop.run_callback(worker.throw, GreenletExit)


class Pump(Generic[T]):
    """Messages from a channel, turned into items by `accept`, handled by workers, with backpressure.

    `accept(frames)` runs in the hub and returns the item to handle, or None when it dealt with the
    message itself (answered an error, answered a PING, ignored a notice). With a `limit`, at most that many
    items are handled at once; items accepted beyond it wait in the pump's own queue (`queued`), first in
    first out, while the channel keeps delivering, so messages that `accept` answers itself are still
    answered at full load. Once `max_queued` items wait the channel is paused, so further load waits in
    ZeroMQ's queue (and, past its high-water mark, at the sender); it resumes when one of them has started.
    The default, 0, pauses as soon as one item has to wait (it was read, so it waits here, alone).
    """

    def __init__(self, channel: Channel, accept: Callable[[list[bytes]], T | None], handle: Callable[[T], None],
                 limit: int | None = None, log: logging.Logger | None = None, *, max_queued: int = 0) -> None:
        self.channel = channel
        self._accept = accept
        self._held: deque[T] = deque()
        self.max_queued = max_queued
        self._room = max(1, max_queued)  # items that may wait before the channel is paused
        self._loop = get_hub().loop
        self.workers: Workers[T] = Workers(handle, limit, self._freed, log)
        channel.start(self._on_message)

    @property
    def queued(self) -> int:
        """Items accepted that wait for a free worker."""
        return len(self._held)

    def _on_message(self, frames: list[bytes]) -> None:
        item = self._accept(frames)
        if item is None:
            return
        # Behind waiting items even when a worker is free this instant: arrival order is kept.
        if self._held or not self.workers.dispatch(item):
            self._held.append(item)
            if len(self._held) >= self._room:
                self.channel.pause()

    def _freed(self) -> None:
        if self._held:
            self._loop.run_callback(self._release)

    def _release(self) -> None:
        held = self._held
        while held:
            item = held.popleft()  # off the queue before it runs: `queued` never counts a running item
            if not self.workers.dispatch(item):
                held.appendleft(item)
                break
        if len(held) < self._room:
            self.channel.resume()

    def close(self) -> None:
        self.workers.close()


def serve_with_workers(application: Application, channel: Channel, accept: Callable[[list[bytes]], T | None],
                       handle: Callable[[T], None], log: logging.Logger, *, limit: int | None = None,
                       max_queued: int = 0) -> Pump[T]:
    """A `Pump` for a Brubeck application: at most `limit` requests, by default the app's pool size
    (`Brubeck(pool=Pool(n))`), are handled at once; up to `max_queued` more wait in the pump (default none),
    the rest in ZeroMQ's queue."""
    if limit is None and application.pool is not None:
        limit = application.pool.size
    return Pump(channel, accept, handle, limit, log, max_queued=max_queued)
