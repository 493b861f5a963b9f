"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from brubeck.testing import Mongrel2Server, dnsmasq_available, mongrel2_available


@pytest.fixture
def mongrel2_required() -> None:
    """Skip when Mongrel2 is not installed, but fail instead when ``CI`` is set: CI must run these."""
    if mongrel2_available():
        return
    reason = "mongrel2 and m2sh are not on PATH (apt-get install mongrel2-core)"
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def dnsmasq_required() -> None:
    """Skip without dnsmasq, but fail instead when ``CI`` is set: CI must run these."""
    if dnsmasq_available():
        return
    reason = "dnsmasq is not installed (apt-get install dnsmasq-base)"
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def mongrel2(mongrel2_required: None) -> Iterator[Mongrel2Server]:
    """A started :class:`Mongrel2Server` with default settings, stopped after the test."""
    with Mongrel2Server() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs Mongrel2 (through `mongrel2_required`) `mongrel2`, so `-m` can select it."""
    for item in items:
        if "mongrel2_required" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mongrel2)
