"""Answering a browser from a service, through Mongrel2 (`forward_to_service`; docs/forwarding.md).

A web app behind Mongrel2 sends a request with `reply_to` (the name of a Mongrel2 server this service is
configured with) and `conn_id` (the browser's connection), and sends the browser nothing itself. The
service's handler runs as usual; its answer is published to that server's handler `recv_spec`, where
Mongrel2's SUB socket takes every reply that begins with its `recv_ident`, and the caller gets a short REP
saying the browser was answered (`{"forwarded": true, ...}`).

Strategy:
- One XPUB per configured server, connected at `start()`. An XPUB hears Mongrel2's subscription
  (b"\\x01" + prefix), so we know when a reply would be delivered rather than dropped (PUB/SUB's slow
  joiner). With ZMQ_IMMEDIATE the pipe exists only while connected, so a lost connection arrives as an
  unsubscription too, and nothing is queued for a Mongrel2 that is gone.
- Connection ids restart when Mongrel2 does, so an answer must only go to the Mongrel2 instance its
  request came through: each subscription starts a new *generation*, a request remembers the one it was
  admitted under, and an answer for an earlier one is not published (503 to the caller instead).
- Never publish a malformed reply (Mongrel2 stalls that handler's task 100 ms per one): frames come from
  `build_reply`, responses from brubeck's builders; a `conn_id` that is not a decimal id is refused.
- An answer whose request's deadline has passed is not published: the web app has answered 504 already.
- An error in the protocol's error shape (`{"error": {...}}`: no route, an exception, `render_error`) is
  not published: it goes back in the REP, and the web app answers with its own error page, so a service's
  internals never reach a browser.
- A stream (`ServiceMessageHandler.stream`) publishes its head and first piece at once and the REP right
  after, so the web app's timeout covers only the time to the first byte; later pieces are coalesced into
  at most one message per `flush_interval`, since Mongrel2 queues at most 16 per browser connection.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import zmq
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from brubeck.errors import ConfigurationError
from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Channel, set_heartbeats
from brubeck.wire.http import head_only
from brubeck.wire.mongrel2 import build_reply
from brubeckservice.answers import (
    CLOSE_HINT,
    METHOD_HINT,
    chunk,
    failed_reply,
    forwarded_reply,
    http_answer,
    is_error_reply,
    stream_head,
)
from brubeckservice.clock import now_ms
from brubeckservice.errors import ForwardFailed
from brubeckservice.models import ServiceResponse

log = logging.getLogger("brubeckservice.forwarding")


#: An answer must be published this long before the request's deadline, so that the REP saying so reaches
#: the web app before its own timer answers 504 (its timer wheel fires up to 10 ms late).
DEADLINE_MARGIN_MS = 50
#: After `start()`, how long a forwarded request may wait for Mongrel2's first subscription.
START_GRACE = 2.0
#: Forwarded requests remembered while their handler runs; past it, the oldest is forgotten.
MAX_OUTSTANDING = 100_000
#: A request unanswered this long after its deadline (and not streaming) is forgotten.
FORGET_AFTER_MS = 60_000
_LAST_CHUNK = b"0\r\n\r\n"


# -- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mongrel2Server:
    """A Mongrel2 server a service may answer browsers through: its handler's `recv_spec` (where Mongrel2
    binds its SUB socket) and the handler's `send_ident` (the UUID every reply must start with; configure
    the handler with `recv_ident` equal to it). `flush_interval`: a stream publishes at most one message per
    that many seconds; `stream_timeout`: a stream that gets no piece for that long is cut short."""

    recv_spec: str
    sender: str
    flush_interval: float = 0.02
    stream_timeout: float = 60.0

    def __post_init__(self) -> None:
        if "://" not in self.recv_spec:
            raise ConfigurationError(f"Mongrel2Server needs a ZeroMQ address as recv_spec, not {self.recv_spec!r}")
        if not self.sender or not self.sender.isascii() or any(c.isspace() for c in self.sender):
            raise ConfigurationError(f"Mongrel2Server's sender must be the handler's send_ident (ASCII, no spaces), "
                                     f"not {self.sender!r}")
        if self.flush_interval < 0 or self.stream_timeout <= 0:
            raise ConfigurationError("flush_interval must not be negative and stream_timeout must be positive")


# -- one Mongrel2 server: the XPUB, and Mongrel2's subscription to it -----------------------------------------


class Link:
    """The XPUB connected to one Mongrel2 server's recv_spec. `ready` is set while Mongrel2 subscribes to
    replies beginning with our sender; `generation` counts its subscriptions (one per Mongrel2 instance or
    reconnection)."""

    def __init__(self, name: str, server: Mongrel2Server, throttle: LogThrottle) -> None:
        self.name = name
        self.server = server
        self.sender = server.sender.encode("ascii")
        self.ready = Event()
        self.generation = 0
        self._prefixes: set[bytes] = set()
        self._log = throttle
        self.channel: Channel | None = None

    def open(self, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        sock = context.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, 1000)  # (what close() sends last, a browser's close, still goes)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no pipe, so nothing queued, while not connected
        sock.setsockopt(zmq.XPUB_NODROP, 1)  # a full queue is zmq.Again, not a silent drop
        set_heartbeats(sock, 1.0)  # a Mongrel2 host that vanished is found in about 2 s
        try:
            sock.connect(self.server.recv_spec)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            raise ConfigurationError(f"cannot connect to Mongrel2 server {self.name!r} at "
                                     f"{self.server.recv_spec}: {err}") from None
        self.channel = Channel(sock, self._on_subscription, log)

    def _on_subscription(self, frames: list[bytes]) -> None:
        """(In the hub.) b"\\x01" + prefix subscribes, b"\\x00" + prefix unsubscribes (a lost connection too)."""
        message = frames[0]
        if not message or message[0] not in (0, 1):
            return
        prefix = message[1:]
        if message[0] == 1:
            self._prefixes.add(prefix)
            if not self.sender.startswith(prefix):
                self._log.log(logging.ERROR, "prefix mismatch", "Mongrel2 server %r subscribes to replies beginning "
                              "%r, but ours begin with %r: they would be dropped (make sender the handler's "
                              "send_ident, and recv_ident equal to it)", self.name, prefix[:60], self.server.sender)
            elif not prefix:
                self._log.log(logging.WARNING, "no recv_ident", "Mongrel2 server %r takes every reply (recv_ident ''):"
                              " anyone who can publish there can answer any of its browsers; set recv_ident to %r",
                              self.name, self.server.sender)
        else:
            self._prefixes.discard(prefix)
        subscribed = any(self.sender.startswith(p) for p in self._prefixes)
        if subscribed and not self.ready.is_set():
            self.generation += 1
            self.ready.set()
            log.info("Mongrel2 server %r at %s subscribed: answering its browsers", self.name, self.server.recv_spec)
        elif not subscribed and self.ready.is_set():
            self.ready.clear()
            log.warning("Mongrel2 server %r at %s unsubscribed (stopped, or the connection was lost): its "
                        "forwarded requests are refused until it is back", self.name, self.server.recv_spec)

    def current(self, generation: int) -> bool:
        """Whether a reply for a request admitted under `generation` would reach that Mongrel2 instance now."""
        return self.ready.is_set() and self.generation == generation

    def publish(self, conn_id: str, data: bytes) -> None:
        """Send `data` to one browser connection (an empty `data` closes it); raises ForwardFailed when the
        socket's queue is full (Mongrel2 reads nothing) or it is closed."""
        if self.channel is None:
            raise ForwardFailed(f"not connected to Mongrel2 server {self.name!r}")
        try:
            self.channel.send((build_reply(self.sender, [conn_id], data),))
        except zmq.ZMQError as err:  # zmq.Again with XPUB_NODROP: at the high-water mark
            raise ForwardFailed(f"cannot publish to Mongrel2 server {self.name!r}: {err}") from None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close(linger=1000)
            self.channel = None
        self.ready.set()  # (wakes whoever waits; `channel` None says it is over)


# -- one forwarded request -----------------------------------------------------------------------------


class Admitted:
    """A forwarded request the service is answering: the link and generation it was admitted under, how the
    browser's connection is framed, and its stream once the handler streams."""

    __slots__ = ("close", "generation", "head", "link", "request", "stream")

    def __init__(self, request: Any, link: Link, generation: int) -> None:
        self.request = request
        self.link = link
        self.generation = generation
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.head = headers.get(METHOD_HINT.lower(), "").upper() == "HEAD"
        self.close = headers.get(CLOSE_HINT.lower(), "") == "1"
        self.stream: Stream | None = None


class Stream:
    """A forwarded answer sent in pieces: the head and first piece at once (then the REP), the rest at most
    once per `flush_interval`, the end when the handler's reply goes. Chunked, or ended by closing the
    connection when the browser's must close (HTTP/1.0); a HEAD request gets the head alone."""

    def __init__(self, forwarding: Forwarding, entry: Admitted, status_code: int, status_msg: str,
                 headers: Mapping[str, str]) -> None:
        self._forwarding = forwarding
        self._entry = entry
        self.status_code = status_code
        self._head = stream_head(status_code, status_msg, headers, chunked=not entry.close)
        self._pending: list[bytes] = []
        self.started = False
        self.ended = ""  # why it ended ("" while open): "finished", "aborted: ...", "failed: ..."
        self.sent = 0
        self._last_flush = 0.0
        self._last_write = time.monotonic()
        self._loop = get_hub().loop
        self._timer: Any = None  # the next flush, when one is due
        self._watchdog: Any = None  # checks, every stream_timeout, that pieces still come

    def write(self, data: bytes) -> None:
        """Queue a piece; the first is published at once. Raises ForwardFailed when the stream is over."""
        if self.ended:
            raise ForwardFailed(f"the stream to the browser is over ({self.ended})")
        self._last_write = time.monotonic()
        if not self.started:
            first = self._head if self._entry.head else self._head + self._frame(data)
            try:
                self._forwarding.first_publish(self._entry, first, self.status_code, streamed=True)
            except ForwardFailed as err:
                self._end(f"failed: {err}")
                raise
            self.started, self.sent, self._last_flush = True, len(first), time.monotonic()
            timeout = self._entry.link.server.stream_timeout
            self._watchdog = self._loop.timer(timeout, timeout, ref=False)
            self._watchdog.start(self._check_idle)
            return
        if data and not self._entry.head:
            self._pending.append(data)
            self._schedule()

    def _frame(self, data: bytes) -> bytes:
        return data if self._entry.close else chunk(data)

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        wait = self._last_flush + self._entry.link.server.flush_interval - time.monotonic()
        if wait <= 0:
            self._flush()
            return
        self._timer = self._loop.timer(wait, ref=False)
        self._timer.start(self._flush)

    def _flush(self, last: bytes = b"") -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        data = (self._frame(b"".join(self._pending)) if self._pending else b"") + last
        self._pending = []
        if not data or self.ended:
            return
        entry = self._entry
        if not entry.link.current(entry.generation):
            self._end("failed: the Mongrel2 server it went through is gone")
            return
        try:
            entry.link.publish(entry.request.conn_id, data)
        except ForwardFailed as err:
            self._forwarding.log.log(logging.WARNING, "stream cut", "stream to connection %s cut short: %s",
                                     entry.request.conn_id, err)
            self._end(f"failed: {err}")
            return
        self.sent += len(data)
        self._last_flush = time.monotonic()

    def _check_idle(self) -> None:
        idle = time.monotonic() - self._last_write
        if idle >= self._entry.link.server.stream_timeout:
            self.abort(f"no piece for {idle:.0f} s")

    def finish(self) -> None:
        """Send what is pending and the end of the body (the last chunk, or the close)."""
        if self.ended:
            return
        if not self.started:  # (nothing was ever written: the head, at least, goes now)
            self.write(b"")
        self._flush(b"" if self._entry.close or self._entry.head else _LAST_CHUNK)
        if self._entry.close:
            self._close_connection()
        self._end("finished")

    def abort(self, reason: str) -> None:
        """Cut the stream short: what is pending goes, then the connection is closed without the end of the
        body, so the browser sees an incomplete response rather than a complete wrong one."""
        if self.ended:
            return
        self._flush()
        self._close_connection()
        self._forwarding.stats["forward_aborted"] += 1
        self._forwarding.log.log(logging.WARNING, "stream aborted", "stream to connection %s of %s aborted: %s",
                                 self._entry.request.conn_id, self._entry.request.path, reason)
        self._end(f"aborted: {reason}")

    def _close_connection(self) -> None:
        entry = self._entry
        if self.started and not self.ended and entry.link.current(entry.generation):
            with contextlib.suppress(ForwardFailed):  # (logged by whoever failed to send before)
                entry.link.publish(entry.request.conn_id, b"")

    def _end(self, why: str) -> None:
        self.ended = why
        self._pending = []
        for timer in (self._timer, self._watchdog):
            if timer is not None:
                timer.close()
        self._timer = self._watchdog = None


# -- the service's forwarding ------------------------------------------------------------------------------


class Forwarding:
    """The service's XPUB sockets to the Mongrel2 servers it is configured with, by name, and the
    forwarded requests being answered. Used by `ServiceConnection` (`refusal`, `answer`) and by
    `ServiceMessageHandler.stream` (`stream`)."""

    def __init__(self, servers: Mapping[str, Mongrel2Server], context: zmq.Context[zmq.Socket[bytes]],
                 reply_to_caller: Callable[[Any, Any], None], stats: Counter[str], log: LogThrottle) -> None:
        self.links = {name: Link(name, server, log) for name, server in servers.items()}
        self.context = context
        self._reply_to_caller = reply_to_caller
        self.stats = stats
        self.log = log
        self._outstanding: OrderedDict[tuple[tuple[bytes, ...], bytes], Admitted] = OrderedDict()
        self._started_at: float | None = None
        self._closed = False

    def start(self) -> None:
        """Connect to every configured Mongrel2 server (at once: their subscriptions take a moment)."""
        if self._started_at is not None:
            return
        self._started_at = time.monotonic()
        for link in self.links.values():
            link.open(self.context)
            log.info("forwarding: connecting to Mongrel2 server %r at %s", link.name, link.server.recv_spec)

    def refusal(self, request: Any) -> str | None:
        """Why a forwarded request cannot be answered through Mongrel2, or None: it is admitted. Called
        in the hub as the request is accepted, before its handler runs. (`refuse` also gives the status.)"""
        refused = self.refuse(request)
        return None if refused is None else refused[1]

    def refuse(self, request: Any) -> tuple[int, str] | None:
        """`refusal` with the status its REP should carry: 400 for a request no configuration can
        serve, 503 while the Mongrel2 server named is not connected."""
        link = self.links.get(request.reply_to)
        if link is None:
            return (HTTPStatus.BAD_REQUEST, f"no Mongrel2 server named {request.reply_to[:60]!r} is configured on "
                    f"this service (it answers through {', '.join(map(repr, sorted(self.links)))})")
        conn_id = request.conn_id
        if not (conn_id.isascii() and conn_id.isdigit() and len(conn_id) <= 10):
            return HTTPStatus.BAD_REQUEST, f"conn_id {conn_id[:20]!r} is not a Mongrel2 connection id (digits)"
        if self._closed or link.channel is None:
            return HTTPStatus.SERVICE_UNAVAILABLE, "this service is not forwarding (not started, or closing)"
        if link.ready.is_set():
            generation = link.generation
        elif link.generation == 0 and self._started_at is not None \
                and time.monotonic() - self._started_at < START_GRACE:
            generation = 1  # just started: the first subscription is on its way, and this is its request
        else:
            return (HTTPStatus.SERVICE_UNAVAILABLE, f"not connected to Mongrel2 server {request.reply_to!r}: it has "
                    "not subscribed to our replies (is it running, and is recv_spec right?)")
        self._remember(Admitted(request, link, generation))
        return None

    def _remember(self, entry: Admitted) -> None:
        """Keep a request until it is answered. A request that never is (cancelled by its caller, or its
        handler never replied) is forgotten once its deadline is well past, unless it is streaming: the
        oldest is looked at on each arrival, so what is kept stays near what is live."""
        outstanding = self._outstanding
        if outstanding:
            key, oldest = next(iter(outstanding.items()))
            stream = oldest.stream
            if stream is not None and stream.started and not stream.ended:
                outstanding.move_to_end(key)
            elif oldest.request.deadline is not None and oldest.request.deadline + FORGET_AFTER_MS < now_ms():
                del outstanding[key]
        request = entry.request
        outstanding[(request.sender, request.msg_id)] = entry
        if len(outstanding) > MAX_OUTSTANDING:
            forgotten = outstanding.popitem(last=False)[1]
            self.log.log(logging.WARNING, "forgotten", "more than %d forwarded requests unanswered: forgot the one "
                         "for connection %s", MAX_OUTSTANDING, forgotten.request.conn_id)

    def stream(self, request: Any, status_code: int, status_msg: str, headers: Mapping[str, str]) -> Stream:
        """The stream a handler writes its answer to `request` into (the same one on each call)."""
        entry = self._outstanding.get((request.sender, request.msg_id))
        if entry is None:
            raise ForwardFailed("this request is not being forwarded (answered already, or forgotten)")
        if entry.stream is None:
            entry.stream = Stream(self, entry, status_code, status_msg, headers)
            self.stats["forward_streams"] += 1
        return entry.stream

    def answer(self, request: Any, response: Any) -> None:
        """Send a handler's answer to the browser (then a REP saying so to the caller), end its stream, or
        hand an error back to the caller for the web app to answer."""
        entry = self._outstanding.pop((request.sender, request.msg_id), None)
        if entry is not None and entry.stream is not None:
            stream = entry.stream
            if stream.started and is_error_reply(response):
                stream.abort(f"the handler failed after streaming began ({response.status_code})")
            elif not stream.ended:
                with contextlib.suppress(ForwardFailed):  # (the caller was told, unless it was late)
                    stream.finish()
            return
        if not isinstance(response, ServiceResponse) or is_error_reply(response):
            self._reply_to_caller(request, response)  # the web app answers the browser from its error page
            return
        if entry is None:
            self.log.log(logging.WARNING, "unknown", "answer for %s (connection %s) dropped: it was answered already "
                         "or forgotten", request.path, request.conn_id)
            return
        data = http_answer(response, close=entry.close)
        try:
            self.first_publish(entry, head_only(data) if entry.head else data, response.status_code, streamed=False)
        except ForwardFailed:
            return
        if entry.close:
            with contextlib.suppress(ForwardFailed):  # (the answer went: the browser has it)
                entry.link.publish(request.conn_id, b"")

    def first_publish(self, entry: Admitted, data: bytes, status_code: int, *, streamed: bool) -> None:
        """Publish the first bytes of an answer, then tell the caller: the deadline and the Mongrel2
        instance checked first. On failure the caller is told (unless it is late) and ForwardFailed raised."""
        request = entry.request
        try:
            self._check_deadline(request)
            self._await_link(entry)
            entry.link.publish(request.conn_id, data)
        except ForwardFailed as err:
            if err.status_code != HTTPStatus.GATEWAY_TIMEOUT:  # (late: the caller has stopped listening)
                self.stats["forward_failed"] += 1
                self.log.log(logging.WARNING, "forward failed", "could not answer connection %s of %s: %s",
                             request.conn_id, request.path, err)
                self._reply_to_caller(request, failed_reply(request, err))
            raise
        self.stats["forwarded"] += 1
        self._reply_to_caller(request, forwarded_reply(request, status_code, len(data), streamed=streamed))

    def _check_deadline(self, request: Any) -> None:
        deadline = request.deadline
        if deadline is not None and now_ms() >= deadline - DEADLINE_MARGIN_MS:
            self.stats["forward_late"] += 1
            self.log.log(logging.WARNING, "late", "answer to connection %s of %s not published: %d ms past its "
                         "deadline (less the margin), the web app has answered 504", request.conn_id, request.path,
                         now_ms() - deadline + DEADLINE_MARGIN_MS)
            raise ForwardFailed("past the request's deadline: the web app has answered the browser",
                                HTTPStatus.GATEWAY_TIMEOUT)

    def _await_link(self, entry: Admitted) -> None:
        """Wait (a worker greenlet, never the hub) for the subscription a request admitted at start-up
        expects, at most until its deadline; fail when its Mongrel2 instance is gone."""
        link, request = entry.link, entry.request
        if not link.ready.is_set() and link.generation < entry.generation and getcurrent() is not get_hub():
            deadline = request.deadline
            left = START_GRACE if deadline is None else (deadline - DEADLINE_MARGIN_MS - now_ms()) / 1000
            link.ready.wait(max(0.0, left))
        if self._closed or link.channel is None:
            raise ForwardFailed("the service is closing")
        if not link.current(entry.generation):
            why = "it has not subscribed yet" if link.generation < entry.generation else \
                "the instance the request came through is gone"
            raise ForwardFailed(f"cannot reach the browser through Mongrel2 server {link.name!r}: {why}")

    def close(self) -> None:
        """Cut short the streams still open (their browsers see the connection close), then close the
        sockets."""
        if self._closed:
            return
        self._closed = True
        for entry in list(self._outstanding.values()):
            if entry.stream is not None:
                entry.stream.abort("the service is closing")
        self._outstanding.clear()
        for link in self.links.values():
            link.close()
