"""The wire protocol v1 as golden vectors, checked both ways, and every way a message can be refused.

The golden table is the protocol's reference: fixed passphrase, ids, clocks and session numbers give exact
frames, MAC included. `tests/fixtures/protocol_v1.json` holds the same table (frames in hex) for clients
in other languages; a test keeps it in step, and ``python -m tests.brubeckservice.test_envelope``
rewrites it after a deliberate protocol change.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from brubeckservice.envelope import (
    DRAIN,
    ERR,
    KINDS,
    MARKER,
    MAX_HEADERS,
    REP,
    REQ,
    ControlHeader,
    Envelope,
    build_cancel,
    build_drain,
    build_error,
    build_ping,
    build_pong,
    build_reply,
    build_request,
    parse_control,
    parse_envelope,
    parse_reply,
    parse_request,
    split_routing,
)
from brubeckservice.errors import AuthenticationError, ProtocolError, RequestExpired
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import ReplayGuard, Signer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "protocol_v1.json"

PASSPHRASE = "my_shared_secret"
SIGNER = Signer(PASSPHRASE)
TS = 1_700_000_000_000
SID = "0123456789abcdef"
WINDOW_MS = 30_000


def read(frames: list[bytes], now: int) -> Any:
    """What a receiver makes of one message (its envelope frames) at `now`; raises when it refuses it."""
    env = parse_envelope(frames)
    if env.kind == REQ:
        return parse_request(env, SIGNER, now, ReplayGuard(WINDOW_MS))
    if env.kind == REP:
        return parse_reply(env, SIGNER, now, WINDOW_MS)
    return parse_control(env, None if env.kind == ERR else SIGNER, now, WINDOW_MS)


@dataclass(frozen=True)
class Golden:
    name: str
    encode: Callable[[], list[bytes]]
    frames: list[bytes]
    value: Any  # what `read(frames, now)` returns
    now: int = TS
    notes: dict[str, Any] = field(default_factory=dict)


GOLDEN = [
    Golden(  # docs/protocol.md, section 6: the worked example
        "request",
        lambda: build_request(SIGNER, b"c0ffee00-1", ServiceRequest(
            path="/service/slow", arguments={"RETURN_DATA": "hello"}, deadline=TS + 30_000), TS, SID, 1),
        [b"BRS1", b"REQ", b"c0ffee00-1",
         b'{"ts":1700000000000,"sid":"0123456789abcdef","seq":1,"path":"/service/slow","deadline":1700000030000}',
         b'{"RETURN_DATA":"hello"}',
         bytes.fromhex("53352c370b1587207cb17e6dbf7cc0eaf8f4f8a7142c6e942d28d257d8b22122")],
        ServiceRequest(path="/service/slow", method="request", arguments={"RETURN_DATA": "hello"}, headers={},
                       conn_id="", timestamp=TS, deadline=TS + 30_000, body=b'{"RETURN_DATA":"hello"}',
                       msg_id=b"c0ffee00-1"),
        notes={"session": SID, "seq": 1},
    ),
    Golden(
        "request_with_every_field",
        lambda: build_request(SIGNER, b"c0ffee00-2", ServiceRequest(
            path="/items/7", method="put", arguments={"name": "café", "tags": ["a", "b"]},
            headers={"X-Trace": "t1"}, conn_id="42"), TS, SID, 2),
        [b"BRS1", b"REQ", b"c0ffee00-2",
         b'{"ts":1700000000000,"sid":"0123456789abcdef","seq":2,"path":"/items/7","method":"put",'
         b'"headers":{"X-Trace":"t1"},"conn_id":"42"}',
         b'{"name":"caf\xc3\xa9","tags":["a","b"]}',
         bytes.fromhex("51a0b424dc33dcdf83e9cfbc666ae51c96459578bc2d16bb346c46dafc75dd9e")],
        ServiceRequest(path="/items/7", method="put", arguments={"name": "café", "tags": ["a", "b"]},
                       headers={"X-Trace": "t1"}, conn_id="42", timestamp=TS,
                       body=b'{"name":"caf\xc3\xa9","tags":["a","b"]}', msg_id=b"c0ffee00-2"),
        notes={"session": SID, "seq": 2},
    ),
    Golden(  # docs/protocol.md, section 6: the service's answer
        "reply",
        lambda: build_reply(SIGNER, b"c0ffee00-1", ServiceResponse(
            status_code=200, status_msg="Took a while, but I am back.", body={"RETURN_DATA": "hello"},
            path="/service/slow"), TS + 5003),
        [b"BRS1", b"REP", b"c0ffee00-1",
         b'{"ts":1700000005003,"status":200,"msg":"Took a while, but I am back.","path":"/service/slow"}',
         b'{"RETURN_DATA":"hello"}',
         bytes.fromhex("949d18fb8340c6a5c09fdd686a68b0ccf5d6aa7e60025f3ee956fe63cc81d605")],
        ServiceResponse(status_code=200, status_msg="Took a while, but I am back.", body={"RETURN_DATA": "hello"},
                        path="/service/slow", method="response", headers={}, conn_id="", timestamp=TS + 5003,
                        msg_id=b"c0ffee00-1"),
        now=TS + 5003,
    ),
    Golden(
        "error_reply",
        lambda: build_reply(SIGNER, b"c0ffee00-5", ServiceResponse(
            status_code=404, status_msg="Not Found",
            body={"error": {"type": "NotFound", "message": "Not Found (request /nope)"}}, path="/nope"), TS),
        [b"BRS1", b"REP", b"c0ffee00-5",
         b'{"ts":1700000000000,"status":404,"msg":"Not Found","path":"/nope"}',
         b'{"error":{"type":"NotFound","message":"Not Found (request /nope)"}}',
         bytes.fromhex("887b1704643f96c74d8cbb86d26715f6b82cfbe528757fae9eae2f962e6837b8")],
        ServiceResponse(status_code=404, status_msg="Not Found",
                        body={"error": {"type": "NotFound", "message": "Not Found (request /nope)"}}, path="/nope",
                        timestamp=TS, msg_id=b"c0ffee00-5"),
    ),
    Golden(
        "ping",
        lambda: build_ping(SIGNER, b"c0ffee00-3", TS),
        [b"BRS1", b"PING", b"c0ffee00-3", b'{"ts":1700000000000}', b"{}",
         bytes.fromhex("c437f5e4479d4ca9ad19c488024f620f76e443752c84b9e8ce7f0a42592123da")],
        (ControlHeader(ts=TS), {}),
    ),
    Golden(
        "pong",
        lambda: build_pong(SIGNER, b"c0ffee00-3", TS + 5, {"inflight": 0, "served": 1, "stats": {"served": 1}}),
        [b"BRS1", b"PONG", b"c0ffee00-3", b'{"ts":1700000000005}', b'{"inflight":0,"served":1,"stats":{"served":1}}',
         bytes.fromhex("e534f428897647159363d116a55858ed61344c76ad7f80c43facdb776d36f347")],
        (ControlHeader(ts=TS + 5), {"inflight": 0, "served": 1, "stats": {"served": 1}}),
        now=TS + 5,
    ),
    Golden(
        "error_unsigned",
        lambda: build_error(b"c0ffee00-4", 401, "bad or missing signature", TS),
        [b"BRS1", b"ERR", b"c0ffee00-4", b'{"ts":1700000000000,"status":401,"msg":"bad or missing signature"}',
         b"", b""],
        (ControlHeader(ts=TS, status=401, msg="bad or missing signature"), None),
    ),
    Golden(  # docs/protocol.md §4: a client acknowledging the worker's DRAIN "drain-1" (below) by its id
        "ping_drain_ack",
        lambda: build_ping(SIGNER, b"hb-1f", TS, {"drain_ack": "drain-1"}),
        [b"BRS1", b"PING", b"hb-1f", b'{"ts":1700000000000}', b'{"drain_ack":"drain-1"}',
         bytes.fromhex("a49e082bddddb56e79759d955cca35bc09ca9740edce84c033e162b2b6bd0200")],
        (ControlHeader(ts=TS), {"drain_ack": "drain-1"}),
    ),
    Golden(  # docs/protocol.md §4: a worker about to stop, with 30 s of grace and two calls running
        "drain",
        lambda: build_drain(SIGNER, b"drain-1", TS + 7, {"grace": 30.0, "inflight": 2}),
        [b"BRS1", b"DRAIN", b"drain-1", b'{"ts":1700000000007}', b'{"grace":30.0,"inflight":2}',
         bytes.fromhex("3a5b382e14b814c8a98f91bf0e7a2877b1e41915fde1ee0b876dd56d075f9948")],
        (ControlHeader(ts=TS + 7), {"grace": 30.0, "inflight": 2}),
        now=TS + 7,
    ),
    Golden(  # docs/protocol.md §9 (revision 1.4): a call made while serving a traced web request, to be
        # answered to the browser through the service's Mongrel2 server "main"
        "request_traced_forwarded",
        lambda: build_request(SIGNER, b"c0ffee00-6", ServiceRequest(
            path="/report", conn_id="17", deadline=TS + 2000, reply_to="main",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            tracestate="rojo=00f067aa0ba902b7"), TS, SID, 3),
        [b"BRS1", b"REQ", b"c0ffee00-6",
         b'{"ts":1700000000000,"sid":"0123456789abcdef","seq":3,"path":"/report","conn_id":"17",'
         b'"deadline":1700000002000,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",'
         b'"tracestate":"rojo=00f067aa0ba902b7","reply_to":"main"}',
         b"{}",
         bytes.fromhex("24c097cdf2dad4dfaae80d35401322d3f4a6f57ff22995da29a392524401ddd4")],
        ServiceRequest(path="/report", conn_id="17", timestamp=TS, deadline=TS + 2000, body=b"{}",
                       msg_id=b"c0ffee00-6", reply_to="main",
                       traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                       tracestate="rojo=00f067aa0ba902b7"),
        notes={"session": SID, "seq": 3},
    ),
    Golden(  # docs/protocol.md §9: its caller gave up on it 0.9 s later
        "cancel",
        lambda: build_cancel(SIGNER, b"c0ffee00-6", TS + 900, "timed out"),
        [b"BRS1", b"CANCEL", b"c0ffee00-6", b'{"ts":1700000000900}', b'{"reason":"timed out"}',
         bytes.fromhex("c09cf725d3d80cebbdb91269407a2fe825efde89b95db9b4677b48f47374461a")],
        (ControlHeader(ts=TS + 900), {"reason": "timed out"}),
        now=TS + 900,
    ),
]
GOLDEN_BY_NAME = {golden.name: golden for golden in GOLDEN}


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda g: g.name)
def test_values_encode_to_the_golden_frames(golden: Golden) -> None:
    assert golden.encode() == golden.frames


@pytest.mark.parametrize("golden", GOLDEN, ids=lambda g: g.name)
def test_golden_frames_decode_to_the_values(golden: Golden) -> None:
    assert read(golden.frames, golden.now) == golden.value


def test_a_decoded_request_encodes_back_to_the_same_frames() -> None:
    frames = GOLDEN[0].frames
    request = read(frames, TS)
    assert build_request(SIGNER, request.msg_id, request, request.timestamp, SID, 1) == frames


def test_a_decoded_reply_encodes_back_to_the_same_frames() -> None:
    frames = GOLDEN[2].frames
    response = read(frames, TS + 5003)
    assert build_reply(SIGNER, response.msg_id, response, response.timestamp) == frames


# -- refused: the shape ---------------------------------------------------------------------------------

REQUEST = GOLDEN[0].frames


def replaced(frames: list[bytes], index: int, value: bytes) -> list[bytes]:
    changed = list(frames)
    changed[index] = value
    return changed


def resigned(frames: list[bytes], index: int, value: bytes) -> list[bytes]:
    """`frames` with one frame replaced and a valid signature: a peer holding the key sent it."""
    changed = replaced(frames, index, value)[:5]
    return [*changed, SIGNER.sign(changed)]


@pytest.mark.parametrize(("frames", "message"), [
    ([], "expected 6 frames, got 0"),
    (REQUEST[:5], "expected 6 frames, got 5"),
    ([*REQUEST, b""], "expected 6 frames, got 7"),
    ([b"random garbage"], "expected 6 frames, got 1"),
    (replaced(REQUEST, 0, b"BRS2"), "unsupported protocol version b'BRS2'; this side speaks b'BRS1'"),
    (replaced(REQUEST, 0, b"HTTP/1.1 200 OK\r\nContent-Length: 0"),
     "not a brubeck-service message (first frame b'HTTP/1.1 200 OK\\r')"),
    (replaced(REQUEST, 0, b""), "not a brubeck-service message (first frame b'')"),
    (replaced(REQUEST, 1, b"GET"), "unknown message kind b'GET'"),
    (replaced(REQUEST, 1, b"req"), "unknown message kind b'req'"),
    (replaced(REQUEST, 2, b""), "correlation id must be 1..64 bytes, got 0"),
    (replaced(REQUEST, 2, b"x" * 65), "correlation id must be 1..64 bytes, got 65"),
], ids=["no-frames", "five-frames", "seven-frames", "one-frame", "version-2", "http", "empty-marker",
        "unknown-kind", "lowercase-kind", "empty-id", "oversized-id"])
def test_a_malformed_shape_is_a_protocol_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_envelope(frames)
    assert str(refused.value) == message


def test_drain_and_cancel_are_kinds_of_version_1() -> None:
    assert DRAIN == b"DRAIN"
    assert set(KINDS) == {b"REQ", b"REP", b"PING", b"PONG", b"DRAIN", b"CANCEL", b"ERR"}
    assert parse_envelope(GOLDEN_BY_NAME["drain"].frames).kind == DRAIN


def test_a_ping_without_a_body_is_the_empty_object_as_before() -> None:
    assert build_ping(SIGNER, b"c0ffee00-3", TS) == build_ping(SIGNER, b"c0ffee00-3", TS, None) == GOLDEN[4].frames
    assert build_ping(SIGNER, b"c0ffee00-3", TS, {})[4] == b"{}"


def test_a_64_byte_id_is_the_largest_accepted() -> None:
    assert parse_envelope(replaced(REQUEST, 2, b"x" * 64)).msg_id == b"x" * 64


def test_parse_keeps_the_frames_for_checking_the_signature() -> None:
    env = parse_envelope(REQUEST)
    assert env == Envelope(REQ, REQUEST[2], REQUEST[3], REQUEST[4], REQUEST[5])
    assert env.signed_frames == tuple(REQUEST[:5])


def test_split_routing_takes_the_last_six_frames_as_the_envelope() -> None:
    assert split_routing([b"peer", b"", *REQUEST]) == ([b"peer", b""], REQUEST)


def test_split_routing_needs_a_routing_frame() -> None:
    with pytest.raises(ProtocolError) as refused:
        split_routing(REQUEST)
    assert str(refused.value) == "expected 1..4 routing frames and then the 6 envelope frames, got 6 frames in all"


def test_split_routing_refuses_more_than_four_routing_frames() -> None:
    # Every extra leading frame would be "routing", echoed back whole in an ERR (40 frames of 15 MiB were).
    assert split_routing([b"a", b"b", b"c", b"d", *REQUEST])[0] == [b"a", b"b", b"c", b"d"]
    with pytest.raises(ProtocolError, match="got 11 frames in all"):
        split_routing([b"x"] * 5 + REQUEST)


# -- refused: the content (signed by a peer holding the key) ---------------------------------------------

@pytest.mark.parametrize(("frames", "message"), [
    (resigned(REQUEST, 3, b"{"), "request: Input data was truncated"),
    (resigned(REQUEST, 3, b"not json"), "request: JSON is malformed: invalid character (byte 4)"),
    (resigned(REQUEST, 3, b"[1]"), "request: Expected `object`, got `array`"),
    (resigned(REQUEST, 3, b'{"ts":1700000000000,"seq":1,"path":"/"}'),
     "request: Object missing required field `sid`"),
    (resigned(REQUEST, 3, b'{"ts":"1700000000000","sid":"s","seq":1,"path":"/"}'),
     "request: Expected `int`, got `str` - at `$.ts`"),
    (resigned(REQUEST, 3, b'{"ts":1700000000000,"sid":"s","seq":"1","path":"/"}'),
     "request: Expected `int`, got `str` - at `$.seq`"),
    (resigned(REQUEST, 3, b'{"ts":1700000000000,"sid":"s","seq":1,"path":7}'),
     "request: Expected `str`, got `int` - at `$.path`"),
    (resigned(REQUEST, 3, b'{"ts":1700000000000,"sid":"s","seq":1,"path":"/","headers":{"a":1}}'),
     "request: Expected `str`, got `int` - at `$.headers[...]`"),
    (resigned(REQUEST, 4, b'["RETURN_DATA"]'), "request: Expected `object`, got `array`"),
    (resigned(REQUEST, 4, b""), "request: Input data was truncated"),
], ids=["truncated-header", "header-not-json", "header-array", "missing-sid", "ts-str", "seq-str",
        "path-int", "header-value-int", "arguments-array", "empty-body"])
def test_a_signed_request_with_bad_fields_is_a_protocol_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        read(frames, TS)
    assert str(refused.value) == message


REPLY = GOLDEN[2].frames


@pytest.mark.parametrize(("frames", "message"), [
    (resigned(REPLY, 3, b'{"ts":1700000005003,"status":"200"}'), "reply: Expected `int`, got `str` - at `$.status`"),
    (resigned(REPLY, 3, b'{"ts":1700000005003}'), "reply: Object missing required field `status`"),
    (resigned(REPLY, 4, b"{"), "reply: Input data was truncated"),
])
def test_a_signed_reply_with_bad_fields_is_a_protocol_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        read(frames, TS + 5003)
    assert str(refused.value) == message


def test_a_control_message_with_bad_fields_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError) as refused:
        read([MARKER, ERR, b"id", b'{"ts":1,"status":"401"}', b"", b""], TS)
    assert str(refused.value) == "control message: Expected `int`, got `str` - at `$.status`"


# -- refused: forged, unsigned, stale, replayed ------------------------------------------------------------

def with_mac(frames: list[bytes], mac: bytes) -> list[bytes]:
    return [*frames[:5], mac]


@pytest.mark.parametrize("frames", [
    with_mac(REQUEST, REQUEST[5][:-1] + bytes([REQUEST[5][-1] ^ 1])),
    with_mac(REQUEST, b""),
    with_mac(REQUEST, Signer("not the passphrase").sign(REQUEST[:5])),
    replaced(REQUEST, 4, b'{"RETURN_DATA":"goodbye"}'),
    with_mac(REPLY, b""),
    with_mac(GOLDEN[4].frames, b""),  # PING
    with_mac(GOLDEN[5].frames, Signer("not the passphrase").sign(GOLDEN[5].frames[:5])),  # PONG
    with_mac(GOLDEN_BY_NAME["drain"].frames, b""),
    replaced(GOLDEN_BY_NAME["ping_drain_ack"].frames, 4, b'{"drain_ack":false}'),
], ids=["flipped-bit", "unsigned", "other-passphrase", "body-changed", "unsigned-reply", "unsigned-ping",
        "forged-pong", "unsigned-drain", "ack-changed"])
def test_a_forged_or_unsigned_message_is_an_authentication_error(frames: list[bytes]) -> None:
    with pytest.raises(AuthenticationError) as refused:
        read(frames, TS + 5)
    assert str(refused.value) == "bad or missing signature"


def test_the_signature_is_checked_before_anything_is_parsed() -> None:
    forged = [*REQUEST[:3], b"not json", REQUEST[4], REQUEST[5]]
    with pytest.raises(AuthenticationError, match="bad or missing signature"):
        read(forged, TS)


STALE = ("sent 60.0s ago by the sender's clock, beyond the 30s replay window (held in a queue that long, "
         "replayed, or the clocks disagree)")
AHEAD = ("timestamp is 60.0s ahead of this host's clock, beyond the 30s replay window (the clocks disagree: "
         "synchronise them with NTP)")
UNBOUNDED_REQUEST = resigned(REQUEST, 3, b'{"ts":1700000000000,"sid":"0123456789abcdef","seq":1,'
                                        b'"path":"/service/slow"}')  # no deadline


@pytest.mark.parametrize(("frames", "now", "message"), [
    (UNBOUNDED_REQUEST, TS + 60_000, STALE),
    (REQUEST, TS - 60_000, AHEAD),
    (REPLY, TS + 65_003, STALE),
    (GOLDEN[5].frames, TS + 60_005, STALE),  # PONG
    (GOLDEN_BY_NAME["drain"].frames, TS + 60_007, STALE),
])
def test_a_stale_message_is_an_authentication_error(frames: list[bytes], now: int, message: str) -> None:
    with pytest.raises(AuthenticationError) as refused:
        read(frames, now)
    assert str(refused.value) == message


def test_a_request_past_its_deadline_is_expired_not_a_clock_or_key_problem() -> None:
    guard = ReplayGuard()
    with pytest.raises(RequestExpired) as refused:
        parse_request(parse_envelope(REQUEST), SIGNER, TS + 60_000, guard)  # deadline TS + 30 s
    assert str(refused.value) == ("arrived 30.0s after its caller's deadline (it waited in a queue, or the "
                                  "clocks of caller and service disagree)")
    assert len(guard) == 0  # not served, so no replay state


def test_a_forged_request_past_its_deadline_is_still_refused_as_forged() -> None:
    with pytest.raises(AuthenticationError, match="bad or missing signature"):
        read(with_mac(REQUEST, b""), TS + 60_000)


def test_an_unsigned_err_is_accepted_though_it_carries_no_data() -> None:
    header, body = read(GOLDEN[6].frames, TS + 3_600_000)  # nor is its age checked: it cannot be trusted
    assert (header.status, header.msg, body) == (401, "bad or missing signature", None)


def test_a_replayed_request_is_an_authentication_error() -> None:
    guard = ReplayGuard()
    first = parse_request(parse_envelope(REQUEST), SIGNER, TS, guard)
    assert first.path == "/service/slow"
    with pytest.raises(AuthenticationError) as refused:
        parse_request(parse_envelope(REQUEST), SIGNER, TS + 1, guard)
    assert str(refused.value) == "replayed message"


# -- the fixture for other implementations ------------------------------------------------------------------

REJECTED: list[tuple[str, list[bytes], int, type[Exception], str]] = [
    ("forged_mac", with_mac(REQUEST, REQUEST[5][:-1] + bytes([REQUEST[5][-1] ^ 1])), TS, AuthenticationError,
     "bad or missing signature"),
    ("unsigned_request", with_mac(REQUEST, b""), TS, AuthenticationError, "bad or missing signature"),
    ("other_passphrase", with_mac(REQUEST, Signer("not the passphrase").sign(REQUEST[:5])), TS,
     AuthenticationError, "bad or missing signature"),
    ("stale_request", UNBOUNDED_REQUEST, TS + 60_000, AuthenticationError, STALE),
    ("expired_request", REQUEST, TS + 60_000, RequestExpired,
     "arrived 30.0s after its caller's deadline (it waited in a queue, or the clocks of caller and service "
     "disagree)"),
    ("version_2", replaced(REQUEST, 0, b"BRS2"), TS, ProtocolError,
     "unsupported protocol version b'BRS2'; this side speaks b'BRS1'"),
    ("five_frames", REQUEST[:5], TS, ProtocolError, "expected 6 frames, got 5"),
    ("unknown_kind", replaced(REQUEST, 1, b"GET"), TS, ProtocolError, "unknown message kind b'GET'"),
    ("empty_id", replaced(REQUEST, 2, b""), TS, ProtocolError, "correlation id must be 1..64 bytes, got 0"),
    ("header_wrong_type", resigned(REQUEST, 3, b'{"ts":"1700000000000","sid":"s","seq":1,"path":"/"}'), TS,
     ProtocolError, "request: Expected `int`, got `str` - at `$.ts`"),
    ("arguments_not_an_object", resigned(REQUEST, 4, b'["RETURN_DATA"]'), TS, ProtocolError,
     "request: Expected `object`, got `array`"),
]


@pytest.mark.parametrize(("name", "frames", "now", "error", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_vectors_are_refused(name: str, frames: list[bytes], now: int, error: type[Exception],
                                      message: str) -> None:
    with pytest.raises(error) as refused:
        read(frames, now)
    assert str(refused.value) == message


def _text(frame: bytes) -> str | None:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        return None


def fixture_document() -> dict[str, Any]:
    """The golden table as language-neutral JSON: frames in hex, plus their text where they are text."""
    return {
        "protocol": "brubeck-service wire protocol v1",
        "frames": ["marker b'BRS1'", "kind", "correlation id", "header JSON", "body JSON", "mac"],
        "mac": "HMAC-SHA256 keyed by the UTF-8 passphrase over frames 0-4, each preceded by its length as a "
               "4-byte big-endian unsigned integer; ERR messages are unsigned (empty mac)",
        "passphrase": PASSPHRASE,
        "window_ms": WINDOW_MS,
        "vectors": [
            {
                "name": golden.name,
                "now_ms": golden.now,
                **golden.notes,
                "frames_hex": [frame.hex() for frame in golden.frames],
                "frames_text": [_text(frame) for frame in golden.frames[:5]],
                "header": json.loads(golden.frames[3]),
                "body": json.loads(golden.frames[4]) if golden.frames[4] else None,
            }
            for golden in GOLDEN
        ],
        "rejected": [
            {"name": name, "now_ms": now, "frames_hex": [frame.hex() for frame in frames],
             "error": error.__name__, "message": message}
            for name, frames, now, error, message in REJECTED
        ],
    }


def test_the_fixture_file_holds_the_golden_table() -> None:
    assert json.loads(FIXTURE.read_text(encoding="utf-8")) == fixture_document()


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(fixture_document(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def test_the_names_before_0_3_0_are_the_same_functions() -> None:
    from brubeckservice import envelope

    assert (envelope.encode_request, envelope.encode_reply, envelope.encode_ping, envelope.encode_pong,
            envelope.encode_error) == (build_request, build_reply, build_ping, build_pong, build_error)
    assert (envelope.open_request, envelope.open_reply, envelope.open_control, envelope.parse) == (
        parse_request, parse_reply, parse_control, parse_envelope)


# -- nesting deeper than any decoder recurses ------------------------------------------------------------------

DEEP = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("kind", [REQ, REP, b"PING", b"PONG", DRAIN])
def test_a_correctly_signed_body_nested_too_deep_is_a_protocol_error(kind: bytes) -> None:
    # A key holder's (or a broken peer's) pathological JSON must end as the package's own error, which the
    # service answers and counts, never as a RecursionError that escapes the loop's error handling.
    header = {REQ: b'{"ts":%d,"sid":"s","seq":1,"path":"/"}' % TS, REP: b'{"ts":%d,"status":200}' % TS}
    frames = [MARKER, kind, b"deep-1", header.get(kind, b'{"ts":%d}' % TS), DEEP]
    frames.append(SIGNER.sign(frames))
    with pytest.raises(ProtocolError, match="recursion"):
        read(frames, TS)


def test_a_request_with_more_than_max_headers_is_malformed() -> None:
    many = ServiceRequest(path="/echo", headers={f"h{n}": "v" for n in range(MAX_HEADERS + 1)})
    frames = build_request(SIGNER, b"many", many, TS, "s", 1)
    with pytest.raises(ProtocolError, match=r"Expected `object` of length <= 256 - at `\$.headers`"):
        parse_request(parse_envelope(frames), SIGNER, TS, ReplayGuard())
    enough = ServiceRequest(path="/echo", headers={f"h{n}": "v" for n in range(MAX_HEADERS)})
    frames = build_request(SIGNER, b"enough", enough, TS, "s", 2)
    assert len(parse_request(parse_envelope(frames), SIGNER, TS, ReplayGuard()).headers) == MAX_HEADERS
