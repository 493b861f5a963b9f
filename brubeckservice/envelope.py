"""The service wire protocol, version 1 (docs/protocol.md), as pure functions: frames <-> values.

Every message is one ZeroMQ multipart message of six frames (after the routing frames a ROUTER adds)::

    0 marker   b"BRS1"                         protocol name and version
    1 kind     b"REQ" | b"REP" | b"PING" | b"PONG" | b"DRAIN" | b"CANCEL" | b"ERR"
    2 id       1..64 bytes                     correlation id, chosen by the caller, echoed in the answer
    3 header   JSON object (UTF-8)             ts (ms since epoch) and the kind's fields
    4 body     JSON                            REQ: the arguments object; REP: the payload; PING, PONG,
                                               DRAIN and CANCEL: an object (empty for ERR)
    5 mac      32 bytes                        HMAC-SHA256 over frames 0-4 (see signing.py); empty for ERR

Nothing here reads a clock or touches a socket: callers pass `now_ms` in and send the frames themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from brubeckservice.errors import AuthenticationError, ProtocolError, RequestExpired
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import ReplayGuard, Signer, outside_window

MARKER = b"BRS1"
REQ, REP, PING, PONG, DRAIN, CANCEL, ERR = b"REQ", b"REP", b"PING", b"PONG", b"DRAIN", b"CANCEL", b"ERR"
KINDS = frozenset({REQ, REP, PING, PONG, DRAIN, CANCEL, ERR})
#: The kinds a service of this version accepts, as its PONG lists them (`accepts`): a client sends CANCEL
#: only to a worker that listed it (an older one would answer ERR 400).
ACCEPTED = ("REQ", "PING", "CANCEL")
FRAMES = 6
#: Routing frames a service accepts before the envelope: a DEALER connected straight to it adds one; the
#: rest allow for ZeroMQ devices in between. More is refused unanswered (nothing echoes them back).
MAX_ROUTING_FRAMES = 4
MAX_ID_SIZE = 64
#: The longest text an ERR carries (characters).
MAX_ERROR_TEXT = 200


#: Headers a REQ or REP may carry at most (a longer list is a malformed message).
MAX_HEADERS = 256
Headers = Annotated[dict[str, str], msgspec.Meta(max_length=MAX_HEADERS)]


class RequestHeader(msgspec.Struct, kw_only=True, omit_defaults=True):
    ts: int
    sid: str
    seq: int
    path: str
    method: str = "request"
    headers: Headers = {}
    conn_id: str = ""
    deadline: int | None = None
    traceparent: str = ""
    tracestate: str = ""
    reply_to: str = ""


class ReplyHeader(msgspec.Struct, kw_only=True, omit_defaults=True):
    ts: int
    status: int
    msg: str = ""
    path: str = ""
    method: str = "response"
    headers: Headers = {}
    conn_id: str = ""


class ControlHeader(msgspec.Struct, kw_only=True, omit_defaults=True):
    """PING, PONG, DRAIN and ERR headers: a timestamp, and for ERR a status and message."""

    ts: int
    status: int = 200
    msg: str = ""


#: Default largest message either side accepts (the service's ZMQ_MAXMSGSIZE, the client's send check).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

_encode = msgspec.json.Encoder().encode
_request_header = msgspec.json.Decoder(RequestHeader).decode
_reply_header = msgspec.json.Decoder(ReplyHeader).decode
_control_header = msgspec.json.Decoder(ControlHeader).decode
_arguments = msgspec.json.Decoder(dict[str, Any]).decode
_any = msgspec.json.Decoder().decode
# What those decoders raise for a header or body that is not what it must be: msgspec's errors, but for a
# string that is not UTF-8 UnicodeDecodeError in msgspec 0.18 (DecodeError in 0.23), and RecursionError for
# JSON nested too deep.
_MALFORMED = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)


@dataclass(slots=True)
class Envelope:
    """A structurally valid message whose signature has not been checked yet."""

    kind: bytes
    msg_id: bytes
    header: bytes
    body: bytes
    mac: bytes

    @property
    def signed_frames(self) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        return (MARKER, self.kind, self.msg_id, self.header, self.body)


# -- building -----------------------------------------------------------------------------------------

def _seal(signer: Signer, kind: bytes, msg_id: bytes, header: bytes, body: bytes) -> list[bytes]:
    frames = [MARKER, kind, msg_id, header, body]
    frames.append(signer.sign(frames))
    return frames


def build_request(signer: Signer, msg_id: bytes, request: ServiceRequest, now_ms: int, sid: str,
                   seq: int, deadline: int | None = None, trace: tuple[str, str] | None = None) -> list[bytes]:
    """A signed REQ. `sid` names the calling session and `seq` numbers its requests (for replay checks);
    `deadline` (ms since the epoch) and `trace` (traceparent, tracestate) override the request's own."""
    traceparent, tracestate = (request.traceparent, request.tracestate) if trace is None else trace
    header = RequestHeader(ts=now_ms, sid=sid, seq=seq, path=request.path, method=request.method,
                           headers=request.headers, conn_id=request.conn_id,
                           deadline=request.deadline if deadline is None else deadline,
                           traceparent=traceparent, tracestate=tracestate, reply_to=request.reply_to)
    return _seal(signer, REQ, msg_id, _encode(header), _encode(request.arguments))


def build_reply(signer: Signer, msg_id: bytes, response: ServiceResponse, now_ms: int) -> list[bytes]:
    header = ReplyHeader(ts=now_ms, status=response.status_code, msg=response.status_msg, path=response.path,
                         method=response.method, headers=response.headers, conn_id=response.conn_id)
    return _seal(signer, REP, msg_id, _encode(header), _encode(response.body))


def build_ping(signer: Signer, msg_id: bytes, now_ms: int, body: dict[str, Any] | None = None) -> list[bytes]:
    """A signed PING; `body` is `{}` unless given, e.g. `{"drain_ack": True}` once the worker sent DRAIN."""
    return _seal(signer, PING, msg_id, _encode(ControlHeader(ts=now_ms)), b"{}" if body is None else _encode(body))


def build_pong(signer: Signer, msg_id: bytes, now_ms: int, info: dict[str, Any]) -> list[bytes]:
    """A signed PONG: `info` describes the worker (inflight, queued, capacity, ...: docs/protocol.md §4)."""
    return _seal(signer, PONG, msg_id, _encode(ControlHeader(ts=now_ms)), _encode(info))


def build_drain(signer: Signer, msg_id: bytes, now_ms: int, info: dict[str, Any]) -> list[bytes]:
    """A signed DRAIN: this worker is about to stop; `info` is `{"grace": seconds, "inflight": n}`."""
    return _seal(signer, DRAIN, msg_id, _encode(ControlHeader(ts=now_ms)), _encode(info))


def build_cancel(signer: Signer, msg_id: bytes, now_ms: int, reason: str = "") -> list[bytes]:
    """A signed CANCEL: the caller of the REQ with this id stopped waiting (`reason`: why, for the logs)."""
    body = _encode({"reason": reason[:MAX_ERROR_TEXT]}) if reason else b"{}"
    return _seal(signer, CANCEL, msg_id, _encode(ControlHeader(ts=now_ms)), body)


def build_error(msg_id: bytes, status: int, msg: str, now_ms: int) -> list[bytes]:
    """An unsigned rejection (the sender's key may be the very thing that is wrong). It carries no data, and
    at most MAX_ERROR_TEXT characters of text: an answer to bad input never reflects the input back."""
    text = msg if len(msg) <= MAX_ERROR_TEXT else msg[:MAX_ERROR_TEXT - 3] + "..."
    return [MARKER, ERR, msg_id, _encode(ControlHeader(ts=now_ms, status=status, msg=text)), b"", b""]


# -- reading ------------------------------------------------------------------------------------------

def split_routing(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split what a ROUTER received into (routing frames, envelope frames): the envelope is the last six."""
    if not FRAMES + 1 <= len(frames) <= FRAMES + MAX_ROUTING_FRAMES:
        raise ProtocolError(f"expected 1..{MAX_ROUTING_FRAMES} routing frames and then the {FRAMES} envelope "
                            f"frames, got {len(frames)} frames in all")
    return frames[:-FRAMES], frames[-FRAMES:]


def parse_envelope(frames: list[bytes]) -> Envelope:
    """Check the envelope's shape; raise `ProtocolError` with the reason when it is wrong."""
    if len(frames) != FRAMES:
        raise ProtocolError(f"expected {FRAMES} frames, got {len(frames)}")
    marker, kind, msg_id, header, body, mac = frames
    if marker != MARKER:
        if marker[:3] == MARKER[:3]:
            raise ProtocolError(f"unsupported protocol version {marker[:8]!r}; this side speaks {MARKER!r}")
        raise ProtocolError(f"not a brubeck-service message (first frame {marker[:16]!r})")
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind[:16]!r}")
    if not 0 < len(msg_id) <= MAX_ID_SIZE:
        raise ProtocolError(f"correlation id must be 1..{MAX_ID_SIZE} bytes, got {len(msg_id)}")
    return Envelope(kind, msg_id, header, body, mac)


def _authenticate(envelope: Envelope, signer: Signer) -> None:
    if not signer.verify(envelope.signed_frames, envelope.mac):
        raise AuthenticationError("bad or missing signature")


def _fresh(timestamp: int, now_ms: int, window_ms: int) -> None:
    problem = outside_window(timestamp, now_ms, window_ms)
    if problem is not None:
        raise AuthenticationError(problem)


def parse_request(envelope: Envelope, signer: Signer, now_ms: int, guard: ReplayGuard) -> ServiceRequest:
    """The request inside a REQ envelope, after checking its signature, deadline, age and uniqueness.

    Raises `AuthenticationError` (forged, unsigned, stale, replayed), `ProtocolError` (a field of the
    wrong type: the peer holds the key, so it is a bug there, not an attack) or `RequestExpired` (genuine,
    but its `deadline` has passed: its caller stopped waiting, so it must be neither served nor answered).
    The deadline is checked before the replay window, so a request that queued too long is reported as
    late, not as a clock problem; it touches no replay state, as it will not be served.
    """
    _authenticate(envelope, signer)
    try:
        header = _request_header(envelope.header)
        arguments = _arguments(envelope.body)
    except _MALFORMED as exc:
        raise ProtocolError(f"request: {exc}") from None
    if header.deadline is not None and header.deadline < now_ms:
        raise RequestExpired(f"arrived {(now_ms - header.deadline) / 1000:.1f}s after its caller's deadline (it "
                             "waited in a queue, or the clocks of caller and service disagree)")
    problem = guard.check(header.sid, header.seq, header.ts, now_ms)
    if problem is not None:
        raise AuthenticationError(problem)
    return ServiceRequest(path=header.path, method=header.method, arguments=arguments, headers=header.headers,
                          conn_id=header.conn_id, timestamp=header.ts, deadline=header.deadline,
                          body=envelope.body, msg_id=envelope.msg_id, traceparent=header.traceparent,
                          tracestate=header.tracestate, reply_to=header.reply_to)


def parse_reply(envelope: Envelope, signer: Signer, now_ms: int, window_ms: int) -> ServiceResponse:
    """The response inside a REP envelope, after checking its signature and age.

    Replays need no more than that: the caller accepts one reply per outstanding correlation id.
    """
    _authenticate(envelope, signer)
    try:
        header = _reply_header(envelope.header)
        body = _any(envelope.body)
    except _MALFORMED as exc:
        raise ProtocolError(f"reply: {exc}") from None
    _fresh(header.ts, now_ms, window_ms)
    return ServiceResponse(status_code=header.status, status_msg=header.msg, body=body, path=header.path,
                           method=header.method, headers=header.headers, conn_id=header.conn_id,
                           timestamp=header.ts, msg_id=envelope.msg_id)


def parse_control(envelope: Envelope, signer: Signer | None, now_ms: int,
                 window_ms: int) -> tuple[ControlHeader, Any]:
    """The header and body of a PING, PONG, DRAIN, CANCEL (signed: pass the signer) or ERR (unsigned: pass
    None)."""
    if signer is not None:
        _authenticate(envelope, signer)
    try:
        header = _control_header(envelope.header)
        body = _any(envelope.body) if envelope.body else None
    except _MALFORMED as exc:
        raise ProtocolError(f"control message: {exc}") from None
    if signer is not None:
        _fresh(header.ts, now_ms, window_ms)
    return header, body


# The names before 0.3.0 (encode_* and open_*, and parse), kept for code written against them.
encode_request, encode_reply, encode_ping, encode_pong, encode_error = (
    build_request, build_reply, build_ping, build_pong, build_error)
open_request, open_reply, open_control, parse = parse_request, parse_reply, parse_control, parse_envelope
