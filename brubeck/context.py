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
next wait. Greenlets a handler spawns start with no context (gevent gives each greenlet its own): enter
`current().derived()` in one that should share the deadline and trace, and be cancelled with the request.

Cost: a context is a small object and a contextvar set and reset per request; the trace is parsed from its
header only when something asks for it (a log line, a call).
"""

from __future__ import annotations

import contextvars
import logging
import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gevent.hub import get_hub
from greenlet import getcurrent, greenlet

from brubeck.errors import Cancelled
from brubeck.wire.tracecontext import TraceContext, parse_traceparent

_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("brubeck_request", default=None)
#: A budget header's value: 1 to 12 decimal digits (milliseconds), nothing else.
_BUDGET = re.compile(r"[0-9]{1,12}")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_trace() -> TraceContext:
    """A new trace with random ids (not sampled: nothing here records spans). W3C asks for random ids, not
    secret ones: `random` is enough, and several times cheaper than os.urandom."""
    return TraceContext(f"{random.getrandbits(128) or 1:032x}", f"{random.getrandbits(64) or 1:016x}")


def new_traceparent() -> str:
    """The `traceparent` of a new trace (as `new_trace().traceparent`, without building the value)."""
    return f"00-{random.getrandbits(128) or 1:032x}-{random.getrandbits(64) or 1:016x}-00"


def trace_from(traceparent: str, tracestate: str = "") -> TraceContext:
    """The trace a `traceparent` names, as it came (without a recording tracer, no span of ours exists, so
    the caller's span stays the parent of what we call: W3C's pass-through), or a new trace when the header
    is missing or invalid."""
    received = parse_traceparent(traceparent, tracestate) if traceparent else None
    return new_trace() if received is None else received


class RequestContext:
    """One request being served: `deadline` (ms since the epoch, or None), `trace`, and whether it was
    cancelled (`cancelled`: the reason, or "").

    It is current in one greenlet at a time (`with ctx.entered():`); for work a handler hands to another
    greenlet, enter `ctx.derived()` there: the same deadline and trace, cancelled with this one."""

    __slots__ = (
        "_children",
        "_delivered",
        "_greenlet",
        "_parent",
        "_shield",
        "_token",
        "_trace",
        "_traceparent",
        "_tracestate",
        "active",
        "cancelled",
        "deadline",
        "route",
    )

    def __init__(self, trace: TraceContext | None = None, deadline: int | None = None, *,
                 traceparent: str = "", tracestate: str = "") -> None:
        self._trace = trace  # (or read from `traceparent` when first asked for: most requests never are)
        self._traceparent = traceparent
        self._tracestate = tracestate
        self.deadline = deadline
        self.cancelled = ""
        self.active = False
        self.route = ""  # the pattern of the route serving it, once routed (for access logs and metrics)
        self._greenlet: greenlet | None = None
        self._token: contextvars.Token[RequestContext | None] | None = None
        self._shield = 0
        self._delivered = False  # Cancelled was raised in the handler: never a second time
        self._children: list[RequestContext] = []
        self._parent: RequestContext | None = None

    def __repr__(self) -> str:
        return f"<RequestContext trace={self.trace.trace_id} deadline={self.deadline}>"

    @property
    def trace(self) -> TraceContext:
        if self._trace is None:
            self._trace = trace_from(self._traceparent, self._tracestate)
        return self._trace

    @trace.setter
    def trace(self, trace: TraceContext) -> None:
        self._trace = trace

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

    def derived(self) -> RequestContext:
        """A context for another greenlet working on this request: the same trace and deadline, cancelled
        when this one is. Enter it in that greenlet (`with ctx.derived().entered():`)."""
        child = RequestContext(self.trace, self.deadline)
        child._parent = self
        child.cancelled = self.cancelled
        self._children.append(child)
        return child

    def entered(self) -> RequestContext:
        """Use as `with ctx.entered():` to make this the calling greenlet's current context for the block."""
        return self

    def __enter__(self) -> RequestContext:
        if self.active:
            raise RuntimeError("a RequestContext is current in one greenlet at a time: enter ctx.derived() in "
                               "another")
        self._token = _current.set(self)
        self._greenlet = getcurrent()
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self._greenlet = None
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        parent = self._parent
        if parent is not None and self in parent._children:
            parent._children.remove(self)

    def cancel(self, reason: str) -> bool:
        """Stop the request's handler: `Cancelled(reason)` is raised once in its greenlet where it waits
        (at the end of a `shielded()` block when inside one), and in the greenlets of its `derived()`
        contexts. False when it is not being served (finished, or cancelled already)."""
        if not self.active or self.cancelled:
            return False
        self.cancelled = reason
        for child in list(self._children):
            child.cancel(reason)
        if self._shield:
            return True
        if getcurrent() is self._greenlet:
            self._raise()
        get_hub().loop.run_callback(self._throw)
        return True

    def _raise(self) -> None:
        self._delivered = True
        raise Cancelled(self.cancelled)

    def _throw(self) -> None:
        # Run by the hub: the handler's greenlet waits somewhere, or it finished (or was told) meanwhile.
        target = self._greenlet
        if self.active and not self._shield and not self._delivered and target is not None and not target.dead:
            self._delivered = True
            target.throw(Cancelled(self.cancelled))

    def _unshield(self) -> None:
        self._shield -= 1
        if not self._shield and self.cancelled and not self._delivered:
            self._raise()


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
        if not ctx._shield and ctx.cancelled and not ctx._delivered:
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
    """The context of a web request: its trace from `traceparent`/`tracestate` (else a new one, when first
    asked for), and its deadline from the app's `request_budget` setting (seconds) and, from a trusted
    front end, the header the `budget_header` setting names (milliseconds left, as Envoy's
    `x-envoy-expected-rq-timeout-ms`), whichever is less. Only a positive budget counts: 0, a negative
    setting or a header that is not 1 to 12 decimal digits means none from that source. The front end must
    set (overwrite) that header on every request: a browser can send it too. `header(headers, name)` reads
    one header's value ("" when absent)."""
    budget: float | None = settings.get("request_budget")
    if budget is not None and budget <= 0:
        budget = None
    name = settings.get("budget_header")
    if name:
        text = header(headers, name).strip()
        if _BUDGET.fullmatch(text) and int(text) > 0:
            given = int(text) / 1000
            budget = given if budget is None else min(budget, given)
    deadline = None if budget is None else _now_ms() + int(budget * 1000)
    return RequestContext(None, deadline, traceparent=header(headers, "traceparent"),
                          tracestate=header(headers, "tracestate"))
