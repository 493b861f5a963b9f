"""What travels with a request while it is served: its deadline, its trace, and its cancellation.

A transport serving a message (a web request behind Mongrel2 or WSGI, a service request) enters a
`RequestContext` around the handler. Code the handler runs, however deep, finds it with `current()`:
the service client gives each call the smaller of its own timeout and what is left of the deadline, and
carries the trace on; log lines about the request carry its trace id (`TraceFilter`).

Cancellation: when whoever waits for the request stops waiting (the browser disconnected, a calling
service sent CANCEL), the transport calls `cancel(reason)`. The handler's greenlet then gets `Cancelled`
at the point where it waits (a service call, a sleep, I/O); a sync service call it was making sends
CANCEL on, so the work stops at every hop. Code that must not be interrupted runs inside `shielded()`:
a cancel that comes meanwhile is raised when the block ends. A handler busy on the CPU is cancelled at its
next wait. Greenlets a handler spawns start with no context (gevent gives each greenlet its own): pass
`current()` and enter it there when they should share the deadline.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gevent.hub import get_hub
from greenlet import getcurrent, greenlet

from brubeck.errors import Cancelled
from brubeck.wire.tracecontext import TraceContext, parse_traceparent, start_trace

_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("brubeck_request", default=None)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_trace() -> TraceContext:
    """A new trace with random ids (not sampled: nothing here records spans)."""
    return start_trace(os.urandom(16), os.urandom(8))


def trace_from(traceparent: str, tracestate: str = "") -> TraceContext:
    """The caller's trace continued in a new span of ours, or a new trace when the header is missing or
    invalid."""
    parent = parse_traceparent(traceparent, tracestate) if traceparent else None
    return new_trace() if parent is None else parent.child(os.urandom(8))


class RequestContext:
    """One request being served: `deadline` (ms since the epoch, or None), `trace`, and whether it was
    cancelled (`cancelled`: the reason, or "")."""

    __slots__ = ("_greenlet", "_shield", "active", "cancelled", "deadline", "trace")

    def __init__(self, trace: TraceContext, deadline: int | None = None) -> None:
        self.trace = trace
        self.deadline = deadline
        self.cancelled = ""
        self.active = False
        self._greenlet: greenlet | None = None
        self._shield = 0

    def __repr__(self) -> str:
        return f"<RequestContext trace={self.trace.trace_id} deadline={self.deadline}>"

    @property
    def trace_id(self) -> str:
        return self.trace.trace_id

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0.0 once it passed), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - _now_ms()) / 1000)

    def limit(self, timeout: float) -> float:
        """`timeout`, or what is left of the deadline when that is less."""
        left = self.remaining()
        return timeout if left is None or left >= timeout else left

    def narrow(self, seconds: float) -> None:
        """Give everything this request still calls at most `seconds` from now (a deadline only moves
        earlier): e.g. a web handler's own budget for its service calls."""
        deadline = _now_ms() + int(seconds * 1000)
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline

    @contextmanager
    def entered(self) -> Iterator[RequestContext]:
        """Make this the current context of the calling greenlet while the block runs."""
        token = _current.set(self)
        self._greenlet = getcurrent()
        self.active = True
        try:
            yield self
        finally:
            self.active = False
            self._greenlet = None
            _current.reset(token)

    def cancel(self, reason: str) -> bool:
        """Stop the request's handler: `Cancelled(reason)` is raised in its greenlet where it waits (at the
        end of a `shielded()` block when inside one). False when it is not being served (finished, or
        cancelled already)."""
        if not self.active or self.cancelled:
            return False
        self.cancelled = reason
        if self._shield:
            return True
        if getcurrent() is self._greenlet:
            raise Cancelled(reason)
        get_hub().loop.run_callback(self._throw)
        return True

    def _throw(self) -> None:
        # Run by the hub: the handler's greenlet is waiting somewhere, or finished meanwhile (then nothing).
        target = self._greenlet
        if self.active and not self._shield and target is not None and not target.dead:
            target.throw(Cancelled(self.cancelled))

    def _unshield(self) -> None:
        self._shield -= 1
        if not self._shield and self.cancelled:
            raise Cancelled(self.cancelled)


def current() -> RequestContext | None:
    """The context of the request the calling greenlet serves, or None."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left before the current request's deadline, or None (no request, or no deadline)."""
    ctx = _current.get()
    return None if ctx is None else ctx.remaining()


@contextmanager
def shielded() -> Iterator[None]:
    """Run the block to its end even if the request is cancelled meanwhile; the cancel is raised after it.
    (A shield holds off `Cancelled` only: a service call inside still has its timeout.)"""
    ctx = _current.get()
    if ctx is None:
        yield
        return
    ctx._shield += 1
    try:
        yield
    except BaseException:
        ctx._shield -= 1  # the block's own exception goes on; a pending cancel is raised at the next wait
        if not ctx._shield and ctx.cancelled:
            get_hub().loop.run_callback(ctx._throw)
        raise
    ctx._unshield()


class TraceFilter(logging.Filter):
    """Adds `trace_id` (and `span_id`) to every record, from the request the logging greenlet serves ("-"
    outside one), for formats such as `"%(asctime)s %(trace_id)s %(name)s: %(message)s"`. Install it on a
    handler (`handler.addFilter(TraceFilter())`), so that it sees every logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current.get()
        record.trace_id = ctx.trace.trace_id if ctx is not None else "-"
        record.span_id = ctx.trace.span_id if ctx is not None else "-"
        return True


def trace_label() -> str:
    """" trace <id>" for a log line about the current request, "" outside one."""
    ctx = _current.get()
    return "" if ctx is None else f" trace {ctx.trace.trace_id}"


def web_context(headers: Any, settings: dict[str, Any], header: Any) -> RequestContext:
    """The context of a web request: its trace from `traceparent`/`tracestate` (else a new one), and its
    deadline from the app's `request_budget` setting (seconds) and, from a trusted front end, the header
    the `budget_header` setting names (milliseconds left, as Envoy's `x-envoy-expected-rq-timeout-ms`),
    whichever is less. `header(headers, name)` reads one header's value ("" when absent)."""
    trace = trace_from(header(headers, "traceparent"), header(headers, "tracestate"))
    budget: float | None = settings.get("request_budget")
    name = settings.get("budget_header")
    if name:
        text = header(headers, name).strip()
        if text.isdigit():
            given = int(text) / 1000
            budget = given if budget is None else min(budget, given)
    deadline = None if budget is None else _now_ms() + int(budget * 1000)
    return RequestContext(trace, deadline)
