"""What happened, once per exchange, for whoever watches: access logs (brubeck.logs), metrics
(brubeck.metrics, with the `metrics` extra), or an application's own observer.

Three points report: a web request answered (`WebExchange`, from the web transports), a service request
served (`ServedRequest`, from `ServiceConnection`), and a service call made (`CallMade`, from
`ServiceClient`). Each record is built only when someone watches that point, so an unwatched point costs
one truth test of a list. Observers are process-wide, like loggers and Prometheus' default registry: add
one with `watch(point, observer)`; it is called in the greenlet that finished the exchange and must not
block. An observer that raises is logged (at most once a minute per observer) and the exchange goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("brubeck.observe")

Point = Literal["web", "served", "call"]


@dataclass(frozen=True, slots=True)
class WebExchange:
    """A web request and what it was answered."""

    method: str
    path: str  # as requested, without the query
    route: str  # the pattern of the route that served it; "" when no route matched (a 404 or 405)
    status: int | None  # the response's status; None when the handler answered later, or not at all
    size: int | None  # bytes of the response (head and body); None as for `status`
    duration: float  # seconds from the request's arrival at the handler to its response being built
    remote: str  # the client's address, as the transport knows it
    trace_id: str  # the W3C trace id the request was served under


@dataclass(frozen=True, slots=True)
class ServedRequest:
    """A service request a worker ran (or dropped: see `outcome`)."""

    service: str  # the worker's address
    path: str
    method: str
    route: str  # the matching route's pattern, "" when none matched
    status: int | None  # the answer's status; None when nothing was answered (yet)
    outcome: str  # "answered", "deferred" (the handler answers later), "cancelled", "expired" or "failed"
    duration: float  # seconds the handler ran (0 for one never started)
    trace_id: str


@dataclass(frozen=True, slots=True)
class CallMade:
    """A service call a client made, and how it ended."""

    service: str  # the address the client was given (a list is joined with commas)
    worker: str  # the worker that answered or last held it; "" when it never left the client
    path: str
    method: str
    status: int | None  # the reply's status; None when it failed (see `outcome`)
    outcome: str  # "ok" (a reply came, whatever its status), or the failure's kind: "timeout", "unavailable",
    #             "refused" (authentication), "cancelled", "malformed", "error"
    duration: float  # seconds from the call being made to its reply or failure
    trace_id: str
    error: str = ""  # the failure, as its message


Observer = Callable[[Any], object]

#: The observers of each point (read by the reporting code: a list is cheap to test).
WEB: list[Observer] = []
SERVED: list[Observer] = []
CALLS: list[Observer] = []
_POINTS: dict[str, list[Observer]] = {"web": WEB, "served": SERVED, "call": CALLS}
_complained: dict[int, float] = {}


def watch(point: Point, observer: Observer) -> Callable[[], None]:
    """Call `observer(record)` for every exchange at `point`; returns a function that stops it."""
    observers = _POINTS[point]
    observers.append(observer)

    def stop() -> None:
        if observer in observers:
            observers.remove(observer)

    return stop


def report(observers: list[Observer], record: object) -> None:
    """Give `record` to each of `observers`; one that raises is logged, the others still run."""
    for observer in tuple(observers):
        try:
            observer(record)
        except Exception:
            now = time.monotonic()
            if now - _complained.get(id(observer), -60.0) >= 60.0:
                _complained[id(observer)] = now
                log.exception("observer %r failed on %r (logged once a minute)", observer, record)
