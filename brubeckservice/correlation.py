"""Correlation: which outstanding call a reply belongs to.

Every call is registered under a fresh id *before* its request is sent, so a reply can never arrive for a
call we do not know yet. A reply removes its call (so each reply is handled at most once); a timeout, a
lost connection or closing the client removes it too, and a reply arriving after that is a late reply.
Fire-and-forget calls keep an expiry so the table cannot grow without bound.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

from gevent.event import AsyncResult

from brubeckservice.models import ServiceResponse

ReplyCallback = Callable[[ServiceResponse], Any]
ErrorCallback = Callable[[BaseException], Any]


class Call:
    """One outstanding call: a waiter (sync) or callbacks (nowait), and the endpoint it went to."""

    __slots__ = ("endpoint", "on_error", "on_reply", "path", "waiter")

    def __init__(self, path: str, waiter: AsyncResult | None = None, on_reply: ReplyCallback | None = None,
                 on_error: ErrorCallback | None = None) -> None:
        self.path = path
        self.waiter = waiter
        self.on_reply = on_reply
        self.on_error = on_error
        self.endpoint: Any = None


class PendingCalls:
    """The table of outstanding calls of one client, keyed by correlation id."""

    def __init__(self) -> None:
        # A per-client random prefix keeps ids unique across client restarts, so an old reply can never
        # match a new call.
        self._prefix = os.urandom(4).hex().encode("ascii")
        self._counter = itertools.count(1)
        self._calls: dict[bytes, Call] = {}
        self._expiry: list[tuple[float, bytes]] = []

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[tuple[bytes, Call]]:
        return iter(list(self._calls.items()))

    def new_id(self) -> bytes:
        return b"%s-%x" % (self._prefix, next(self._counter))

    def add(self, msg_id: bytes, call: Call, expires_at: float | None = None) -> None:
        self._calls[msg_id] = call
        if expires_at is not None:
            heapq.heappush(self._expiry, (expires_at, msg_id))

    def pop(self, msg_id: bytes) -> Call | None:
        return self._calls.pop(msg_id, None)

    def next_expiry(self) -> float | None:
        return self._expiry[0][0] if self._expiry else None

    def expire(self, now: float) -> list[tuple[bytes, Call]]:
        """Remove and return the calls whose expiry has passed and that are still outstanding."""
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, msg_id = heapq.heappop(self._expiry)
            call = self._calls.pop(msg_id, None)
            if call is not None:
                expired.append((msg_id, call))
        return expired

    def drain(self, endpoint: Any = None) -> list[tuple[bytes, Call]]:
        """Remove and return every outstanding call (to `endpoint` only, when given)."""
        taken = [(i, c) for i, c in self._calls.items() if endpoint is None or c.endpoint is endpoint]
        for msg_id, _ in taken:
            del self._calls[msg_id]
        if endpoint is None:
            self._expiry.clear()
        return taken
