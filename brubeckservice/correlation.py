"""Correlation: which outstanding call a reply belongs to, and every change of a call's state.

Everything that changes a call's state lives here, including the count of calls in flight on each worker,
so that count cannot drift from the table (the h11 `_state.py` rule). A call's life:

    add ──> waiting ──sent(worker)──> in flight ──answer/pop──> done
     │         │                         │  └──lose(worker)──> waiting again (idempotent, once) or done
     └─────────┴──── expire / pop / drain ────> done

Every call is registered under a fresh id *before* its request is sent, so a reply can never arrive for a
call we do not know yet. An answer removes its call (so each is handled at most once), and only when it
comes from the worker the call was sent to and is of the kind the call expects (a `PONG` never completes a
request). A timeout, a lost connection or closing the client removes it too; an answer arriving after that
is a late reply. Calls waiting for a worker with room wait in one FIFO queue.

Every call has an expiry. Expiries are kept in buckets of `RESOLUTION` seconds (a timer wheel) rather
than one gevent timer per call: adding and removing a call is a set operation, and one reaper greenlet
fails what is due, so a call times out at most `RESOLUTION` late.

A client closing gracefully waits for the table to empty: `on_empty` is called whenever it becomes empty
(only while someone has set it, so the hot path pays one attribute test).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from gevent.event import AsyncResult
from gevent.hub import Waiter, get_hub
from greenlet import getcurrent

from brubeckservice.models import ServiceResponse

ReplyCallback = Callable[[ServiceResponse], Any]
ErrorCallback = Callable[[BaseException], Any]

#: Builds a message's frames for a correlation id, at the moment it is sent.
Build = Callable[[bytes], list[bytes]]

#: Granularity of call expiry, in seconds.
RESOLUTION = 0.01

#: How many times a call marked idempotent may be sent in all (the first send and one resend elsewhere).
MAX_ATTEMPTS = 2

NEW, WAITING, IN_FLIGHT, DONE = 0, 1, 2, 3

#: os.urandom bytes read at a time for correlation ids: one getrandom() call per 512 ids, not one per id.
_ENTROPY_CHUNK = 4096
_entropy = bytearray()


def _random_id() -> bytes:
    """64 bits from os.urandom, as 16 hex digits (ascii). The buffer is thrown away in a forked child, so
    that a child never hands out its parent's ids."""
    if len(_entropy) < 8:
        _entropy[:] = os.urandom(_ENTROPY_CHUNK)
    msg_id = _entropy[-8:].hex().encode("ascii")
    del _entropy[-8:]
    return msg_id


os.register_at_fork(after_in_child=_entropy.clear)


class Target(Protocol):
    """Where calls go (a worker): the table keeps its count of calls in flight."""

    inflight: int


class Call:
    """One outstanding call: a waiter (sync) or callbacks (nowait), and where it is in its life."""

    __slots__ = ("attempts", "build", "built_at", "frames", "idempotent", "kind", "last_worker", "on_error",
                 "on_reply", "path", "sent_at", "seq", "slot", "state", "waiter", "worker")

    def __init__(self, path: str, waiter: Waiter | AsyncResult | None = None,
                 on_reply: ReplyCallback | None = None,
                 on_error: ErrorCallback | None = None, *, kind: bytes = b"REQ",
                 build: Build | None = None, idempotent: bool = False) -> None:
        self.path = path
        self.waiter = waiter
        self.on_reply = on_reply
        self.on_error = on_error
        self.kind = kind  # the kind of message it sends: b"REQ" (answered by REP) or b"PING" (by PONG)
        self.build = build
        self.idempotent = idempotent
        self.attempts = 0
        self.state = NEW
        self.worker: Any = None
        self.last_worker: Any = None  # where it was in flight last, once it is no longer (for reports)
        self.frames: list[bytes] | None = None  # built once for the size check, reused when sent soon after
        self.built_at = 0.0
        self.seq = 0  # the sequence number its frames carry (the client's count when they were built)
        self.sent_at = 0.0
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
    """The table of outstanding calls of one client, keyed by correlation id, and its waiting queue."""

    def __init__(self) -> None:
        self._calls: dict[bytes, Call] = {}
        self._slots: dict[int, set[bytes]] = {}  # expiry bucket -> ids of the calls that expire in it
        self._earliest: int | None = None
        # Ids of the calls waiting for a worker, oldest first. Entries of calls that left meanwhile stay
        # until they reach the front (`first_waiting` skips them); `waiting` counts the live ones.
        self._queue: deque[bytes] = deque()
        self.waiting = 0
        #: Called whenever the table becomes empty (set by a client waiting for its calls to finish).
        self.on_empty: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._calls

    def __iter__(self) -> Iterator[tuple[bytes, Call]]:
        return iter(list(self._calls.items()))

    def get(self, msg_id: bytes) -> Call | None:
        return self._calls.get(msg_id)

    def new_id(self) -> bytes:
        """A fresh correlation id: 64 random bits, as 16 hex digits. Random rather than counted, so that a
        peer that saw some ids cannot name another call's (an unsigned ERR with a guessed id could fail
        it), and ids stay unique across client restarts (an old reply never matches a new call)."""
        while True:
            msg_id = _random_id()
            if msg_id not in self._calls:
                return msg_id

    # -- into the table ----------------------------------------------------------------------------

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

    # -- waiting for a worker --------------------------------------------------------------------------

    def hold(self, msg_id: bytes, call: Call, *, first: bool = False) -> None:
        """Queue a registered call until a worker has room (at the front when `first`: a resend)."""
        call.state = WAITING
        if first:
            self._queue.appendleft(msg_id)
        else:
            self._queue.append(msg_id)
        self.waiting += 1

    def first_waiting(self) -> tuple[bytes, Call] | None:
        """The oldest call still waiting (it stays queued until `sent`)."""
        queue = self._queue
        while queue:
            msg_id = queue[0]
            call = self._calls.get(msg_id)
            if call is not None and call.state == WAITING and call.worker is None:
                return msg_id, call
            queue.popleft()
        return None

    def sent(self, msg_id: bytes, call: Call, worker: Target, now: float) -> None:
        """The call's request was queued to `worker`'s connection."""
        if call.state == WAITING and self._queue and self._queue[0] == msg_id:
            self._queue.popleft()
            self.waiting -= 1
        call.state = IN_FLIGHT
        call.worker = worker
        call.attempts += 1
        call.sent_at = now
        worker.inflight += 1

    def unsent(self, msg_id: bytes, call: Call) -> bool:
        """A request counted `sent` to its worker did not leave after all (its queue was full when the
        channel flushed it): it is in nobody's flight, and queued behind the calls waiting already (those
        were queued while it sat in the channel's outbox, which means later). It keeps its frames (the
        client numbers them anew if a later-numbered request leaves first). False when the call is no
        longer in flight there (answered, expired, given up)."""
        worker = call.worker
        if call.state != IN_FLIGHT or worker is None or self._calls.get(msg_id) is not call:
            return False
        worker.inflight -= 1
        call.worker = None
        call.attempts -= 1
        self.hold(msg_id, call)
        return True

    # -- out of the table --------------------------------------------------------------------------

    def _detach(self, call: Call) -> None:
        worker = call.worker
        if worker is not None:
            worker.inflight -= 1
            call.worker = None
            call.last_worker = worker
        elif call.state == WAITING:
            self.waiting -= 1  # (its queue entry is skipped when it reaches the front)
        call.state = DONE

    def pop(self, msg_id: bytes) -> Call | None:
        """Remove a call, whatever its state (answered, failed, or given up by its caller)."""
        call = self._calls.pop(msg_id, None)
        if call is None:
            return None
        self._detach(call)
        if call.slot is not None:
            bucket = self._slots.get(call.slot)
            if bucket is not None:
                bucket.discard(msg_id)
                if not bucket:
                    # `_earliest` may go stale (the reaper then wakes once for nothing and recomputes it):
                    # resetting it here would make every sequential call wake the reaper.
                    del self._slots[call.slot]
        if self.on_empty is not None and not self._calls:
            self.on_empty()
        return call

    def answer(self, msg_id: bytes, worker: Target, kind: bytes) -> Call | None:
        """Remove and return the call an answer completes: in flight on `worker` and expecting `kind` (the kind
        it sent: b"REQ" for a REP, b"PING" for a PONG). None when there is none: a late or stray answer."""
        call = self._calls.get(msg_id)
        if call is None or call.worker is not worker or call.kind != kind:
            return None
        return self.pop(msg_id)

    def next_expiry(self) -> float | None:
        """When the earliest registered expiry falls due (it may have been answered since)."""
        return None if self._earliest is None else self._earliest * RESOLUTION

    def expire(self, now: float) -> list[tuple[bytes, Call]]:
        """Remove and return the calls whose expiry has passed and that are still outstanding (each keeps
        `worker`, where it was in flight, or None when it never left the queue)."""
        limit = math.floor(now / RESOLUTION)
        expired = []
        for slot in sorted(slot for slot in self._slots if slot <= limit):
            for msg_id in self._slots.pop(slot):
                call = self._calls.pop(msg_id, None)
                if call is not None:
                    worker = call.worker
                    self._detach(call)
                    call.worker = worker
                    expired.append((msg_id, call))
        self._earliest = min(self._slots) if self._slots else None
        if expired and self.on_empty is not None and not self._calls:
            self.on_empty()
        return expired

    def lose(self, worker: Target) -> tuple[list[tuple[bytes, Call]], list[tuple[bytes, Call]]]:
        """`worker` is gone: its calls in flight are either queued again, at the front in their order (those
        marked idempotent, not yet sent MAX_ATTEMPTS times), or removed. Returns (resent, failed)."""
        taken = [(i, c) for i, c in self._calls.items() if c.worker is worker]
        resent, failed = [], []
        for msg_id, call in taken:
            if call.idempotent and call.attempts < MAX_ATTEMPTS:
                self._detach(call)
                call.frames = None  # a resend is signed afresh: a new number for the other worker
                resent.append((msg_id, call))
            else:
                self.pop(msg_id)
                failed.append((msg_id, call))
        for msg_id, call in reversed(resent):
            self.hold(msg_id, call, first=True)
        return resent, failed

    def drain(self) -> list[tuple[bytes, Call]]:
        """Remove and return every outstanding call."""
        taken = list(self._calls.items())
        for msg_id, _ in taken:
            self.pop(msg_id)
        self._queue.clear()
        self.waiting = 0
        self._earliest = None
        return taken
