"""Hypothesis settings and strategies shared by the property tests of the wire formats (`test_*_properties.py`).

`PROPERTIES` keeps each property to a couple of hundred examples and no deadline: the suite stays fast, and a
loaded CI machine does not fail a correct parser for being slow. `mutated` makes the structured-but-damaged
inputs a fuzzer would: golden bytes with a few bits flipped, bytes replaced, inserted, deleted or copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

PROPERTIES = settings(max_examples=200, deadline=None)
# (Strategies here and in the tests take named functions, not lambdas: Hypothesis 6.100, the lowest version
# allowed, parses a lambda's source file again and again to describe it, seconds per test.)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)


#: JSON values as msgspec encodes and decodes them unchanged: 64-bit integers, finite floats, any text.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    _containers,
    max_leaves=12,
)


def nested(opening: bytes, closing: bytes, depth: int = 5_000) -> bytes:
    """`depth` levels of nesting, for the RecursionError every recursive decoder has in it."""
    return opening * depth + closing * depth


@st.composite
def _mutation(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one change: a bit flipped, a byte replaced, bytes inserted, a slice deleted or copied."""
    kind = draw(st.sampled_from(["flip", "replace", "insert", "delete", "copy"] if data else ["insert"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    if kind == "replace":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    end = draw(st.integers(at, min(len(data), at + 16)))
    if kind == "delete":
        return data[:at] + data[end:]
    to = draw(st.integers(0, len(data)))
    return data[:to] + data[at:end] + data[to:]


@st.composite
def mutation(draw: st.DrawFn, data: bytes, max_changes: int = 4) -> bytes:
    """`data` with one to `max_changes` changes (see `_mutation`)."""
    for _ in range(draw(st.integers(1, max_changes))):
        data = draw(_mutation(data))
    return data


def mutated(seeds: Sequence[bytes], max_changes: int = 4) -> st.SearchStrategy[bytes]:
    """One of `seeds`, changed a few times."""
    return st.sampled_from(list(seeds)).flatmap(partial(mutation, max_changes=max_changes))
