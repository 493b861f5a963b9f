"""W3C Trace Context headers: the spec's examples and its rules for what a receiver must refuse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brubeck.wire.tracecontext import (
    MAX_TRACESTATE_MEMBERS,
    TraceContext,
    parse_traceparent,
    start_trace,
    valid_tracestate,
)

SPEC_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_the_specs_example_reads_and_writes_back_the_same() -> None:
    ctx = parse_traceparent(SPEC_EXAMPLE, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1,
                               "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
    assert ctx.traceparent == SPEC_EXAMPLE and ctx.sampled


@pytest.mark.parametrize("value", [
    "",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case (§3.2.2.3)
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has four fields
    "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  # fields of the wrong length
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
])
def test_an_invalid_traceparent_is_none_so_the_receiver_starts_a_trace(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    ctx = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")
    assert ctx is not None and ctx.traceparent == SPEC_EXAMPLE  # and written back as version 00


def test_a_child_keeps_the_trace_and_gets_its_own_span() -> None:
    parent = start_trace(bytes(range(1, 17)), b"\x01" * 8, flags=1)
    child = parent.child(b"\x02" * 8)
    assert (child.trace_id, child.flags) == (parent.trace_id, 1)
    assert child.span_id == "0202020202020202" != parent.span_id
    with pytest.raises(ValueError):
        parent.child(b"\x00" * 8)
    with pytest.raises(ValueError):
        start_trace(b"\x00" * 16, b"\x01" * 8)


@pytest.mark.parametrize(("state", "kept"), [
    ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
    (" a=1 , b=2 ", "a=1,b=2"),
    ("no-equals-sign", ""),
    ("a=" + "x" * 600, ""),  # over 512 characters
    (",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1)), ""),
    ("a=caf\u00e9", ""),  # not printable ASCII
])
def test_tracestate_is_carried_as_it_came_or_dropped(state: str, kept: str) -> None:
    assert valid_tracestate(state) == kept


@given(st.text(max_size=80))
def test_any_text_is_a_context_or_none_never_an_exception(text: str) -> None:
    ctx = parse_traceparent(text, text)
    if ctx is not None:
        assert parse_traceparent(ctx.traceparent) == TraceContext(ctx.trace_id, ctx.span_id, ctx.flags)
