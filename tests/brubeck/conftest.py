"""Fixtures serving the sample application (tests/brubeck/sample_app.py) over each transport."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from brubeck.testing import Mongrel2Server
from tests.brubeck.sample_app import Running, serve_mongrel2, serve_wsgi


@pytest.fixture
def behind_mongrel2(mongrel2: Mongrel2Server) -> Iterator[Running]:
    """The sample app behind a real Mongrel2 with default settings (the `mongrel2` fixture)."""
    with serve_mongrel2(mongrel2) as running:
        yield running


@pytest.fixture
def behind_mongrel2_tnetstring(mongrel2_required: None) -> Iterator[Running]:
    """The sample app behind a real Mongrel2 whose handler uses protocol='tnetstring'."""
    with Mongrel2Server(protocol="tnetstring") as server, serve_mongrel2(server) as running:
        yield running


#: Bodies over this many bytes are spooled to a file (Mongrel2 1.12.2 needs it >= limits.buffer_size).
UPLOAD_THRESHOLD = 4096


@pytest.fixture
def behind_mongrel2_spooling(mongrel2_required: None) -> Iterator[Running]:
    """The sample app behind a real Mongrel2 that spools large bodies to upload.temp_store."""
    server = Mongrel2Server(limits={"limits.content_length": UPLOAD_THRESHOLD},
                            upload_temp_store="/tmp/upload.XXXXXX")
    with server, serve_mongrel2(server) as running:
        yield running


@pytest.fixture
def over_wsgi() -> Iterator[Running]:
    """The sample app over WSGIConnection on a free 127.0.0.1 port."""
    with serve_wsgi() as running:
        yield running
