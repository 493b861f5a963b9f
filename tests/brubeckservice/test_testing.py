"""ServicePair, the shipped test helper: a real service and client in memory, torn down without a trace."""

from __future__ import annotations

import re

import gevent
import pytest

from brubeckservice.client import ServiceClient
from brubeckservice.errors import AuthenticationError, ServiceUnavailable
from brubeckservice.signing import Signer
from brubeckservice.testing import DEFAULT_PASSPHRASE, ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT, EchoHandler, Gate, assert_next_is_pong


def test_the_client_calls_the_service_handlers() -> None:
    with ServicePair([(r"^/service/slow", EchoHandler)]) as pair:
        response = pair.client.call("/service/slow", arguments={"RETURN_DATA": "hi"})
        assert (response.status_code, response.body["RETURN_DATA"]) == (200, "hi")
        assert pair.connection.stats["served"] == 1


def test_both_sides_default_to_the_test_passphrase() -> None:
    with ServicePair(ROUTES) as pair:
        assert pair.passphrase == DEFAULT_PASSPHRASE
        assert_next_is_pong(pair.raw_socket(), Signer(DEFAULT_PASSPHRASE))


def test_settings_reach_the_handlers(gate: Gate) -> None:
    with ServicePair(ROUTES, PASSPHRASE, gate=gate) as pair:
        pair.client.send("/block", arguments={"RETURN_DATA": "seen"})
        assert gate.next_arrival().get_argument("RETURN_DATA") == "seen"
        assert pair.app.settings["gate"] is gate


def test_two_pairs_never_meet() -> None:
    with ServicePair(ROUTES) as one, ServicePair(ROUTES) as two:
        assert one.address != two.address
        one.client.call("/echo")
        assert (one.connection.stats["served"], two.connection.stats["served"]) == (1, 0)


def test_a_client_passphrase_that_differs_is_refused() -> None:
    with ServicePair(ROUTES, "service secret", client_passphrase="client secret") as pair, \
            pytest.raises(AuthenticationError):
        pair.client.call("/echo")


def test_close_fails_calls_in_flight_and_stops_the_service(gate: Gate) -> None:
    pair = ServicePair(ROUTES, PASSPHRASE, gate=gate)
    call = gevent.spawn(pair.client.call, "/block")
    gate.next_arrival()
    pair.close()
    with pytest.raises(ServiceUnavailable):
        call.get(timeout=WAIT)
    assert pair.serving.dead
    assert len(pair.app.pool or ()) == 0  # the blocked request greenlet is gone too
    pair.close()  # twice is fine


def test_a_tcp_wildcard_address_becomes_the_bound_port() -> None:
    with ServicePair(ROUTES, PASSPHRASE, address="tcp://127.0.0.1:*") as pair:
        assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", pair.address)
        with ServiceClient(pair.address, None, PASSPHRASE, timeout=WAIT) as outsider:  # its own context
            assert outsider.call("/echo").ok


def test_raw_sockets_reach_the_service() -> None:
    with ServicePair(ROUTES, PASSPHRASE) as pair:
        assert_next_is_pong(pair.raw_socket(), Signer(PASSPHRASE))


def test_extra_clients_share_the_service() -> None:
    with ServicePair(ROUTES, PASSPHRASE) as pair:
        other = pair.new_client(timeout=1.0)
        assert other is not pair.client
        assert other.timeout == 1.0
        assert other.call("/echo").ok
