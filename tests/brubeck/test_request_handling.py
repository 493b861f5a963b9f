"""Brubeck 0.4's import paths (`brubeck.request_handling`, `brubeck.connections`) carry the package's names."""

from __future__ import annotations

import brubeck
from brubeck import connections, request_handling
from brubeck.handlers import HTTP_METHODS
from brubeck.transports.mongrel2 import Mongrel2Connection
from brubeck.transports.wsgi import WSGIConnection
from brubeck.wire.http import http_response


def test_request_handling_offers_every_public_name_of_the_package_as_the_same_object() -> None:
    assert set(brubeck.__all__) <= set(request_handling.__all__)
    for name in brubeck.__all__:
        assert getattr(request_handling, name) is getattr(brubeck, name), name


def test_request_handling_keeps_brubeck_04s_extra_names() -> None:
    assert request_handling.HTTP_METHODS is HTTP_METHODS
    assert request_handling.http_response is http_response


def test_connections_offers_both_transports() -> None:
    assert (connections.Mongrel2Connection, connections.WSGIConnection) == (Mongrel2Connection, WSGIConnection)
