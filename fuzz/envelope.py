"""Fuzz target: a service message, its six frames (`brubeckservice.envelope`).

The input is frames joined by `SEPARATOR`. Six frames are read as they are; five are signed first with the
shared key (the sixth frame is their MAC), so that the fuzzer also reaches the header and body decoders
behind the signature check, as a peer holding the key (or a bug in one) would.

Oracle: a message is refused with `ProtocolError`, `AuthenticationError` or `RequestExpired` (the
documented refusals), or read into a value; a value read, built again by the matching `build_*`, reads
back as the same value.
"""

from __future__ import annotations

from typing import Any

import msgspec

from brubeckservice.envelope import (
    ERR,
    FRAMES,
    MAX_ERROR_TEXT,
    PING,
    PONG,
    REP,
    REQ,
    ControlHeader,
    Envelope,
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
from brubeckservice.models import ServiceRequest
from brubeckservice.signing import ReplayGuard, Signer
from fuzz import same

SEPARATOR = b"\x00|"
SIGNER = Signer("my_shared_secret")  # the golden vectors' passphrase (tests/fixtures/protocol_v1.json)
NOW_MS = 1_700_000_000_000           # and their clock, so that the seeds are fresh
WINDOW_MS = 30_000
REFUSED = (ProtocolError, AuthenticationError, RequestExpired)


def read(frames: list[bytes]) -> Any:
    """What a receiver makes of one message at NOW_MS (each REQ with a new replay guard)."""
    env = parse_envelope(frames)
    if env.kind == REQ:
        return parse_request(env, SIGNER, NOW_MS, ReplayGuard(WINDOW_MS))
    if env.kind == REP:
        return parse_reply(env, SIGNER, NOW_MS, WINDOW_MS)
    return parse_control(env, None if env.kind == ERR else SIGNER, NOW_MS, WINDOW_MS)


def rebuilt(env: Envelope, value: Any) -> list[bytes]:
    """The frames the builder of `env.kind` makes of `value`, the value `read` made of `env`."""
    if env.kind == REQ:
        request: ServiceRequest = value
        return build_request(SIGNER, env.msg_id, request, request.timestamp, "fuzz", 1)
    if env.kind == REP:
        return build_reply(SIGNER, env.msg_id, value, value.timestamp)
    header: ControlHeader = value[0]
    body = value[1]
    if env.kind == ERR:
        return build_error(env.msg_id, header.status, header.msg, header.ts)
    if env.kind == PING:
        return build_ping(SIGNER, env.msg_id, header.ts, body)
    return (build_pong if env.kind == PONG else build_drain)(SIGNER, env.msg_id, header.ts, body)


def comparable(kind: bytes, value: Any) -> Any:
    """What a builder keeps of a value: not a request's raw body (re-encoded), nor the status and text
    of a signed control message, nor anything but the header of an ERR (build_error writes no body, and
    cuts a text past MAX_ERROR_TEXT)."""
    if kind == REQ:
        return msgspec.structs.replace(value, body=b"")
    if kind == REP:
        return value
    header, body = value
    if kind == ERR:
        return header if len(header.msg) <= MAX_ERROR_TEXT else None
    return header.ts, {} if kind == PING and body is None else body


def check(data: bytes) -> None:
    frames = data.split(SEPARATOR)
    if len(frames) == FRAMES - 1:
        frames.append(SIGNER.sign(frames))
    try:
        value = read(frames)
    except REFUSED:
        return
    env = parse_envelope(frames)
    expected = comparable(env.kind, value)
    if expected is not None:
        same(comparable(env.kind, read(rebuilt(env, value))), expected, "read(build(read(frames)))")
