"""Fixtures of the brubeckservice tests: a gate for blocking handlers, an in-memory service pair, a fake
service, a short directory for ipc:// sockets, and other hosts (network namespaces)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, FakeService, Gate


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def pair(gate: Gate) -> Iterator[ServicePair]:
    """The service app serving helpers.ROUTES, and a client of it with a 5 s timeout."""
    with ServicePair(ROUTES, PASSPHRASE, gate=gate) as service_pair:
        yield service_pair


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A fresh directory for ipc:// sockets: their paths must fit in a sockaddr_un (107 bytes), and pytest's
    tmp_path can be longer."""
    path = Path(tempfile.mkdtemp(prefix="brs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake_service() -> Iterator[FakeService]:
    service = FakeService()
    yield service
    service.close()


@pytest.fixture
def netns_hosts() -> Iterator[object]:
    """A `netns.HostFactory`: `netns_hosts(n)` makes n hosts (network namespaces), all removed after the test.

    Skips without root and iproute2, but fails instead when CI is set: CI must run these.
    """
    from tests.brubeckservice.netns import host_factory, require_netns

    require_netns()
    with host_factory() as make:
        yield make
