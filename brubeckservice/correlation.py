"""Correlation: which outstanding call a reply belongs to.

Every call is registered under a fresh id *before* its request is sent, so a reply can never arrive for a
call we do not know yet. A reply removes its call (so each reply is handled at most once); a timeout, a
lost connection or closing the client removes it too, and a reply arriving after that is a late reply.
Every call has an expiry. Expiries are kept in buckets of `RESOLUTION` seconds (a timer wheel) rather
than one gevent timer per call: adding and removing a call is a set operation, and one reaper greenlet
fails what is due, so a call times out at most `RESOLUTION` late.

A client closing gracefully waits for the table to empty: `on_empty` is called whenever it becomes empty
(only while someone has set it, so the hot path pays one attribute test).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

from gevent.event import AsyncResult
from gevent.hub import Waiter, get_hub
from greenlet import getcurrent

from brubeckservice.models import ServiceResponse

ReplyCallback = Callable[[ServiceResponse], Any]
ErrorCallback = Callable[[BaseException], Any]

#: Granularity of call expiry, in seconds.
RESOLUTION = 0.01


class Call:
    """One outstanding call: a waiter (sync) or callbacks (nowait), and the endpoint it went to."""

    __slots__ = ("endpoint", "on_error", "on_reply", "path", "slot", "waiter")

    def __init__(self, path: str, waiter: Waiter | AsyncResult | None = None,
                 on_reply: ReplyCallback | None = None,
                 on_error: ErrorCallback | None = None) -> None:
        self.path = path
        self.waiter = waiter
        self.on_reply = on_reply
        self.on_error = on_error
        self.endpoint: Any = None
        self.slot: int | None = None

    # A sync call waits on a gevent Waiter: from the hub (where replies are read) a reply switches
    # straight into the caller, with no trip through the event loop; from anywhere else the switch is
    # scheduled in the hub, as Waiter requires. (An AsyncResult works too, for a waiter with a timeout of its own.)

    def resolve(self, value: Any) -> bool:
        """Wake the waiting caller with `value`; False when nobody waits (a fire-and-forget call)."""
        waiter = self.waiter
        if isinstance(waiter, Waiter):
            hub = get_hub()
            if getcurrent() is hub:
                waiter.switch(value)
            else:
                hub.loop.run_callback(waiter.switch, value)
            return True
        if waiter is not None:
            waiter.set(value)
            return True
        return False

    def fail(self, error: BaseException) -> bool:
        """Raise `error` in the waiting caller; False when nobody waits."""
        waiter = self.waiter
        if isinstance(waiter, Waiter):
            hub = get_hub()
            if getcurrent() is hub:
                waiter.throw(error)
            else:
                hub.loop.run_callback(waiter.throw, error)
            return True
        if waiter is not None:
            waiter.set_exception(error)
            return True
        return False


class PendingCalls:
    """The table of outstanding calls of one client, keyed by correlation id."""

    def __init__(self) -> None:
        # A per-client random prefix keeps ids unique across client restarts, so an old reply can never
        # match a new call.
        self._prefix = os.urandom(4).hex().encode("ascii")
        self._counter = itertools.count(1)
        self._calls: dict[bytes, Call] = {}
        self._slots: dict[int, set[bytes]] = {}  # expiry bucket -> ids of the calls that expire in it
        self._earliest: int | None = None
        #: Called whenever the table becomes empty (set by a client waiting for its calls to finish).
        self.on_empty: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._calls

    def __iter__(self) -> Iterator[tuple[bytes, Call]]:
        return iter(list(self._calls.items()))

    def new_id(self) -> bytes:
        return b"%s-%x" % (self._prefix, next(self._counter))

    def add(self, msg_id: bytes, call: Call, expires_at: float | None = None) -> bool:
        """Register a call (expiring at `expires_at`, a time.monotonic() value); True when its expiry is now
        the earliest, so whoever sleeps until the earliest expiry must wake sooner."""
        self._calls[msg_id] = call
        if expires_at is None:
            return False
        slot = math.ceil(expires_at / RESOLUTION)
        call.slot = slot
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = {msg_id}
        else:
            bucket.add(msg_id)
        if self._earliest is None or slot < self._earliest:
            self._earliest = slot
            return True
        return False

    def pop(self, msg_id: bytes) -> Call | None:
        call = self._calls.pop(msg_id, None)
        if call is not None and call.slot is not None:
            bucket = self._slots.get(call.slot)
            if bucket is not None:
                bucket.discard(msg_id)
                if not bucket:
                    # `_earliest` may go stale (the reaper then wakes once for nothing and recomputes it):
                    # resetting it here would make every sequential call wake the reaper.
                    del self._slots[call.slot]
        if call is not None and self.on_empty is not None and not self._calls:
            self.on_empty()
        return call

    def next_expiry(self) -> float | None:
        """When the earliest registered expiry falls due (it may have been answered since)."""
        return None if self._earliest is None else self._earliest * RESOLUTION

    def expire(self, now: float) -> list[tuple[bytes, Call]]:
        """Remove and return the calls whose expiry has passed and that are still outstanding."""
        limit = math.floor(now / RESOLUTION)
        expired = []
        for slot in sorted(slot for slot in self._slots if slot <= limit):
            for msg_id in self._slots.pop(slot):
                call = self._calls.pop(msg_id, None)
                if call is not None:
                    expired.append((msg_id, call))
        self._earliest = min(self._slots) if self._slots else None
        if expired and self.on_empty is not None and not self._calls:
            self.on_empty()
        return expired

    def drain(self, endpoint: Any = None) -> list[tuple[bytes, Call]]:
        """Remove and return every outstanding call (to `endpoint` only, when given)."""
        taken = [(i, c) for i, c in self._calls.items() if endpoint is None or c.endpoint is endpoint]
        for msg_id, _ in taken:
            self.pop(msg_id)
        if not self._slots:
            self._earliest = None
        return taken
