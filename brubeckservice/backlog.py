"""`Backlogs`: replies that wait for room in a slow caller's queue, without holding a worker meanwhile.

A ROUTER queues up to its high-water mark of messages per caller (10,000 here); past that a send fails
(`zmq.Again`) until the caller reads. A reply must not be dropped because its caller reads slowly
(docs/protocol.md §1), but waiting in the worker that made it would let one caller that reads nothing
hold every worker of the service, and stall everyone else's calls. So a reply that finds its caller's
queue full joins that caller's backlog, and the worker goes on at once. One greenlet per backlogged
caller sends its backlog in order as room appears (ZeroMQ raises no event for that: it retries, 1 ms
doubling to 50 ms). A reply leaves the backlog unsent, counted `undeliverable`, when its request's
deadline passes; the whole backlog does when the caller has taken nothing for SEND_PATIENCE seconds (a
caller that reads nothing), or has gone. Backlogs hold at most BACKLOG_MAX replies per caller and
BACKLOG_BYTES in all; past that, replies are dropped at once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent
import zmq

from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Channel
from brubeckservice.clock import now_ms

#: Seconds a backlog may go without a single reply taken before all of it is dropped.
SEND_PATIENCE = 5.0
#: Replies one caller's backlog holds at most.
BACKLOG_MAX = 1000
#: Bytes all backlogs hold at most.
BACKLOG_BYTES = 64 * 1024 * 1024

Peer = tuple[bytes, ...]


@dataclass(slots=True)
class _Backlog:
    since: float  # when the caller last took a reply (or the backlog began), time.monotonic()
    items: deque[tuple[list[bytes], int, int]] = field(default_factory=deque)  # (message, deadline, bytes)


class Backlogs:
    """The backlogged callers of one service socket, sent to through `channel`."""

    def __init__(self, channel: Channel, stats: Counter[str], log: LogThrottle, address: str,
                 on_empty: Callable[[], None] | None = None) -> None:
        self.channel = channel
        self.stats = stats
        self._log = log
        self.address = address
        self._on_empty = on_empty  # (a drain waits for the backlogs to empty)
        self._backlogs: dict[Peer, _Backlog] = {}
        self._flushers: dict[Peer, gevent.Greenlet[..., None]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        """Replies waiting, for all callers."""
        return sum(len(backlog.items) for backlog in self._backlogs.values())

    def __contains__(self, peer: object) -> bool:
        return peer in self._backlogs

    def add(self, peer: Peer, message: list[bytes], deadline: int) -> None:
        """Queue `message` (routing frames included) for `peer`, whose queue is full or backlogged already."""
        size = sum(map(len, message))
        backlog = self._backlogs.get(peer)
        if backlog is None:
            backlog = self._backlogs[peer] = _Backlog(time.monotonic())
            self._flushers[peer] = gevent.spawn(self._flush, peer, backlog)
        if len(backlog.items) >= BACKLOG_MAX or self.bytes + size > BACKLOG_BYTES:
            self.dropped(1, "its caller's backlog is full (it reads too slowly)")
            return
        backlog.items.append((message, deadline, size))
        self.bytes += size

    def dropped(self, count: int, why: str) -> None:
        self.stats["undeliverable"] += count
        self._log.log(logging.WARNING, "undeliverable", "could not deliver on %s, dropped %d: %s", self.address,
                      count, why)

    def _flush(self, peer: Peer, backlog: _Backlog) -> None:
        pause = 0.001
        items = backlog.items
        try:
            while items:
                message, deadline, size = items[0]
                if now_ms() >= deadline:
                    items.popleft()
                    self.bytes -= size
                    self.dropped(1, "its caller's deadline passed while its queue was full")
                    continue
                if time.monotonic() - backlog.since >= SEND_PATIENCE:
                    self._drop_all(backlog, f"its caller took nothing for {SEND_PATIENCE:g}s")
                    return
                try:
                    self.channel.send(message)
                except zmq.Again:
                    gevent.sleep(pause)
                    pause = min(pause * 2, 0.05)
                    continue
                except zmq.ZMQError as err:  # (gone: EHOSTUNREACH)
                    self._drop_all(backlog, str(err))
                    return
                items.popleft()
                self.bytes -= size
                backlog.since, pause = time.monotonic(), 0.001
        finally:
            self._drop_all(backlog, "the service closed")  # (nothing, unless killed)
            del self._backlogs[peer], self._flushers[peer]
            if self._on_empty is not None and not self._backlogs:
                self._on_empty()

    def _drop_all(self, backlog: _Backlog, why: str) -> None:
        if backlog.items:
            self.bytes -= sum(size for _, _, size in backlog.items)
            self.dropped(len(backlog.items), why)
            backlog.items.clear()

    def close(self) -> None:
        """Stop every flusher; what they still held is dropped (and counted)."""
        flushers: Sequence[gevent.Greenlet[..., None]] = list(self._flushers.values())
        gevent.killall(flushers, block=False)
