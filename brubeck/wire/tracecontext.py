"""W3C Trace Context (https://www.w3.org/TR/trace-context/), as pure functions: header text <-> values.

A `traceparent` is `VERSION-TRACE_ID-PARENT_ID-FLAGS`: 2, 32, 16 and 2 lower-case hex digits, e.g.
`00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`. Version `ff` is invalid; an all-zero trace id
or parent id is invalid; a version above `00` may carry more fields after the four, which a reader of
version 00 ignores (§3.2.4, "versioning"). `tracestate` is carried as it came, when it is well-formed
(at most 32 members, 512 characters: §3.3.1.5); otherwise it is dropped, as the spec asks.

Nothing here draws random numbers: whoever starts a trace or a span passes the bytes in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_NO_TRACE, _NO_SPAN = "0" * 32, "0" * 16
#: Longest `tracestate` carried (characters) and most members (§3.3.1.5).
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
SAMPLED = 0x01


@dataclass(frozen=True, slots=True)
class TraceContext:
    """Where a piece of work sits in a trace: the trace, the span it runs in (or, as received, the caller's
    span: its parent), the flags, and the vendors' `tracestate`."""

    trace_id: str
    span_id: str
    flags: int = 0
    state: str = ""

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def child(self, span_id: bytes) -> TraceContext:
        """The same trace, in a new span (8 bytes, not all zero) whose parent is this one."""
        return TraceContext(self.trace_id, _span_hex(span_id), self.flags, self.state)


def _span_hex(span_id: bytes) -> str:
    if len(span_id) != 8 or not any(span_id):
        raise ValueError("a span id is 8 bytes, not all zero")
    return span_id.hex()


def start_trace(trace_id: bytes, span_id: bytes, flags: int = 0) -> TraceContext:
    """A new trace (16 bytes of id, not all zero) and its first span."""
    if len(trace_id) != 16 or not any(trace_id):
        raise ValueError("a trace id is 16 bytes, not all zero")
    return TraceContext(trace_id.hex(), _span_hex(span_id), flags & 0xFF)


def parse_traceparent(traceparent: str, tracestate: str = "") -> TraceContext | None:
    """The context a `traceparent` header names, or None when it is absent or invalid (then the receiver
    starts a trace of its own, §3.2.2.1)."""
    match = _TRACEPARENT.match(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _NO_TRACE or span_id == _NO_SPAN:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16), valid_tracestate(tracestate))


def valid_tracestate(tracestate: str) -> str:
    """`tracestate` as it came when it is within the spec's bounds, else "" (dropped)."""
    state = tracestate.strip()
    if not state or len(state) > MAX_TRACESTATE:
        return ""
    members = [member.strip() for member in state.split(",") if member.strip()]
    if len(members) > MAX_TRACESTATE_MEMBERS or any("=" not in member for member in members):
        return ""
    if any(not 0x20 <= ord(ch) <= 0x7E for ch in state):
        return ""
    return ",".join(members)


