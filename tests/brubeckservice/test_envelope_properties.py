"""Properties of the service wire protocol (brubeckservice/envelope.py), for inputs Hypothesis makes.

Any frames, and signed frames whose header and body are anything, are read into a value or refused with
`ProtocolError`, `AuthenticationError` or `RequestExpired` (the documented refusals), never another
exception; every builder's frames read back into the value built; and a signed message changed anywhere
(a bit, a byte, a byte moved from one frame to the next) is refused, never read as another message.
The golden vectors are in test_envelope.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from brubeckservice.envelope import (
    DRAIN,
    ERR,
    KINDS,
    MARKER,
    MAX_ERROR_TEXT,
    MAX_ID_SIZE,
    PING,
    PONG,
    REP,
    REQ,
    ControlHeader,
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
)
from brubeckservice.errors import AuthenticationError, ProtocolError, RequestExpired
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import ReplayGuard, Signer
from tests.strategies import PROPERTIES, json_values, mutation, nested

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "protocol_v1.json").read_text())
SIGNER = Signer(GOLDEN["passphrase"])
WINDOW_MS = GOLDEN["window_ms"]
TS = 1_700_000_000_000
REFUSED = (ProtocolError, AuthenticationError, RequestExpired)
VECTORS = [[bytes.fromhex(frame) for frame in vector["frames_hex"]] for vector in GOLDEN["vectors"]]
SIGNED_VECTORS = [frames for frames in VECTORS if frames[1] != ERR]


def read(frames: list[bytes], now: int = TS) -> Any:
    """What a receiver makes of one message at `now` (a REQ with a new replay guard); raises to refuse it."""
    env = parse_envelope(frames)
    if env.kind == REQ:
        return parse_request(env, SIGNER, now, ReplayGuard(WINDOW_MS))
    if env.kind == REP:
        return parse_reply(env, SIGNER, now, WINDOW_MS)
    return parse_control(env, None if env.kind == ERR else SIGNER, now, WINDOW_MS)


def read_or_refused(frames: list[bytes]) -> Any:
    try:
        return read(frames)
    except REFUSED:
        return None


def signed(kind: bytes, msg_id: bytes, header: bytes, body: bytes) -> list[bytes]:
    frames = [MARKER, kind, msg_id, header, body]
    return [*frames, SIGNER.sign(frames)]


# -- any input ---------------------------------------------------------------------------------------------

frames_of_anything = st.lists(st.binary(max_size=64) | st.sampled_from([MARKER, *KINDS, b"BRS2", b""]),
                              max_size=8)


@PROPERTIES
@given(frames_of_anything)
@example([MARKER, REQ, b"", b"{}", b"{}", b""])
@example([b"BR", REQ, b"x", b"{}", b"{}", b""])
@example([MARKER, ERR, b"x" * (MAX_ID_SIZE + 1), b"{}", b"", b""])
def test_any_frames_are_read_or_refused(frames: list[bytes]) -> None:
    read_or_refused(frames)


golden_headers = [frames[3] for frames in VECTORS]
golden_bodies = [frames[4] for frames in VECTORS]
DEEP = nested(b"[", b"]")
DEEP_OBJECT = b'{"ts":1700000000000,"sid":"s","seq":1,"path":"/","headers":' + nested(b'{"a":', b"}") + b"}"


@PROPERTIES
@given(st.sampled_from(sorted(KINDS)), st.binary(min_size=1, max_size=MAX_ID_SIZE),
       st.sampled_from(golden_headers).flatmap(mutation) | st.binary(),
       st.sampled_from(golden_bodies).flatmap(mutation) | st.binary())
@example(REQ, b"x", DEEP, b"{}")
@example(DRAIN, b"x", b'{"ts":1700000000000,"msg":"\x80"}', b"{}")  # not UTF-8 (msgspec 0.18: UnicodeDecodeError)
@example(REQ, b"x", golden_headers[0], b'{"a":"\xff"}')
@example(REP, b"x", b'{"ts":1700000000000,"status":200}', b'"\xc3"')
@example(REQ, b"x", golden_headers[0], DEEP)
@example(REQ, b"x", DEEP_OBJECT, b"{}")
@example(REP, b"x", b'{"ts":1700000000000,"status":200}', DEEP)
@example(PONG, b"x", b'{"ts":1700000000000}', DEEP)
@example(REQ, b"x", b'{"ts":1700000000000,"sid":"s","seq":1,"path":"/","deadline":-99999999999999999999}', b"{}")
@example(REQ, b"x", b'{"ts":1e400,"sid":"s","seq":1,"path":"/"}', b"{}")
@example(REP, b"x", b'{"ts":170000000000000000000000000000000,"status":200}', b"{}")
def test_signed_frames_of_any_header_and_body_are_read_or_refused(kind: bytes, msg_id: bytes, header: bytes,
                                                                   body: bytes) -> None:
    # Signed with the right key: what a peer holding the key (or a bug in one) could send, past the MAC check.
    read_or_refused(signed(kind, msg_id, header, body))


# -- build -> read -----------------------------------------------------------------------------------------

msg_ids = st.binary(min_size=1, max_size=MAX_ID_SIZE)
texts = st.text(max_size=20)
arguments = st.dictionaries(st.text(), json_values, max_size=4)
now_ms = st.integers(TS - 10**12, TS + 10**12)


CONTROL_BUILDERS: dict[bytes, Callable[[Signer, bytes, int, dict[str, Any]], list[bytes]]] = {
    PING: build_ping, PONG: build_pong, DRAIN: build_drain}


@st.composite
def requests(draw: st.DrawFn) -> ServiceRequest:
    return ServiceRequest(path=draw(texts), method=draw(texts), arguments=draw(arguments),
                          headers=draw(st.dictionaries(texts, texts, max_size=3)), conn_id=draw(texts),
                          deadline=draw(st.none() | st.integers(TS, TS + 10**9)))


@st.composite
def responses(draw: st.DrawFn) -> ServiceResponse:
    return ServiceResponse(status_code=draw(st.integers(-(2**63), 2**63 - 1)), status_msg=draw(texts),
                           body=draw(json_values), path=draw(texts), method=draw(texts),
                           headers=draw(st.dictionaries(texts, texts, max_size=3)), conn_id=draw(texts))


@PROPERTIES
@given(msg_ids, requests(), st.text(max_size=32), st.integers(-(2**63), 2**63 - 1))
def test_a_built_request_reads_back(msg_id: bytes, request: ServiceRequest, sid: str, seq: int) -> None:
    frames = build_request(SIGNER, msg_id, request, TS, sid, seq)
    assert read(frames) == msgspec.structs.replace(request, timestamp=TS, body=frames[4], msg_id=msg_id)


@PROPERTIES
@given(msg_ids, responses(), now_ms)
def test_a_built_reply_reads_back(msg_id: bytes, response: ServiceResponse, now: int) -> None:
    frames = build_reply(SIGNER, msg_id, response, now)
    assert read(frames, now) == msgspec.structs.replace(response, timestamp=now, msg_id=msg_id)


@PROPERTIES
@given(msg_ids, st.sampled_from(sorted(CONTROL_BUILDERS)), arguments, now_ms)
def test_built_control_messages_read_back(msg_id: bytes, kind: bytes, info: dict[str, Any], now: int) -> None:
    assert read(CONTROL_BUILDERS[kind](SIGNER, msg_id, now, info), now) == (ControlHeader(ts=now), info)


@PROPERTIES
@given(msg_ids, st.integers(-(2**63), 2**63 - 1), st.text(max_size=2 * MAX_ERROR_TEXT), now_ms)
def test_a_built_error_reads_back_with_its_text_cut(msg_id: bytes, status: int, text: str, now: int) -> None:
    cut = text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "..."
    assert read(build_error(msg_id, status, text, now), now) == (ControlHeader(ts=now, status=status, msg=cut), None)


# -- a signed message changed anywhere is refused ----------------------------------------------------------

@st.composite
def changed(draw: st.DrawFn, frames: list[bytes]) -> list[bytes]:
    """`frames` with one change: one frame mutated once, or a byte moved across the cut between two frames."""
    frames = list(frames)
    index = draw(st.integers(0, len(frames) - 1))
    if draw(st.booleans()) or index == len(frames) - 1:
        frames[index] = draw(mutation(frames[index], max_changes=1))
    elif frames[index]:  # the last byte of this frame becomes the first of the next
        frames[index], frames[index + 1] = frames[index][:-1], frames[index][-1:] + frames[index + 1]
    return frames


def _request(msg_id: bytes, request: ServiceRequest) -> list[bytes]:
    return build_request(SIGNER, msg_id, request, TS, "sid", 1)


def _reply(msg_id: bytes, response: ServiceResponse) -> list[bytes]:
    return build_reply(SIGNER, msg_id, response, TS)


def _pong(msg_id: bytes, info: dict[str, Any]) -> list[bytes]:
    return build_pong(SIGNER, msg_id, TS, info)


built_signed = st.one_of(st.builds(_request, msg_ids, requests()), st.builds(_reply, msg_ids, responses()),
                         st.builds(_pong, msg_ids, arguments), st.sampled_from(SIGNED_VECTORS))


@PROPERTIES
@given(st.data(), built_signed)
def test_a_signed_message_changed_anywhere_is_refused(data: st.DataObject, frames: list[bytes]) -> None:
    original = read(frames)
    tampered = data.draw(changed(frames))
    if tampered == frames:
        return  # the change changed nothing (a byte replaced by itself)
    with pytest.raises((AuthenticationError, ProtocolError)):
        read(tampered)
    assert read(frames) == original


@pytest.mark.parametrize("frames", SIGNED_VECTORS, ids=[frames[2].decode() for frames in SIGNED_VECTORS])
def test_every_bit_flipped_in_a_golden_message_is_refused(frames: list[bytes]) -> None:
    # Exhaustive where the property above samples: each of the message's bits, one at a time.
    for index, frame in enumerate(frames):
        for bit in range(8 * len(frame)):
            tampered = list(frames)
            tampered[index] = frame[:bit // 8] + bytes([frame[bit // 8] ^ (1 << bit % 8)]) + frame[bit // 8 + 1:]
            with pytest.raises((AuthenticationError, ProtocolError)):
                read(tampered)
