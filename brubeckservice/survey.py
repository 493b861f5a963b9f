"""`Survey`: the state of each worker of a service, for people, from what a client learns within a timeout.

`ServiceClient.workers` says how the client's pool sees each worker at this instant, to choose where calls
go. An operator asks another question: what is each worker, now? A survey round answers it by waiting, up
to a timeout, until every known worker (the addresses given, and the siblings their PONGs list, docs/
protocol.md §8) has answered a PING or been found out of reach, then judging each from what is known:

- connected (ZMTP handshake done) and a PONG this round: alive, or draining when it says so;
- connected, but no PONG within the timeout: busy. libzmq's I/O thread finishes handshakes and answers ZMTP
  heartbeats even while the worker's gevent hub is held (a handler on the CPU, a stuck loop);
- no connection within the timeout: dead. A SIGSTOPped process's kernel still accepts TCP, but its I/O thread
  is stopped, so the handshake never finishes; and a connection lost (ZMTP heartbeats) is dead at once;
- refused: it refuses our signature (a wrong passphrase), or its CURVE handshake refuses us;
- leaving: it is no longer listed (pool.py retires it).

Each worker gets the whole timeout from when it became known (a sibling learned late is not judged on
less), and a round ends after twice the timeout at most. The pool has no event for "a PONG came": a round
looks at the workers every POLL seconds.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import gevent
from gevent.event import Event

from brubeckservice.client import ServiceClient
from brubeckservice.pool import ALIVE, BUSY, DEAD, DRAINING, LEAVING, REFUSED, Worker, WorkerInfo

#: Seconds between two looks at the workers while a round waits.
POLL = 0.02


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker, as a survey round judged it. The numbers are from its latest PONG (None before one)."""

    address: str
    state: str  # alive, draining, busy, dead, refused or leaving
    reason: str  # why it is in that state
    load: int | None  # its calls in flight and queued, for all its clients
    capacity: int | None  # how many it runs at once
    served: int | None  # requests it ran since it started
    errors: int | None  # of those, answered with a 5xx or failed
    served_p50_ms: float | None  # how long its recent requests ran there (without the network)
    served_p99_ms: float | None
    uptime: float | None  # seconds since it started, when it reported
    version: str | None
    source: str  # why it is a member: "configured", "listed by ADDRESS", "dns NAME"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def seconds_text(value: float) -> str:
    """3.0 -> "3", 2.46 -> "2.5"."""
    return f"{round(value, 1):g}"


def duration_text(value: float) -> str:
    """An uptime, for people: "42.1s", "12m05s", "3h07m", "2d04h"."""
    if value < 60:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86_400}d{whole % 86_400 // 3600:02d}h"


class Survey:
    """Rounds of judgement on the workers of `client`'s service (see the module's docstring). One client
    serves every round, so a worker already found out of reach is not waited for again."""

    def __init__(self, client: ServiceClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout
        self._known_since: dict[str, float] = {}

    def round(self, stop: Event | None = None) -> list[WorkerStatus]:
        """Wait until each known worker is settled (or `stop` is set), at most twice the timeout; judge them."""
        began = time.monotonic()
        before = {w.address: w.reported for w in self.client.pool.workers}
        give_up = began + 2 * self.timeout
        while True:
            now = time.monotonic()
            workers = list(self.client.pool.workers)
            for worker in workers:
                self._known_since.setdefault(worker.address, now)
            if all(self._settled(w, before, began, now) for w in workers) or now >= give_up:
                break
            if stop is not None and stop.is_set():
                break
            gevent.sleep(POLL)
        infos = {info.address: info for info in self.client.workers}
        now = time.monotonic()
        return [self._judge(w, infos[w.address], self._answered(w, before), began, now)
                for w in self.client.pool.workers if w.address in infos]

    @staticmethod
    def _answered(worker: Worker, before: dict[str, dict[str, Any]]) -> bool:
        """Whether a PONG came from it this round (each PONG is a dict of its own)."""
        return bool(worker.reported) and worker.reported is not before.get(worker.address)

    def _waited(self, worker: Worker, began: float, now: float) -> float:
        """How long it has been waited for: this round, or since it became known when that is later."""
        start = self._known_since.get(worker.address, began)
        if worker.connected or worker.ever_connected:
            start = max(start, began)  # (reached before: it must answer again, this round)
        return now - start

    def _settled(self, worker: Worker, before: dict[str, dict[str, Any]], began: float, now: float) -> bool:
        if worker.leaving or worker.refused is not None or worker.handshake_refused is not None:
            return True
        if self._answered(worker, before):
            return True
        if not worker.connected and worker.ever_connected:
            return True  # its connection was lost
        return self._waited(worker, began, now) >= self.timeout

    def _judge(self, worker: Worker, info: WorkerInfo, answered: bool, began: float, now: float) -> WorkerStatus:
        waited = seconds_text(min(self.timeout, self._waited(worker, began, now)))
        if worker.leaving:
            state, reason = LEAVING, info.reason
        elif worker.handshake_refused is not None:
            state, reason = REFUSED, f"its CURVE handshake refused us: {worker.handshake_refused}"
        elif worker.connected and worker.refused is not None:
            state, reason = REFUSED, f"it refuses our signature ({worker.refused}): wrong passphrase?"
        elif worker.connected and answered:
            state = DRAINING if worker.draining else ALIVE
            reason = info.reason if worker.draining else "answered a PING"
        elif worker.connected:
            state, reason = BUSY, (f"connected (ZMTP handshake done) but no PONG within {waited} s: a handler "
                                   "holds its CPU, or its event loop is stuck")
        elif worker.ever_connected:
            state, reason = DEAD, info.reason
        else:
            state, reason = DEAD, f"no connection within {waited} s: stopped, crashed or unreachable"
        reported = bool(worker.reported)
        return WorkerStatus(
            address=worker.address, state=state, reason=reason, load=info.load if reported else None,
            capacity=info.capacity if reported else None, served=info.served, errors=info.errors,
            served_p50_ms=info.served_p50_ms, served_p99_ms=info.served_p99_ms, uptime=info.uptime,
            version=info.version, source=info.source)
