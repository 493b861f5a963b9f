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


#: A passphrase, or during a rotation a list of them: the first signs, any verifies.
Passphrases = str | bytes | Sequence[str | bytes]


class _Key:
    """One passphrase's two keyed SHA-256 states (see `Signer`)."""

    __slots__ = ("inner", "outer")

    def __init__(self, passphrase: str | bytes) -> None:
        key = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
        if not key:
            raise ValueError("a service passphrase must not be empty")
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self.inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self.outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def mac(self, signed: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(signed)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


class Signer:
    """Signs and verifies frames with HMAC-SHA256 keyed by the passphrase itself.

    HMAC (RFC 2104) is H((K ^ opad) || H((K ^ ipad) || m)). The two keyed SHA-256 states are computed
    once and copied per message, which gives the same MACs as `hmac.digest` at less than half the cost
    (the key schedule is most of the work for a short message).

    Rotation (docs/security.md): given a list of passphrases, it signs with the first and accepts a MAC
    made with any of them, trying the first one first; `other_keys_used` counts the messages that needed
    another, so an operator can tell when nobody uses an old passphrase any more.
    """

    __slots__ = ("_inner", "_others", "_outer", "other_keys_used")

    def __init__(self, passphrase: Passphrases) -> None:
        listed = [passphrase] if isinstance(passphrase, str | bytes | bytearray) else list(passphrase)
        if not listed:
            raise ValueError("a service passphrase must not be empty")
        first, *others = (_Key(one) for one in listed)
        self._inner, self._outer = first.inner, first.outer  # (the signing key's states, used inline)
        self._others = others
        self.other_keys_used = 0

    def __repr__(self) -> str:
        return f"Signer(<{1 + len(self._others)} secrets>)" if self._others else "Signer(<secret>)"

    def sign(self, frames: Sequence[bytes]) -> bytes:
        inner = self._inner.copy()
        inner.update(mac_input(frames))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def verify(self, frames: Sequence[bytes], mac: bytes) -> bool:
        if len(mac) != MAC_SIZE:
            return False
        if hmac.compare_digest(self.sign(frames), mac):
            return True
        if self._others:
            signed = mac_input(frames)
            for key in self._others:
                if hmac.compare_digest(key.mac(signed), mac):
                    self.other_keys_used += 1
                    return True
        return False


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
    When `max_sessions` are remembered, the least recently active one is forgotten, and the guard keeps
    the newest timestamp that session had sent, or when that message arrived if it was stamped later
    (`watermark`): a message of a session it does not know that is no newer than that is refused, since it
    may belong to a forgotten one. A flood of fresh sessions (which takes the key) can therefore make it
    refuse genuine first messages whose clock is behind, but never accept a replay of a message stamped no
    later than it arrived; and a flood stamped in the future cannot push the watermark past the moments
    its messages arrived. (A replay of a forgotten session whose clock ran ahead of this host's may pass
    the watermark; the timestamp window still bounds it.)
    """

    def __init__(self, window_ms: int = 30_000, reorder: int = 1024, max_sessions: int = 100_000) -> None:
        self.window_ms = window_ms
        self.reorder = reorder
        self.max_sessions = max_sessions
        self.watermark = 0  # the newest timestamp of a session forgotten
        self._sessions: OrderedDict[str, list[int]] = OrderedDict()  # sid -> [highest seq, bitmap, newest ts]

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
            if timestamp_ms <= self.watermark:
                return ("from a session not remembered, and no newer than one forgotten to make room (the "
                        "replay guard is full): it may be a replay")
            if len(sessions) >= self.max_sessions:
                _, forgotten = sessions.popitem(last=False)
                self.watermark = max(self.watermark, forgotten[2])
            # (its newest timestamp, but never past when it arrived: future-stamped sessions must not push
            # the watermark ahead of the genuine ones that follow)
            sessions[sid] = [seq, 1, min(timestamp_ms, now_ms)]
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
        state[2] = max(state[2], min(timestamp_ms, now_ms))
        sessions.move_to_end(sid)
        return None


class SeenMacs:
    """Refuses a signed message seen before within the window, by its MAC: for the messages that carry no
    sequence number (PING), so that one captured cannot be played again for a signed answer.

    Bounded like `ReplayGuard`: past `max_entries` the oldest is forgotten and its timestamp becomes the
    watermark, at or below which a MAC not remembered is refused too.
    """

    def __init__(self, window_ms: int = 30_000, max_entries: int = 100_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self.watermark = 0
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # mac -> timestamp, in arrival order

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, mac: bytes, timestamp_ms: int, now_ms: int) -> str | None:
        """None if the message may be accepted (and remember it), else the reason to refuse it."""
        problem = outside_window(timestamp_ms, now_ms, self.window_ms)
        if problem is not None:
            return problem
        seen = self._seen
        oldest = now_ms - self.window_ms
        while seen:  # those past the window would be refused as stale anyway
            first, when = next(iter(seen.items()))
            if when >= oldest:
                break
            del seen[first]
        if mac in seen:
            return "replayed message"
        if timestamp_ms <= self.watermark:
            return "no newer than a message forgotten to make room (the replay guard is full): it may be a replay"
        if len(seen) >= self.max_entries:
            _, forgotten = seen.popitem(last=False)
            self.watermark = max(self.watermark, forgotten)
        seen[mac] = min(timestamp_ms, now_ms)  # (as in ReplayGuard)
        return None
