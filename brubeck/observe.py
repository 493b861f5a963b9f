"""What happened, once per exchange, for whoever watches: access logs (brubeck.logs), metrics
(brubeck.metrics, with the `metrics` extra), or an application's own observer.

Three points report: a web request answered (`WebExchange`, from the web transports), a service request
served (`ServedRequest`, from `ServiceConnection`), and a service call made (`CallMade`, from
`ServiceClient`). Each record is built only when an observer of that point wants it. Observers are
process-wide, like loggers and Prometheus' default registry: add one with `watch(point, observer,
enabled)`; it is called in the greenlet that finished the exchange and must not block. An observer that
raises is logged (at most once a minute per observer) and the exchange goes on. Cost: a point whose
observers are all disabled (the access loggers below INFO, no metrics) costs one call of `wanted()`; a
record built and logged, some microseconds (README, performance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("brubeck.observe")

Point = Literal["web", "served", "call"]


@dataclass(slots=True)
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


@dataclass(slots=True)
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


@dataclass(slots=True)
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
#: An observer, and what says whether it wants records now (None: always), e.g. its logger's level.
Watcher = tuple[Observer, Callable[[], bool] | None]

#: The observers of each point (the reporting code asks `wanted(...)` first: one cheap call).
WEB: list[Watcher] = []
SERVED: list[Watcher] = []
CALLS: list[Watcher] = []
_POINTS: dict[str, list[Watcher]] = {"web": WEB, "served": SERVED, "call": CALLS}
_complained: dict[int, float] = {}


def watch(point: Point, observer: Observer, enabled: Callable[[], bool] | None = None) -> Callable[[], None]:
    """Call `observer(record)` for every exchange at `point` (while `enabled()`, when given: a record is
    built only when some observer is enabled); returns a function that stops it."""
    watchers = _POINTS[point]
    entry: Watcher = (observer, enabled)
    watchers.append(entry)

    def stop() -> None:
        if entry in watchers:
            watchers.remove(entry)

    return stop


def wanted(watchers: list[Watcher]) -> bool:
    """Whether any observer of a point wants a record now (so whether to build one)."""
    for observer, enabled in watchers:  # (a plain loop, the check inline: this runs on every exchange)
        if enabled is None:
            return True
        try:
            if enabled():
                return True
        except Exception:
            _complain(observer, "its enabled() check")
    return False


def _on(observer: Observer, enabled: Callable[[], bool] | None) -> bool:
    """Whether `observer` wants records now; a predicate that raises counts as no (and is logged)."""
    if enabled is None:
        return True
    try:
        return bool(enabled())
    except Exception:
        _complain(observer, "its enabled() check")
        return False


def _complain(observer: Observer, what: object) -> None:
    now = time.monotonic()
    if now - _complained.get(id(observer), -60.0) >= 60.0:
        _complained[id(observer)] = now
        log.exception("observer %r failed on %r (logged once a minute)", observer, what)


def report(watchers: list[Watcher], record: object) -> None:
    """Give `record` to each enabled observer of `watchers`; one that raises is logged (once a minute), the
    others still run."""
    for observer, enabled in tuple(watchers):
        if not _on(observer, enabled):
            continue
        try:
            observer(record)
        except Exception:
            _complain(observer, record)
