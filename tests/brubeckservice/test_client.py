"""ServiceClient: calls get their own reply, or fail in bounded time with an error that says why.

Against a real service (ServicePair, in memory) and against a bare ROUTER playing a service that answers
whatever the test likes (FakeService), including garbage, forgeries and late replies.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import gevent
import msgspec
import pytest
import zmq.green as zmq
from gevent.event import Event
from gevent.queue import Queue

from brubeck.testing import free_port
from brubeckservice import envelope
from brubeckservice.client import DEFAULT_CONNECT_TIMEOUT, ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteServiceError,
    RequestTooLarge,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT, FakeService, Gate, wait_until

# -- calls and replies --------------------------------------------------------------------------------

def test_a_call_returns_the_services_reply(pair: ServicePair) -> None:
    response = pair.client.call("/echo", arguments={"RETURN_DATA": "hello"}, conn_id="7")
    assert (response.status_code, response.status_msg) == (200, "Took a while, but I am back.")
    assert response.body == {"RETURN_DATA": "hello", "conn_id": "7"}
    assert (response.path, response.method, response.conn_id) == ("/echo", "response", "7")
    assert pair.client.pending == 0


def test_concurrent_calls_each_get_their_own_reply(pair: ServicePair, gate: Gate) -> None:
    calls = [gevent.spawn(pair.client.call, "/block", arguments={"RETURN_DATA": f"call {n}"}) for n in range(10)]
    for _ in calls:
        gate.next_arrival()  # all ten are at the service at once, on one socket
    assert pair.client.pending == 10
    gate.release.set()
    assert [c.get(timeout=WAIT).body["RETURN_DATA"] for c in calls] == [f"call {n}" for n in range(10)]
    assert pair.client.pending == 0


def test_an_error_status_is_returned_not_raised(pair: ServicePair) -> None:
    response = pair.client.call("/fail")
    assert (response.status_code, response.ok) == (500, False)
    with pytest.raises(RemoteServiceError, match=r"\(ValueError: the handler broke\)"):
        response.raise_for_status()


def test_call_request_sends_a_ready_made_request(pair: ServicePair) -> None:
    request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": "made"}, conn_id="9")
    assert pair.client.call_request(request).body == {"RETURN_DATA": "made", "conn_id": "9"}


def test_send_returns_at_once_and_the_reply_reaches_on_reply_once(pair: ServicePair, gate: Gate) -> None:
    replies: Queue = Queue()
    msg_id = pair.client.send("/block", arguments={"RETURN_DATA": "later"}, on_reply=replies.put)
    gate.next_arrival()
    assert replies.empty()  # send did not wait for the handler, which is still blocked
    gate.release.set()
    reply = replies.get(timeout=WAIT)
    assert (reply.msg_id, reply.body["RETURN_DATA"]) == (msg_id, "later")
    pair.client.ping()  # a round trip after the reply: a second delivery would have come first
    assert replies.empty()
    assert pair.client.pending == 0


def test_send_without_a_callback_uses_the_clients_on_reply(gate: Gate) -> None:
    replies: Queue = Queue()
    with ServicePair(ROUTES, PASSPHRASE, on_reply=replies.put, gate=gate) as pair:
        pair.client.send("/echo", arguments={"RETURN_DATA": "default"})
        assert replies.get(timeout=WAIT).body["RETURN_DATA"] == "default"


# -- timeouts and late replies ------------------------------------------------------------------------------

def test_a_call_times_out_and_its_late_reply_is_dropped_and_counted(pair: ServicePair, gate: Gate) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceTimeout, match="no reply from /block"):
        pair.client.call("/block", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < WAIT
    assert pair.client.pending == 0
    assert pair.client.endpoints[0].inflight == 0
    gate.next_arrival()
    gate.release.set()  # now the service answers, too late
    wait_until(lambda: pair.client.stats["late"] == 1, "the late reply")
    assert pair.client.stats["replies"] == 0
    assert pair.client.call("/echo").ok  # and the client carries on


def test_a_request_that_timed_out_can_be_sent_again(pair: ServicePair, gate: Gate) -> None:
    request = ServiceRequest(path="/block", arguments={"RETURN_DATA": "retried"})
    with pytest.raises(ServiceTimeout):
        pair.client.call_request(request, timeout=0.2)
    gate.release.set()
    assert pair.client.call_request(request).body["RETURN_DATA"] == "retried"  # a deadline of its own
    assert request.deadline is None  # the caller's request is left as it was


def test_a_send_that_times_out_reports_to_on_error_and_drops_the_late_reply(pair: ServicePair, gate: Gate) -> None:
    replies: Queue = Queue()
    errors: Queue = Queue()
    pair.client.send("/block", timeout=0.2, on_reply=replies.put, on_error=errors.put)
    assert isinstance(errors.get(timeout=WAIT), ServiceTimeout)
    assert pair.client.pending == 0
    gate.release.set()
    wait_until(lambda: pair.client.stats["late"] == 1, "the late reply")
    assert replies.empty()


def test_a_later_send_with_an_earlier_timeout_still_times_out_on_time(pair: ServicePair) -> None:
    errors: Queue = Queue()
    pair.client.send("/block", timeout=30, on_error=errors.put)
    started = time.monotonic()
    pair.client.send("/block", timeout=0.2, on_error=errors.put)
    assert isinstance(errors.get(timeout=WAIT), ServiceTimeout)
    assert time.monotonic() - started < 2
    assert pair.client.pending == 1
    pair.client.close(timeout=0)  # the first is still out, and nothing will answer it: do not wait


# -- no service, wrong service -----------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["ipc://{tmp}/nobody", "tcp://127.0.0.1:{port}"])
def test_no_service_is_unavailable_within_the_timeout(address: str, tmp_path: Path) -> None:
    # (Not inproc: libzmq queues an inproc message until someone binds, so that call times out instead.)
    with ServiceClient(address.format(tmp=tmp_path, port=free_port()), None, PASSPHRASE, timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no connection to the service"):
            client.call("/echo")
        assert 0.3 <= time.monotonic() - started < 2
        assert client.pending == 0
        assert client.endpoints[0].inflight == 0


def test_connect_timeout_gives_up_before_the_call_timeout() -> None:
    with ServiceClient(f"tcp://127.0.0.1:{free_port()}", None, PASSPHRASE, timeout=30, connect_timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable):
            client.call("/echo")
        assert time.monotonic() - started < 2


def test_no_service_fails_a_call_within_the_default_connect_timeout_not_the_call_timeout(tmp_path: Path) -> None:
    with ServiceClient(f"ipc://{tmp_path}/nobody", None, PASSPHRASE, timeout=30) as client:
        assert client.connect_timeout == DEFAULT_CONNECT_TIMEOUT < 10
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no connection to the service"):
            client.call("/echo")
        assert time.monotonic() - started < 10  # the 30 s call timeout never came into it
        assert client.pending == 0


def test_a_send_with_no_service_returns_at_once_and_reports_to_on_error(tmp_path: Path) -> None:
    with ServiceClient(f"ipc://{tmp_path}/nobody", None, PASSPHRASE, timeout=30, connect_timeout=0.5) as client:
        replies: Queue = Queue()
        errors: Queue = Queue()
        started = time.monotonic()
        client.send("/echo", on_reply=replies.put, on_error=errors.put)
        assert (client.pending, errors.qsize()) == (1, 0)  # returned while the message waits for a connection
        error = errors.get(timeout=WAIT)
        assert isinstance(error, ServiceUnavailable)
        assert "no connection to the service" in str(error)
        assert time.monotonic() - started < 10
        assert (client.pending, replies.qsize()) == (0, 0)


def test_once_the_connect_timeout_has_run_out_calls_and_sends_fail_at_once(tmp_path: Path) -> None:
    with ServiceClient(f"ipc://{tmp_path}/nobody", None, PASSPHRASE, timeout=30, connect_timeout=0.3) as client:
        assert client.available  # connecting: a message would be held
        with pytest.raises(ServiceUnavailable):
            client.call("/echo")
        assert not client.available
        errors: Queue = Queue()
        with pytest.raises(ServiceUnavailable, match=r"no connection to the service at .* for 0\.3s"):
            client.send("/echo", on_error=errors.put)  # raised: nothing was held, nothing waits
        with pytest.raises(ServiceUnavailable, match="no connection to the service"):
            client.ping()
        assert (client.pending, errors.qsize(), client.stats["unavailable"]) == (0, 0, 3)


def test_a_service_started_after_the_client_is_reached(tmp_path: Path, gate: Gate) -> None:
    address = f"ipc://{tmp_path}/later"
    with ServiceClient(address, None, PASSPHRASE, timeout=WAIT, connect_timeout=WAIT) as client:
        replies: Queue = Queue()
        client.send("/echo", arguments={"RETURN_DATA": "sent first"}, on_reply=replies.put)  # returns at once
        call = gevent.spawn(client.call, "/echo", arguments={"RETURN_DATA": "called"})
        wait_until(lambda: client.pending == 2, "both to wait for the connection")
        with ServicePair(ROUTES, PASSPHRASE, address=address, gate=gate) as service:
            assert call.get(timeout=WAIT).body["RETURN_DATA"] == "called"
            assert replies.get(timeout=WAIT).body["RETURN_DATA"] == "sent first"
            assert client.endpoints[0].connected
            assert service.connection.stats["served"] == 2
            assert client.call("/echo").ok  # and straight through from now on
            assert client.stats["queued"] == 2


def test_a_wrong_passphrase_is_an_authentication_error(pair: ServicePair) -> None:
    stranger = pair.new_client("not the passphrase")
    with pytest.raises(AuthenticationError, match="refused our signature"):
        stranger.call("/echo")
    with pytest.raises(AuthenticationError, match="refused our signature"):
        stranger.ping()
    assert stranger.pending == 0
    assert stranger.endpoints[0].inflight == 0
    assert pair.connection.stats["forged"] == 2
    assert pair.connection.stats["served"] == 0


def test_a_request_over_max_message_size_is_refused_before_it_is_sent(gate: Gate) -> None:
    with ServicePair(ROUTES, PASSPHRASE, max_message_size=2048, gate=gate) as pair:
        with pytest.raises(RequestTooLarge, match="exceeds max_message_size 2048"):
            pair.client.call("/echo", arguments={"RETURN_DATA": "x" * 4096})
        assert pair.client.pending == 0
        assert pair.client.endpoints[0].inflight == 0
        assert pair.client.stats["sent"] == 0
        assert pair.client.ping()["stats"] == {}  # the service saw nothing
        assert pair.client.call("/echo", arguments={"RETURN_DATA": "x" * 100}).ok


# -- ping and close -------------------------------------------------------------------------------------

def test_ping_without_a_timeout_waits_the_clients_timeout(fake_service: FakeService) -> None:
    client = ServiceClient(fake_service.address, None, PASSPHRASE, context=fake_service.context, timeout=0.3)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceTimeout):
            client.ping()  # the fake service never answers
        assert 0.3 <= time.monotonic() - started < 2
        assert client.pending == 0
    finally:
        client.close(timeout=0)


def test_ping_returns_the_services_stats(pair: ServicePair, gate: Gate) -> None:
    def load(info: dict[str, Any]) -> dict[str, Any]:
        return {key: info[key] for key in ("inflight", "served", "errors", "stats")}

    first = pair.client.ping()
    assert load(first) == {"inflight": 0, "served": 0, "errors": 0, "stats": {}}
    assert (first["capacity"], first["queued"], first["draining"]) == (100, 0, False)
    assert first["latency_ms"] == {"p50": None, "p99": None, "samples": 0}
    pair.client.call("/echo")
    pair.client.call("/fail")  # its handler raises: answered 500, counted as an error
    blocked = gevent.spawn(pair.client.call, "/block")
    gate.next_arrival()
    busy = pair.client.ping()
    assert load(busy) == {"inflight": 1, "served": 2, "errors": 1, "stats": {"served": 2, "failed": 1}}
    assert busy["latency_ms"]["samples"] == 2
    assert 0 < busy["latency_ms"]["p50"] <= busy["latency_ms"]["p99"]
    gate.release.set()
    blocked.get(timeout=WAIT)
    done = pair.client.ping()
    assert (done["served"], done["errors"], done["latency_ms"]["samples"]) == (3, 1, 3)
    assert done["latency_ms"]["p99"] >= busy["latency_ms"]["p99"]  # (the max of 3, then of 2 of them)


def test_close_waits_for_the_replies_on_their_way_and_runs_their_callbacks(pair: ServicePair, gate: Gate) -> None:
    client = pair.client
    waiting = gevent.spawn(client.call, "/block", arguments={"RETURN_DATA": "called"})
    handled: Queue = Queue()
    client.send("/block", arguments={"RETURN_DATA": "sent"}, on_reply=lambda r: handled.put(r.body))
    gate.next_arrival()
    gate.next_arrival()
    closing = gevent.spawn(client.close)
    wait_until(lambda: client._closing, "close to begin")
    with pytest.raises(ServiceUnavailable, match="the service client is closed"):
        client.call("/echo")  # no new calls while closing
    assert not closing.ready()  # still waiting for the two replies
    gate.release.set()
    closing.get(timeout=WAIT)
    assert handled.get_nowait() == {"RETURN_DATA": "sent", "conn_id": ""}  # it ran before close returned
    assert waiting.get(timeout=WAIT).body["RETURN_DATA"] == "called"
    assert (client.pending, client.stats["replies"]) == (0, 2)


def test_leaving_the_with_block_delivers_a_fire_and_forget_reply(pair: ServicePair, gate: Gate) -> None:
    handled: Queue = Queue()

    def answer_when_it_arrives() -> None:
        gate.next_arrival()
        gate.release.set()

    with pair.new_client() as client:
        client.send("/block", arguments={"RETURN_DATA": "bye"}, on_reply=handled.put)
        gevent.spawn(answer_when_it_arrives)
    assert handled.get_nowait().body["RETURN_DATA"] == "bye"  # leaving the block waited for the reply


def test_close_waits_for_a_running_callback_but_not_for_itself(pair: ServicePair) -> None:
    finish = Event()
    order: list[str] = []

    def slow_callback(response: ServiceResponse) -> None:
        finish.wait(WAIT)
        order.append("callback")

    client = pair.new_client()
    client.send("/echo", on_reply=slow_callback)
    wait_until(lambda: client.pending == 0, "the reply")

    def close() -> None:
        client.close()
        order.append("closed")

    closing = gevent.spawn(close)
    wait_until(lambda: client._closing, "close to begin")
    assert not closing.ready()
    finish.set()
    closing.get(timeout=WAIT)
    assert order == ["callback", "closed"]

    closed_by_its_callback = pair.new_client()
    done: Queue = Queue()

    def close_from_the_callback(response: ServiceResponse) -> None:
        closed_by_its_callback.close(timeout=30)
        done.put("closed")

    closed_by_its_callback.send("/echo", on_reply=close_from_the_callback)
    assert done.get(timeout=WAIT) == "closed"  # it did not wait 30 s for itself


def test_close_fails_the_calls_still_out_after_its_timeout(pair: ServicePair, gate: Gate) -> None:
    waiting = gevent.spawn(pair.client.call, "/block")
    errors: Queue = Queue()
    pair.client.send("/block", on_error=errors.put)
    gate.next_arrival()
    gate.next_arrival()
    started = time.monotonic()
    pair.client.close(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < WAIT
    with pytest.raises(ServiceUnavailable, match="closed"):
        waiting.get(timeout=WAIT)
    assert isinstance(errors.get(timeout=WAIT), ServiceUnavailable)
    assert pair.client.pending == 0
    with pytest.raises(ServiceUnavailable, match="the service client is closed"):
        pair.client.call("/echo")
    pair.client.close()  # twice is fine


# -- connections ---------------------------------------------------------------------------------------------

def test_a_lost_connection_fails_the_calls_in_flight_at_once(tmp_path: Path, gate: Gate) -> None:
    service = ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/service", gate=gate)
    client = ServiceClient(service.address, None, PASSPHRASE, timeout=30)
    try:
        wait_until(lambda: client.endpoints[0].connected, "the connection")
        call = gevent.spawn(client.call, "/block")
        gate.next_arrival()
        started = time.monotonic()
        service.close()
        with pytest.raises(ServiceUnavailable, match="lost while /block was in flight"):
            call.get(timeout=WAIT)
        assert time.monotonic() - started < WAIT
        assert (client.pending, client.endpoints[0].inflight, client.stats["lost"]) == (0, 0, 1)
    finally:
        client.close()
        service.close()


def test_calls_go_to_the_connected_address(tmp_path: Path, gate: Gate) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"
    with ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/live", gate=gate) as live, \
            ServiceClient([nobody, live.address], None, PASSPHRASE, timeout=2) as client:
        wait_until(lambda: client.endpoints[1].connected, "the live service's connection")
        for _ in range(5):
            assert client.call("/echo").ok
        assert live.connection.stats["served"] == 5


def test_calls_spread_to_the_address_with_the_fewest_in_flight(tmp_path: Path) -> None:
    gates = [Gate(), Gate()]
    with ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/one", gate=gates[0]) as one, \
            ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/two", gate=gates[1]) as two, \
            ServiceClient([one.address, two.address], None, PASSPHRASE) as client:
        # Both connected and reporting their room: before its first report a worker is assumed to take one
        # call, and a burst goes to whichever reports first.
        wait_until(lambda: all(e.connected and "capacity" in e.reported for e in client.endpoints),
                   "both connections and their reports")
        replies: Queue = Queue()
        for _ in range(6):
            client.send("/block", on_reply=replies.put)
        for g in gates:
            for _ in range(3):
                g.next_arrival()
        assert [e.inflight for e in client.endpoints] == [3, 3]
        assert [g.arrived.qsize() for g in gates] == [0, 0]
        gates[0].release.set()
        for _ in range(3):
            replies.get(timeout=WAIT)
        assert [e.inflight for e in client.endpoints] == [0, 3]
        assert client.call("/echo").ok  # the idle one takes it, not the one with three in flight
        assert (one.connection.stats["served"], two.connection.stats["served"]) == (4, 0)
        gates[1].release.set()
        for _ in range(3):
            replies.get(timeout=WAIT)


# -- what a (fake) service sends back --------------------------------------------------------------------------

def test_a_forged_reply_is_dropped_counted_and_logged(fake_service: FakeService,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    call = gevent.spawn(fake_service.client.call, "/echo")
    routing, request = fake_service.receive()
    forged = ServiceResponse(status_code=200, body={"RETURN_DATA": "forged"})
    with caplog.at_level(logging.WARNING, logger="brubeckservice.client"):
        fake_service.reply(routing, request.msg_id, forged, signer=Signer("not the passphrase"))
        wait_until(lambda: fake_service.client.stats["forged"] == 1, "the forged reply to be counted")
    assert "failed verification: bad or missing signature" in caplog.text
    assert fake_service.client.pending == 1  # still waiting for the real one
    fake_service.reply(routing, request.msg_id, ServiceResponse(status_code=200, body={"RETURN_DATA": "real"}))
    assert call.get(timeout=WAIT).body == {"RETURN_DATA": "real"}


def test_a_stale_reply_is_dropped_as_forged(fake_service: FakeService) -> None:
    call = gevent.spawn(fake_service.client.call, "/echo", timeout=WAIT)
    routing, request = fake_service.receive()
    stale = envelope.encode_reply(fake_service.signer, request.msg_id, ServiceResponse(status_code=200),
                                  now_ms() - 120_000)
    fake_service.send(routing, stale)
    wait_until(lambda: fake_service.client.stats["forged"] == 1, "the stale reply to be counted")
    fake_service.reply(routing, request.msg_id, ServiceResponse(status_code=201))
    assert call.get(timeout=WAIT).status_code == 201


def test_garbage_from_the_service_is_dropped_and_the_client_carries_on(fake_service: FakeService) -> None:
    client = fake_service.client
    call = gevent.spawn(client.call, "/echo")
    routing, request = fake_service.receive()
    signer, msg_id = fake_service.signer, request.msg_id
    garbage: list[list[bytes]] = [
        [b"random garbage"],
        [os.urandom(64) for _ in range(6)],
        [os.urandom(1) for _ in range(3)],
        [b"BRS2", b"REP", msg_id, b"{}", b"{}", b"\x00" * 32],
        [b"BRS1", b"NOPE", msg_id, b"{}", b"{}", b"\x00" * 32],
        [b"BRS1", b"REP", b"", b"{}", b"{}", b"\x00" * 32],
        [b"BRS1", b"REP", b"x" * 65, b"{}", b"{}", b"\x00" * 32],
        envelope.encode_request(signer, msg_id, ServiceRequest(path="/"), now_ms(), "s", 1),  # not for a client
        [b"BRS1", b"ERR", msg_id, b"not json", b"", b""],
    ]
    for frames in garbage:
        fake_service.send(routing, frames)
    wait_until(lambda: client.stats["malformed"] == len(garbage), "every garbage message to be counted")
    assert client.pending == 1
    assert client.stats["errors"] == 0  # nothing escaped into the listener
    assert not client._reaper.dead and all(not greenlet.dead for greenlet in client.pool._greenlets)
    fake_service.reply(routing, msg_id, ServiceResponse(status_code=200, body={"RETURN_DATA": "fine"}))
    assert call.get(timeout=WAIT).body == {"RETURN_DATA": "fine"}


def test_a_signed_reply_that_does_not_parse_fails_its_call(fake_service: FakeService) -> None:
    call = gevent.spawn(fake_service.client.call, "/echo")
    routing, request = fake_service.receive()
    frames = [envelope.MARKER, envelope.REP, request.msg_id, b'{"ts":"soon"}', b"{}"]
    fake_service.send(routing, [*frames, fake_service.signer.sign(frames)])
    with pytest.raises(ProtocolError, match="the service's reply does not parse"):
        call.get(timeout=WAIT)
    assert fake_service.client.pending == 0


@pytest.mark.parametrize(("status", "reason", "error", "message"), [
    (401, "replayed message", AuthenticationError, "refused our signature: replayed message"),
    (400, "unknown message kind", ProtocolError, "rejected the request: 400 unknown message kind"),
])
def test_an_err_from_the_service_fails_its_call(fake_service: FakeService, status: int, reason: str,
                                                error: type[Exception], message: str) -> None:
    call = gevent.spawn(fake_service.client.call, "/echo")
    routing, request = fake_service.receive()
    fake_service.send(routing, envelope.encode_error(request.msg_id, status, reason, now_ms()))
    with pytest.raises(error, match=message):
        call.get(timeout=WAIT)
    assert fake_service.client.pending == 0
    assert fake_service.client.endpoints[0].inflight == 0


def test_a_reply_to_no_call_of_ours_is_counted_as_late(fake_service: FakeService) -> None:
    fake_service.client.send("/echo")
    routing, _ = fake_service.receive()
    fake_service.reply(routing, b"someone-elses-1", ServiceResponse(status_code=200))
    wait_until(lambda: fake_service.client.stats["late"] == 1, "the stray reply to be counted")
    assert fake_service.client.pending == 1


def test_requests_carry_the_clients_session_and_increasing_numbers(fake_service: FakeService) -> None:
    # What the service's replay guard needs: one session per client, numbers rising as requests leave.
    for _ in range(3):
        fake_service.client.send("/echo")
    headers = [msgspec.json.decode(fake_service.receive()[1].header, type=envelope.RequestHeader) for _ in range(3)]
    assert [h.sid for h in headers] == [fake_service.client.session] * 3
    assert [h.seq for h in headers] == [1, 2, 3]


# -- a service breaking the call contract, one bad worker among good ones -----------------------------------

def test_a_pong_carrying_a_calls_id_completes_nothing(fake_service: FakeService) -> None:
    # Only a REP answers a REQ: a signed PONG with the id neither makes call() return a dict nor swallows a send().
    client = fake_service.client
    replies: Queue = Queue()
    errors: Queue = Queue()
    call = gevent.spawn(client.call, "/echo", timeout=WAIT)
    sent = client.send("/echo", on_reply=replies.put, on_error=errors.put)
    answered = []
    for _ in range(2):
        routing, env = fake_service.receive()
        fake_service.send(routing, envelope.build_pong(fake_service.signer, env.msg_id, now_ms(), {"not": "a reply"}))
        answered.append((routing, env.msg_id))
    wait_until(lambda: client.endpoints[0].reported.get("not") == "a reply", "the PONGs to be read")
    assert (call.ready(), replies.qsize(), errors.qsize(), client.pending) == (False, 0, 0, 2)
    for routing, msg_id in answered:
        fake_service.reply(routing, msg_id, ServiceResponse(status_code=200, body={"RETURN_DATA": msg_id.decode()}))
    assert call.get(timeout=WAIT).status_code == 200
    assert replies.get(timeout=WAIT).body["RETURN_DATA"] == sent.decode()


def test_an_err_counts_only_on_the_connection_its_call_went_on() -> None:
    # ERR is unsigned, so anyone on any of a client's connections can send one: it must not fail the calls
    # another worker is serving, whatever ids it names. (Here the second worker reports no room, so every call
    # goes to the first; the second then "rejects" each of them by id.)
    import zmq.green as gzmq

    context: Any = gzmq.Context()
    routers, addresses = [], []
    for name in ("good", "bad"):
        router = context.socket(gzmq.ROUTER)
        router.setsockopt(gzmq.LINGER, 0)
        address = f"inproc://err-{name}-{os.urandom(4).hex()}"
        router.bind(address)
        routers.append(router)
        addresses.append(address)
    good, bad = routers
    signer = Signer(PASSPHRASE)
    client = ServiceClient(addresses, None, PASSPHRASE, context=context, heartbeat=60, timeout=WAIT)
    try:
        for router, capacity in ((good, 100), (bad, 0)):  # the bad one takes no calls: all go to the good one
            routing, frames = envelope.split_routing(router.recv_multipart())
            bad_routing = routing  # (the bad one's, after the loop: its connection to the client)
            router.send_multipart([*routing, *envelope.build_pong(signer, envelope.parse_envelope(frames).msg_id,
                                                                  now_ms(), {"capacity": capacity})])
        wait_until(lambda: [w.capacity for w in client.endpoints] == [100, 0], "both reports")
        calls = [gevent.spawn(client.call, "/echo") for _ in range(3)]
        received = []
        for _ in calls:
            assert good.poll(int(WAIT * 1000))
            routing, frames = envelope.split_routing(good.recv_multipart())
            received.append((routing, envelope.parse_envelope(frames).msg_id))
        for _, msg_id in received:  # the keyless peer "rejects" them all
            bad.send_multipart([*bad_routing, *envelope.build_error(msg_id, 401, "no", now_ms())])
        wait_until(lambda: client.stats["late"] == 3, "the stray ERRs to be dropped")
        assert not any(c.ready() for c in calls)
        for routing, msg_id in received:
            good.send_multipart([*routing, *envelope.build_reply(signer, msg_id, ServiceResponse(status_code=200),
                                                                 now_ms())])
        assert [c.get(timeout=WAIT).status_code for c in calls] == [200, 200, 200]
    finally:
        client.close(timeout=0)
        for router in routers:
            router.close(linger=0)
        context.destroy(linger=0)


def test_the_service_names_our_connection_itself_so_no_peer_can_take_its_place() -> None:
    # A routing id the client chose (it was "<session>-0") crosses the wire in clear: a keyless peer that
    # connected first with it, after a service restart, took the client's place, and every call timed out.
    # Without one, the service's ROUTER makes one up (a zero byte, then a counter from a random start),
    # which never leaves it. (docs/security.md says what a peer guessing it could do.)
    import zmq.green as gzmq

    context: Any = gzmq.Context()
    router = context.socket(gzmq.ROUTER)
    router.setsockopt(gzmq.LINGER, 0)
    address = f"inproc://named-{os.urandom(4).hex()}"
    router.bind(address)
    client = ServiceClient(address, None, PASSPHRASE, context=context, heartbeat=60, timeout=WAIT)
    try:
        assert router.poll(int(WAIT * 1000))
        routing, _ = envelope.split_routing(router.recv_multipart())
        assert len(routing) == 1 and len(routing[0]) == 5 and routing[0][0] == 0  # the ROUTER's own
        (worker,) = client.pool.workers
        assert worker.socket is not None and worker.socket.getsockopt(gzmq.ROUTING_ID) == b""  # none of ours
    finally:
        client.close(timeout=0)
        router.close(linger=0)
        context.destroy(linger=0)


def test_a_flood_of_replies_nobody_asked_for_fails_no_call_and_logs_a_few_lines(
        fake_service: FakeService, caplog: pytest.LogCaptureFixture) -> None:
    # 20,000 unsolicited replies per call made 1 of 3 concurrent calls time out, each logged at WARNING. Now
    # they are dropped by id before any signature work, and logged at a bounded rate.
    client = fake_service.client
    calls = [gevent.spawn(client.call, "/echo", timeout=WAIT) for _ in range(3)]
    asked = [fake_service.receive() for _ in calls]
    stray = envelope.build_reply(fake_service.signer, b"stray", ServiceResponse(status_code=200), now_ms())
    routing = asked[0][0]
    fake_service.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # wait for room rather than drop (past 1,000)
    with caplog.at_level(logging.WARNING, logger="brubeckservice.client"):
        for number in range(20_000):
            fake_service.send(routing, [stray[0], stray[1], b"stray-%d" % number, *stray[3:]])
        for routing_of, request in asked:
            fake_service.reply(routing_of, request.msg_id,
                               ServiceResponse(status_code=200, body=request.msg_id.decode()))
        assert [c.get(timeout=WAIT).body for c in calls] == [request.msg_id.decode() for _, request in asked]
    assert client.stats["late"] == 20_000
    assert len([r for r in caplog.records if "stray" in r.getMessage()]) == 1  # the rest: one summary, later


def test_a_reply_over_max_reply_size_fails_its_call_at_once(tmp_path: Path) -> None:
    # A 200 MiB reply was accepted whole. ZMQ_MAXMSGSIZE makes ZeroMQ drop a connection that brings a
    # bigger frame: the call in flight fails then, instead of the client holding the reply (or timing out).
    import zmq.green as gzmq

    context: Any = gzmq.Context()
    router = context.socket(gzmq.ROUTER)
    router.setsockopt(gzmq.LINGER, 0)
    address = f"ipc://{tmp_path}/big"
    router.bind(address)
    signer = Signer(PASSPHRASE)
    client = ServiceClient(address, None, PASSPHRASE, context=context, heartbeat=60, timeout=30,
                           max_reply_size=64 * 1024)
    try:
        call = gevent.spawn(client.call, "/echo")
        while True:
            assert router.poll(int(WAIT * 1000))
            routing, frames = envelope.split_routing(router.recv_multipart())
            env = envelope.parse_envelope(frames)
            if env.kind == envelope.REQ:
                break
        big = ServiceResponse(status_code=200, body="x" * (1 << 20))
        router.send_multipart([*routing, *envelope.build_reply(signer, env.msg_id, big, now_ms())])
        with pytest.raises(ServiceUnavailable, match=r"lost while /echo was in flight .* over max_reply_size"):
            call.get(timeout=WAIT)  # not the call's 30 s
        # libzmq gives such a connection up for good (a protocol error): the client reconnects itself.
        call = gevent.spawn(client.call, "/echo")
        while True:
            assert router.poll(int(WAIT * 1000)), "the client did not come back"
            routing, frames = envelope.split_routing(router.recv_multipart())
            env = envelope.parse_envelope(frames)
            if env.kind == envelope.REQ:
                break
        small = ServiceResponse(status_code=200, body="fits")
        router.send_multipart([*routing, *envelope.build_reply(signer, env.msg_id, small, now_ms())])
        assert call.get(timeout=WAIT).body == "fits"
    finally:
        client.close(timeout=0)
        router.close(linger=0)
        context.destroy(linger=0)


def test_a_pong_listing_thousands_of_workers_adds_a_bounded_number(fake_service: FakeService,
                                                                   tmp_path: Path) -> None:
    from brubeckservice.pool import MAX_LISTED

    client = fake_service.client
    ping = gevent.spawn(client.ping, WAIT)
    routing, env = fake_service.receive()
    listed = [f"ipc://{tmp_path}/w{n}" for n in range(5000)]
    fake_service.send(routing, envelope.build_pong(fake_service.signer, env.msg_id, now_ms(), {"workers": listed}))
    assert ping.get(timeout=WAIT)["workers"] == listed
    assert len(client.pool.workers) == 1 + MAX_LISTED


# -- rotating the passphrase --------------------------------------------------------------------------------

OLD, NEW = "the old passphrase", "the new passphrase"
# docs/security.md's steps: a service's and a client's passphrases that meet during a rotation (services
# first accept the new one, then clients sign with it, then services do, then the old one goes), and
# whether the service then verifies with another passphrase than its first.
ROTATION = [
    (OLD, OLD, False),  # before
    ([OLD, NEW], OLD, False),  # 1. services accept the new one too (still signing with the old)
    ([OLD, NEW], [NEW, OLD], True),  # 2. clients sign with the new one, accept both
    ([NEW, OLD], [NEW, OLD], False),  # 3. services sign with the new one
    ([NEW, OLD], NEW, False),  # 4. clients drop the old one
    (NEW, NEW, False),  # 5. services drop it: done
]


@pytest.mark.parametrize(("service", "client", "other"), ROTATION)
def test_each_step_of_a_passphrase_rotation_keeps_calls_working(service: Any, client: Any, other: bool) -> None:
    with ServicePair(ROUTES, service, client_passphrase=client) as pair:
        assert pair.client.call("/echo", arguments={"RETURN_DATA": "on"}).body["RETURN_DATA"] == "on"
        # What tells an operator which step the fleet is at: PONG counts the messages an old key verified.
        assert ("other_passphrase" in pair.client.ping()["stats"]) is other


def test_a_client_signing_with_the_new_passphrase_too_early_is_refused() -> None:
    with ServicePair(ROUTES, OLD, client_passphrase=[NEW, OLD]) as pair, pytest.raises(AuthenticationError):
        pair.client.call("/echo", timeout=WAIT)


def test_a_client_that_never_learned_the_new_passphrase_drops_the_replies_signed_with_it() -> None:
    with ServicePair(ROUTES, [NEW, OLD], client_passphrase=OLD) as pair:
        with pytest.raises(ServiceTimeout):
            pair.client.call("/echo", timeout=0.5)
        assert pair.client.stats["forged"] >= 1  # counted and logged as replies that failed verification


def test_requests_a_full_worker_queue_refused_wait_in_the_client_and_all_go_once_it_reads() -> None:
    # A worker with room for every call (its PONG says so) whose queue in ZeroMQ fills up (it reads
    # nothing for a while): the requests sent in one turn of the loop that did not fit wait in the client,
    # and each is delivered once when it reads again, numbered in the order it left. None fails.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    address = f"inproc://full-{os.getpid()}-{time.monotonic_ns()}"
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVHWM, 10)
    router.bind(address)
    signer = Signer(PASSPHRASE)
    client = ServiceClient(address, None, PASSPHRASE, context=context, heartbeat=60, max_queued=10_000)
    replies: Queue = Queue()
    try:
        pinged = gevent.spawn(client.ping)  # its PONG tells the client the worker's capacity
        assert _next_request(router, signer, capacity=100_000)[1].kind == envelope.PING
        assert pinged.get(timeout=WAIT)["capacity"] == 100_000
        ids = [client.send("/echo", arguments={"n": n}, on_reply=replies.put) for n in range(3_000)]
        wait_until(lambda: client.stats["queued"] > 0, "requests queued in the client: the worker's queue is full")
        ids += [client.send("/echo", arguments={"n": n}, on_reply=replies.put) for n in range(2_000)]  # behind
        seen: list[bytes] = []
        numbers: list[int] = []
        while len(seen) < len(ids):
            routing, env = _next_request(router, signer, capacity=100_000)
            if env.kind != envelope.REQ:
                continue
            seen.append(env.msg_id)
            numbers.append(msgspec.json.decode(env.header)["seq"])
            router.send_multipart([*routing, *envelope.build_reply(
                signer, env.msg_id, ServiceResponse(status_code=200, status_msg="OK", path="/echo", body={}),
                now_ms())])
        assert sorted(seen) == sorted(ids) and len(set(seen)) == len(ids)  # each once
        # Numbered in the order they left (docs/protocol.md §5), the ones put back included.
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
        got = {replies.get(timeout=WAIT).msg_id for _ in ids}
        assert got == set(ids)
        assert client.stats["unavailable"] == 0 and client.pending == 0
    finally:
        client.close(timeout=0)
        router.close(linger=0)
        context.destroy(linger=0)


def _next_request(router: zmq.Socket[bytes], signer: Signer, capacity: int) -> tuple[list[bytes], Any]:
    """The next message from the client; its heartbeats are answered (a worker with `capacity`)."""
    while True:
        assert router.poll(int(WAIT * 1000)), "the client sent nothing"
        routing, frames = envelope.split_routing(router.recv_multipart())
        env = envelope.parse_envelope(frames)
        if env.kind == envelope.PING:
            router.send_multipart([*routing, *envelope.build_pong(signer, env.msg_id, now_ms(),
                                                                   {"capacity": capacity})])
            if env.msg_id.startswith(b"hb-"):
                continue
        return routing, env
