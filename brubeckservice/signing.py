"""Message authentication: HMAC-SHA256 signatures and a replay guard. Pure: no sockets, no clock reads.

The shared passphrase is the HMAC key; it never travels. The MAC covers every frame of the envelope before
it, each prefixed by its length (4 bytes, big-endian) so frames cannot be re-cut without breaking it.
Signatures are compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Sequence

MAC_SIZE = 32
_BLOCK = 64  # SHA-256's block size, in bytes
_length = struct.Struct(">I").pack


def mac_input(frames: Sequence[bytes]) -> bytes:
    """What is signed: for each frame, its length as uint32 big-endian, then the frame."""
    parts: list[bytes] = []
    for frame in frames:
        parts.append(_length(len(frame)))
        parts.append(frame)
    return b"".join(parts)


class Signer:
    """Signs and verifies frames with HMAC-SHA256 keyed by the passphrase itself.

    HMAC (RFC 2104) is H((K ^ opad) || H((K ^ ipad) || m)). The two keyed SHA-256 states are computed
    once and copied per message, which gives the same MACs as `hmac.digest` at less than half the cost
    (the key schedule is most of the work for a short message).
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, passphrase: str | bytes) -> None:
        key = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
        if not key:
            raise ValueError("a service passphrase must not be empty")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def __repr__(self) -> str:
        return "Signer(<secret>)"

    def sign(self, frames: Sequence[bytes]) -> bytes:
        inner = self._inner.copy()
        inner.update(mac_input(frames))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, frames: Sequence[bytes], mac: bytes) -> bool:
        return len(mac) == MAC_SIZE and hmac.compare_digest(self.sign(frames), mac)


def outside_window(timestamp_ms: int, now_ms: int, window_ms: int) -> str | None:
    """Why a signed message's timestamp is refused (more than `window_ms` from `now_ms`), or None."""
    age = now_ms - timestamp_ms
    if age > window_ms:
        return (f"sent {age / 1000:.1f}s ago by the sender's clock, beyond the {window_ms / 1000:g}s replay "
                "window (held in a queue that long, replayed, or the clocks disagree)")
    if -age > window_ms:
        return (f"timestamp is {-age / 1000:.1f}s ahead of this host's clock, beyond the {window_ms / 1000:g}s "
                "replay window (the clocks disagree: synchronise them with NTP)")
    return None


class ReplayGuard:
    """Refuses stale and replayed requests, in memory bounded by the number of callers.

    A request is stale when its timestamp is more than `window_ms` from this host's clock. Each caller
    session (`sid`, random per client) numbers its requests (`seq`, strictly increasing as sent); the guard
    keeps, per session, the highest number seen and a bitmap of the `reorder` numbers below it, as IPsec's
    anti-replay window does (RFC 4303, 3.4.3). A number seen before, or older than the bitmap, is refused.
    Sessions idle for longer than the window are forgotten first when `max_sessions` is reached; their old
    messages are stale by then anyway.
    """

    def __init__(self, window_ms: int = 30_000, reorder: int = 1024, max_sessions: int = 100_000) -> None:
        self.window_ms = window_ms
        self.reorder = reorder
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, list[int]] = OrderedDict()  # sid -> [highest seq, bitmap, last ts]

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, sid: str, seq: int, timestamp_ms: int, now_ms: int) -> str | None:
        """None if the message may be accepted (and remember it), else the reason to refuse it."""
        problem = outside_window(timestamp_ms, now_ms, self.window_ms)
        if problem is not None:
            return problem
        sessions = self._sessions
        state = sessions.get(sid)
        if state is None:
            if len(sessions) >= self.max_sessions:
                sessions.popitem(last=False)
            sessions[sid] = [seq, 1, now_ms]
            return None
        highest, bitmap = state[0], state[1]
        if seq > highest:
            shift = seq - highest
            state[1] = ((bitmap << shift) | 1) & ((1 << self.reorder) - 1) if shift < self.reorder else 1
            state[0] = seq
        else:
            offset = highest - seq
            if offset >= self.reorder:
                return "sequence number too old"
            if bitmap >> offset & 1:
                return "replayed message"
            state[1] = bitmap | (1 << offset)
        state[2] = now_ms
        sessions.move_to_end(sid)
        return None
