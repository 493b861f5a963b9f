"""ServiceConnection: a Brubeck app as a service that answers every caller and survives any input.

Real calls go through `pair.client`; hand-made messages through a bare DEALER (`pair.raw_socket()`), which
receives whatever the service sends back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gevent
import pytest
import zmq.green as zmq
from zmq.utils.monitor import recv_monitor_message

from brubeckservice import envelope
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceTimeout
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import (
    PASSPHRASE,
    ROUTES,
    WAIT,
    EchoHandler,
    Gate,
    assert_next_is_pong,
    receive,
    signed_request,
    wait_until,
)

SIGNER = Signer(PASSPHRASE)


def error_of(frames: list[bytes]) -> tuple[bytes, int, str]:
    """(correlation id, status, message) of an ERR the service sent."""
    env = envelope.parse_envelope(frames)
    assert env.kind == envelope.ERR
    header, _ = envelope.parse_control(env, None, now_ms(), 30_000)
    return env.msg_id, header.status, header.msg


def reply_of(frames: list[bytes]) -> ServiceResponse:
    return envelope.parse_reply(envelope.parse_envelope(frames), SIGNER, now_ms(), 30_000)


# -- routing to handlers ------------------------------------------------------------------------------------

def test_a_request_is_routed_by_path_and_answered_under_its_id(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/echo", msg_id=b"my-id", arguments={"RETURN_DATA": "raw"}))
    reply = reply_of(receive(raw))
    assert (reply.msg_id, reply.status_code, reply.body["RETURN_DATA"]) == (b"my-id", 200, "raw")


def test_an_unknown_path_is_a_404_reply(pair: ServicePair) -> None:
    response = pair.client.call("/nope")
    assert (response.status_code, response.status_msg, response.path) == (404, "Not Found", "/nope")
    assert response.body == {"error": {"type": "NotFound", "message": "Not Found (request /nope)"}}


def test_an_unknown_method_is_a_405_reply_with_the_allowed_methods(pair: ServicePair) -> None:
    response = pair.client.call("/echo", method="frobnicate")
    assert (response.status_code, response.status_msg) == (405, "Method 'frobnicate' not supported")
    assert response.body["error"]["allow"] == ["REQUEST"]
    assert response.headers == {"Allow": "REQUEST"}


def test_a_route_for_other_methods_only_is_a_405_reply_naming_them(pair: ServicePair) -> None:
    pair.app.add_route_rule(r"^/restricted", EchoHandler, method="request")
    assert pair.client.call("/restricted").ok
    response = pair.client.call("/restricted", method="get")
    assert (response.status_code, response.headers) == (405, {"Allow": "REQUEST"})
    assert response.body["error"]["allow"] == ["REQUEST"]  # the same answer as a handler's own 405


def test_a_handler_exception_is_a_500_reply_with_type_and_message(pair: ServicePair,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        response = pair.client.call("/fail")
    assert (response.status_code, response.status_msg) == (500, "ValueError: the handler broke")
    assert response.body == {"error": {"type": "ValueError", "message": "the handler broke"}}
    assert "the handler broke" in caplog.text
    assert pair.client.call("/echo").ok  # and the service goes on


def test_a_handler_that_returns_no_render_is_a_500_reply(pair: ServicePair) -> None:
    response = pair.client.call("/no-render")
    assert (response.status_code, response.body) == (
        500, {"error": {"type": "TypeError", "message": "handler did not return render()"}})


def test_a_slow_request_does_not_hold_up_others(pair: ServicePair, gate: Gate) -> None:
    slow = gevent.spawn(pair.client.call, "/block")
    gate.next_arrival()
    assert pair.client.call("/echo", timeout=1).ok
    assert not slow.ready()
    gate.release.set()
    assert slow.get(timeout=WAIT).ok


def test_a_handler_returning_none_answers_when_connection_reply_is_called(pair: ServicePair, gate: Gate) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/defer", msg_id=b"deferred-1"))
    message = gate.next_arrival()
    assert_next_is_pong(raw, SIGNER)  # the handler returned None: nothing was sent
    pair.connection.reply(message, ServiceResponse(status_code=200, status_msg="At last",
                                                   body={"RETURN_DATA": "later"}, path=message.path))
    reply = reply_of(receive(raw))
    assert (reply.msg_id, reply.status_msg, reply.body) == (b"deferred-1", "At last", {"RETURN_DATA": "later"})


def test_a_deferred_reply_reaches_a_waiting_call(pair: ServicePair, gate: Gate) -> None:
    call = gevent.spawn(pair.client.call, "/defer", arguments={"RETURN_DATA": "x"})
    message = gate.next_arrival()
    pair.connection.reply(message, ServiceResponse(status_code=202, path=message.path))
    assert call.get(timeout=WAIT).status_code == 202


# -- refusing what should not be served ----------------------------------------------------------------------

def test_a_request_whose_deadline_has_passed_is_skipped(pair: ServicePair, gate: Gate) -> None:
    expired = ServiceRequest(path="/block", deadline=now_ms() - 1000)
    with pytest.raises(ServiceTimeout):
        pair.client.call_request(expired, timeout=0.3)
    assert pair.connection.stats["expired"] == 1
    assert gate.arrived.empty()  # the handler never ran
    assert pair.connection.stats["served"] == 0


def test_a_replayed_request_is_refused_with_401(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    frames = signed_request(SIGNER, "/echo", msg_id=b"once")
    raw.send_multipart(frames)
    assert reply_of(receive(raw)).status_code == 200
    raw.send_multipart(frames)  # a recording of the same request
    assert error_of(receive(raw)) == (b"once", 401, "replayed message")
    assert pair.connection.stats["served"] == 1


def test_a_stale_request_is_refused_with_401(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(signed_request(SIGNER, "/echo", msg_id=b"old", ts=now_ms() - 120_000))
    msg_id, status, message = error_of(receive(raw))
    assert (msg_id, status) == (b"old", 401)
    assert message.startswith("sent 120.0s ago by the sender's clock, beyond the 30s replay window")
    assert pair.connection.stats["served"] == 0


def test_a_request_that_queued_past_its_deadline_is_skipped_as_late_not_refused_as_forged(
        pair: ServicePair, caplog: pytest.LogCaptureFixture) -> None:
    # Sent 40 s ago with a 10 s timeout (it waited in a queue while the service was down): not a clock or key
    # problem, and its caller has given up, so no answer at all.
    sent = now_ms() - 40_000
    late = envelope.build_request(SIGNER, b"late", ServiceRequest(path="/echo", deadline=sent + 10_000), sent,
                                   "raw", 1)
    raw = pair.raw_socket()
    with caplog.at_level(logging.INFO, logger="brubeckservice.server"):
        raw.send_multipart(late)
        assert_next_is_pong(raw, SIGNER)  # nothing came back for b"late" before the PONG
    assert (pair.connection.stats["expired"], pair.connection.stats["forged"]) == (1, 0)
    assert "skipped request b'late'" in caplog.text
    assert "arrived 30.0s after its caller's deadline" in caplog.text
    assert "401" not in caplog.text


def test_a_forged_request_is_refused_counted_and_logged(pair: ServicePair, caplog: pytest.LogCaptureFixture) -> None:
    raw = pair.raw_socket()
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        raw.send_multipart(signed_request(Signer("not the passphrase"), "/echo", msg_id=b"forged"))
        assert error_of(receive(raw)) == (b"forged", 401, "bad or missing signature")
    assert pair.connection.stats["forged"] == 1
    assert pair.connection.stats["served"] == 0
    assert "refused request b'forged'" in caplog.text


def test_garbage_is_dropped_and_real_calls_keep_succeeding(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    signed_bad_header = [envelope.MARKER, envelope.REQ, b"bad-header", b'{"ts":"now"}', b"{}"]
    cases: list[tuple[list[bytes], tuple[bytes, int, str] | None]] = [
        ([b"random garbage"], None),
        ([os.urandom(100) for _ in range(6)], None),
        ([os.urandom(10) for _ in range(3)], None),
        ([b"BRS1", b"REQ", b"short"], None),
        ([b"BRS2", b"REQ", b"v2", b"{}", b"{}", b"\x00" * 32],
         (b"v2", 505, "unsupported protocol version b'BRS2'; this side speaks b'BRS1'")),
        ([b"BRS1", b"NOPE", b"kind", b"{}", b"{}", b"\x00" * 32], (b"kind", 400, "unknown message kind b'NOPE'")),
        ([b"BRS1", b"REQ", b"", b"{}", b"{}", b"\x00" * 32], None),  # no usable id to answer to
        ([b"BRS1", b"REQ", b"unsigned", b'{"ts":"now"}', b"{}", b""], (b"unsigned", 401, "bad or missing signature")),
        (envelope.build_reply(SIGNER, b"not-for-me", ServiceResponse(status_code=200), now_ms()),
         (b"not-for-me", 400, "a service does not accept b'REP'")),
    ]
    for frames, _ in cases:
        raw.send_multipart(frames)
        assert pair.client.call("/echo", arguments={"RETURN_DATA": "still here"}).body["RETURN_DATA"] == "still here"
    for _, expected in cases:
        if expected is not None:  # what carried a usable id is answered, so its sender fails fast
            assert error_of(receive(raw)) == expected
    raw.send_multipart([*signed_bad_header, SIGNER.sign(signed_bad_header)])
    bad = reply_of(receive(raw))  # its sender holds the key: a signed 400 it can trust
    assert (bad.msg_id, bad.status_code) == (b"bad-header", 400)
    assert bad.body["error"]["type"] == "ProtocolError"
    assert "Expected `int`, got `str` - at `$.ts`" in bad.body["error"]["message"]
    assert_next_is_pong(raw, SIGNER)  # and nothing else came back
    assert pair.connection.stats["malformed"] == 9
    assert pair.connection.stats["forged"] == 1
    assert pair.connection.stats["errors"] == 0
    assert not pair.serving.dead


def test_the_log_says_whether_a_bad_message_was_answered_or_dropped(pair: ServicePair,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    raw = pair.raw_socket()
    with caplog.at_level(logging.WARNING, logger="brubeckservice.server"):
        raw.send_multipart([b"BRS1", b"NOPE", b"kind", b"{}", b"{}", b"\x00" * 32])
        error_of(receive(raw))
        raw.send_multipart([b"random garbage"])
        assert_next_is_pong(raw, SIGNER)
    answered, dropped = (r.getMessage() for r in caplog.records)
    assert answered.startswith(f"malformed message on {pair.address}, answered ERR 400: unknown message kind")
    assert dropped == (f"dropped malformed message on {pair.address} (no id to answer): expected at least one "
                       "routing frame and then the 6 envelope frames, got 2 frames in all")


def test_a_forged_ping_is_refused(pair: ServicePair) -> None:
    raw = pair.raw_socket()
    raw.send_multipart(envelope.build_ping(Signer("not the passphrase"), b"who", now_ms()))
    assert error_of(receive(raw)) == (b"who", 401, "bad or missing signature")


def test_a_reply_to_a_caller_that_left_is_counted_not_fatal(tmp_path: Path) -> None:
    gate = Gate()
    # ipc, not inproc: the service must see the connection drop, and inproc reports no such event.
    with ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{tmp_path}/service", gate=gate) as pair:
        disconnects = pair.connection.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        leaving = pair.new_client()
        leaving.send("/block")
        gate.next_arrival()
        leaving.close(timeout=0)  # it leaves with its call still out
        assert disconnects.poll(int(WAIT * 1000)), "the service did not see the caller leave"
        assert recv_monitor_message(disconnects)["event"] == zmq.EVENT_DISCONNECTED
        gate.release.set()
        wait_until(lambda: pair.connection.stats["undeliverable"] == 1, "the undeliverable reply to be counted")
        assert pair.client.call("/echo").ok
        pair.connection.socket.disable_monitor()
        disconnects.close(linger=0)


def test_a_caller_slower_to_read_than_to_send_still_gets_every_reply(pair: ServicePair) -> None:
    # More requests than ZeroMQ's default queues to one caller hold (1,000 each way), sent before any reply
    # is read: the service must queue or wait for room, not drop replies (the 2013 code dropped them).
    raw = pair.raw_socket()
    count = 12_000
    for seq in range(1, count + 1):
        request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": seq})
        raw.send_multipart(envelope.build_request(SIGNER, b"%d" % seq, request, now_ms(), "flood", seq))
    seen = {reply_of(receive(raw)).body["RETURN_DATA"] for _ in range(count)}
    assert seen == set(range(1, count + 1))
    assert pair.connection.stats["undeliverable"] == 0


def test_replies_find_their_callers_among_many_clients(pair: ServicePair) -> None:
    clients = [pair.new_client() for _ in range(5)]
    calls = [gevent.spawn(c.call, "/echo", arguments={"RETURN_DATA": str(n)}) for n, c in enumerate(clients)]
    assert [c.get(timeout=WAIT).body["RETURN_DATA"] for c in calls] == ["0", "1", "2", "3", "4"]


def test_close_stops_serving() -> None:
    pair = ServicePair([(r"^/echo", EchoHandler)])
    serving = pair.serving
    pair.connection.close()
    pair.connection.close()  # twice is fine
    serving.join(timeout=WAIT)
    assert serving.dead
    pair.close()
