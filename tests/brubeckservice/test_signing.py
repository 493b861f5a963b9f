"""Signatures and the replay guard: what keeps a stranger, or a recording, from calling a service."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from brubeckservice.signing import MAC_SIZE, ReplayGuard, SeenMacs, Signer, mac_input

FRAMES = [b"BRS1", b"REQ", b"id-1", b'{"ts":1700000000000}', b'{"RETURN_DATA":"hello"}']
NOW = 1_700_000_000_000


# -- Signer -------------------------------------------------------------------------------------------

def test_mac_input_prefixes_each_frame_with_its_big_endian_length() -> None:
    assert mac_input([b"ab", b"", b"xyz"]) == b"\x00\x00\x00\x02ab" b"\x00\x00\x00\x00" b"\x00\x00\x00\x03xyz"


def test_signature_is_hmac_sha256_of_the_mac_input_keyed_by_the_passphrase() -> None:
    expected = hmac.new(b"secret", b"".join(struct.pack(">I", len(f)) + f for f in FRAMES), hashlib.sha256)
    assert Signer("secret").sign(FRAMES) == expected.digest()
    assert len(Signer("secret").sign(FRAMES)) == MAC_SIZE


def test_a_signature_verifies_with_the_same_passphrase_given_as_str_or_bytes() -> None:
    mac = Signer("sécret").sign(FRAMES)
    assert Signer("sécret").verify(FRAMES, mac)
    assert Signer("sécret".encode()).verify(FRAMES, mac)


def test_a_signature_does_not_verify_with_another_passphrase() -> None:
    assert not Signer("other").verify(FRAMES, Signer("secret").sign(FRAMES))


@pytest.mark.parametrize("index", range(len(FRAMES)))
def test_changing_any_frame_breaks_the_signature(index: int) -> None:
    signer = Signer("secret")
    mac = signer.sign(FRAMES)
    tampered = list(FRAMES)
    tampered[index] = tampered[index][:-1] + bytes([tampered[index][-1] ^ 1])
    assert not signer.verify(tampered, mac)


@pytest.mark.parametrize(("signed", "presented"), [
    ([b"ab", b"c"], [b"a", b"bc"]),      # same bytes, cut elsewhere
    ([b"", b"abc"], [b"abc", b""]),      # same bytes, moved to another frame
    ([b"abc"], [b"abc", b""]),           # an empty frame added
    ([b"ab", b"c"], [b"abc"]),           # two frames joined
])
def test_recutting_the_frames_breaks_the_signature(signed: list[bytes], presented: list[bytes]) -> None:
    signer = Signer("secret")
    assert b"".join(signed) == b"".join(presented)
    assert not signer.verify(presented, signer.sign(signed))


@pytest.mark.parametrize("mac", [
    b"",
    Signer("secret").sign(FRAMES)[:-1],           # truncated
    Signer("secret").sign(FRAMES) + b"\x00",      # extended
    Signer("secret").sign(FRAMES).hex().encode(),  # hex instead of raw bytes
])
def test_only_the_exact_32_byte_signature_verifies(mac: bytes) -> None:
    assert not Signer("secret").verify(FRAMES, mac)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real_compare_digest = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)  # the module signing.py calls through
    signer = Signer("secret")
    mac = signer.sign(FRAMES)
    assert signer.verify(FRAMES, mac)
    assert compared == [(mac, mac)]


def test_an_empty_passphrase_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Signer("")
    with pytest.raises(ValueError, match="must not be empty"):
        Signer(b"")


def test_the_passphrase_never_shows_in_repr() -> None:
    assert "hunter2" not in repr(Signer("hunter2"))


# -- ReplayGuard --------------------------------------------------------------------------------------

def test_a_fresh_message_is_accepted() -> None:
    assert ReplayGuard().check("session", 1, NOW, NOW) is None


@pytest.mark.parametrize(("skew_ms", "reason"), [
    (30_001, "sent 30.0s ago by the sender's clock, beyond the 30s replay window (held in a queue that long, "
             "replayed, or the clocks disagree)"),
    (3_600_000, "sent 3600.0s ago by the sender's clock, beyond the 30s replay window (held in a queue that "
                "long, replayed, or the clocks disagree)"),
    (-30_001, "timestamp is 30.0s ahead of this host's clock, beyond the 30s replay window (the clocks "
              "disagree: synchronise them with NTP)"),
])
def test_a_message_too_far_from_this_hosts_clock_is_stale(skew_ms: int, reason: str) -> None:
    assert ReplayGuard(window_ms=30_000).check("session", 1, NOW - skew_ms, NOW) == reason


@pytest.mark.parametrize("skew_ms", [30_000, -30_000, 0])
def test_a_message_within_the_window_is_not_stale(skew_ms: int) -> None:
    assert ReplayGuard(window_ms=30_000).check("session", 1, NOW - skew_ms, NOW) is None


def test_a_stale_message_does_not_use_up_its_number() -> None:
    guard = ReplayGuard(window_ms=30_000)
    assert guard.check("session", 5, NOW - 60_000, NOW) is not None
    assert guard.check("session", 5, NOW, NOW) is None


def test_the_same_message_twice_is_a_replay() -> None:
    guard = ReplayGuard()
    assert guard.check("session", 7, NOW, NOW) is None
    assert guard.check("session", 7, NOW, NOW + 1) == "replayed message"


def test_numbers_are_per_session() -> None:
    guard = ReplayGuard()
    assert guard.check("one", 1, NOW, NOW) is None
    assert guard.check("two", 1, NOW, NOW) is None
    assert guard.check("one", 1, NOW, NOW) == "replayed message"


def test_messages_reordered_within_the_window_are_accepted_once_each() -> None:
    guard = ReplayGuard(reorder=8)
    for seq in (1, 4, 3, 8, 2, 5):
        assert guard.check("session", seq, NOW, NOW) is None, seq
    for seq in (1, 2, 3, 4, 5, 8):
        assert guard.check("session", seq, NOW, NOW) == "replayed message", seq
    assert guard.check("session", 6, NOW, NOW) is None  # never seen: still welcome


def test_a_number_older_than_the_reorder_window_is_refused() -> None:
    guard = ReplayGuard(reorder=4)
    assert guard.check("session", 10, NOW, NOW) is None
    assert guard.check("session", 7, NOW, NOW) is None  # 3 below the highest: inside the window
    assert guard.check("session", 6, NOW, NOW) == "sequence number too old"  # 4 below: outside


def test_a_jump_past_the_window_forgets_what_came_before() -> None:
    guard = ReplayGuard(reorder=4)
    assert guard.check("session", 1, NOW, NOW) is None
    assert guard.check("session", 100, NOW, NOW) is None
    assert guard.check("session", 99, NOW, NOW) is None
    assert guard.check("session", 1, NOW, NOW) == "sequence number too old"
    assert guard.check("session", 100, NOW, NOW) == "replayed message"


def test_the_session_table_never_grows_past_max_sessions() -> None:
    guard = ReplayGuard(max_sessions=3)
    for index in range(100):
        assert guard.check(f"session-{index}", 1, NOW + index, NOW + index) is None
        assert len(guard) <= 3
    assert len(guard) == 3


def test_a_full_session_table_forgets_the_least_recently_active_session() -> None:
    guard = ReplayGuard(max_sessions=3)
    for sid in ("a", "b", "c"):
        assert guard.check(sid, 1, NOW, NOW) is None
    assert guard.check("a", 2, NOW, NOW) is None  # "a" is active again: "b" is now the idlest
    assert guard.check("d", 1, NOW, NOW) is None  # a fourth session: one must go
    assert guard.check("a", 2, NOW, NOW) == "replayed message"  # remembered
    assert guard.check("c", 1, NOW, NOW) == "replayed message"  # remembered
    # Forgotten, but not accepted again: no newer than what the forgotten session had sent.
    assert guard.check("b", 1, NOW, NOW) == ("from a session not remembered, and no newer than one forgotten to "
                                             "make room (the replay guard is full): it may be a replay")
    assert guard.check("b", 2, NOW + 1, NOW + 1) is None  # its next message, newer: a session again


def test_a_flood_of_fresh_sessions_does_not_let_a_captured_request_in_again() -> None:
    # Found by an attacker's test: 100,000 fresh sessions in 4 s evicted an active one, and a request
    # captured from it was accepted a second time.
    guard = ReplayGuard(max_sessions=1000)
    assert guard.check("victim", 7, NOW, NOW) is None
    for index in range(5000):
        assert guard.check(f"flood-{index}", 1, NOW + 1 + index // 10, NOW + 1 + index // 10) is None
    assert guard.check("victim", 7, NOW, NOW + 600) is not None  # the captured one, replayed
    assert guard.check("victim", 8, NOW + 600, NOW + 600) is None  # the victim's own next request


# -- SeenMacs ----------------------------------------------------------------------------------------------

def test_a_mac_is_accepted_once_within_the_window() -> None:
    seen = SeenMacs(window_ms=30_000)
    assert seen.check(b"m" * 32, NOW, NOW) is None
    assert seen.check(b"m" * 32, NOW, NOW + 1000) == "replayed message"
    assert seen.check(b"n" * 32, NOW, NOW + 1000) is None


def test_seen_macs_refuses_stale_and_forgets_what_left_the_window() -> None:
    seen = SeenMacs(window_ms=1000)
    assert seen.check(b"a" * 32, NOW, NOW) is None
    assert seen.check(b"a" * 32, NOW, NOW + 1001) is not None  # stale now, whatever else
    assert seen.check(b"b" * 32, NOW + 1001, NOW + 1001) is None
    assert len(seen) == 1  # "a" is past the window: nothing to remember it for


def test_a_full_seen_macs_refuses_what_it_may_have_forgotten() -> None:
    seen = SeenMacs(max_entries=3)
    for index in range(10):
        assert seen.check(bytes([index]) * 32, NOW + index, NOW + index) is None
        assert len(seen) <= 3
    assert seen.check(b"\x00" * 32, NOW, NOW + 10) is not None  # forgotten, but no newer than the watermark
    assert seen.check(b"\x0a" * 32, NOW + 10, NOW + 10) is None


# -- rotation -------------------------------------------------------------------------------------------

def test_during_a_rotation_the_first_passphrase_signs_and_any_verifies() -> None:
    old, new = Signer("old secret"), Signer("new secret")
    rotating = Signer(["new secret", "old secret"])
    assert rotating.sign(FRAMES) == new.sign(FRAMES)
    assert rotating.verify(FRAMES, new.sign(FRAMES)) and rotating.other_keys_used == 0
    assert rotating.verify(FRAMES, old.sign(FRAMES)) and rotating.other_keys_used == 1
    assert not rotating.verify(FRAMES, Signer("neither").sign(FRAMES))
    assert not old.verify(FRAMES, rotating.sign(FRAMES))  # whoever only knows the old one: not yet
    assert repr(rotating) == "Signer(<2 secrets>)"


@pytest.mark.parametrize("passphrases", [[], ["fine", ""]])
def test_no_passphrase_of_a_rotation_may_be_empty(passphrases: list[str]) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Signer(passphrases)


def test_sessions_stamped_in_the_future_cannot_lock_out_the_present() -> None:
    # A key holder flooding fresh sessions stamped 20 s ahead pushed the watermark into the future: every
    # genuine new session (and every PING) was then refused as a possible replay, for 20 s.
    guard, seen = ReplayGuard(max_sessions=10), SeenMacs(max_entries=10)
    for index in range(100):
        assert guard.check(f"ahead-{index}", 1, NOW + 20_000, NOW) is None
        assert seen.check(b"%032d" % index, NOW + 20_000, NOW) is None
    assert guard.watermark == seen.watermark == NOW
    assert guard.check("genuine", 1, NOW + 1, NOW + 1) is None
    assert seen.check(b"g" * 32, NOW + 1, NOW + 1) is None


def test_a_forgotten_future_stamped_session_counts_from_when_it_arrived() -> None:
    # Clamping to the moment a session was forgotten still refused a genuine first message stamped just
    # before that moment (the guard full of sessions stamped ahead, during and after such a flood).
    guard = ReplayGuard(30_000, max_sessions=2)
    for index, arrival in enumerate((NOW, NOW, NOW + 5)):
        assert guard.check(f"ahead-{index}", 1, NOW + 20_000, arrival) is None
    assert guard.watermark == NOW  # when the forgotten one arrived, not NOW + 5 nor NOW + 20 s
    assert guard.check("genuine", 1, NOW + 4, NOW + 6) is None
