"""The hostile-peer suite (issue 11): raw sockets on every socket a service and a client expose, sending
everything a bad peer can while legitimate calls run.

The service is apps/hostile_target.py in a process of its own, measured from outside (hostile.py: memory,
file descriptors, log). A legitimate `Caller` makes calls the whole time; each attack runs in rounds until
it has completed CALLS_DURING calls since the attack began, and a round ends once the service has read it
(a PING on the attacking connection is answered after everything sent before it). At the end of each test:
no legitimate call failed, the service still runs, its counters (PONG `stats`) rose by what was sent
(exactly, where the test can tell), its memory and descriptors stayed under the bounds given beside each
test, and its log stayed small (lines about refused messages are rate-limited: one in full per category
per 10 s, then a summary).

The client side: a client of two workers, the real service and a ROUTER of this process playing a bad
worker on the second address, without the key or with it. Calls served by the real worker must not fail
whatever the bad one sends, even when it names the ids of those very calls (the test reads them from the
client: a stronger attacker than one that guesses).

Without the key, a connection is "unsigned" until a message of it passes every check (signature, age,
replay), and the service closes it at its REFUSED_BUDGET-th refused message (16: so at most 15 answers), at
once at a message over UNSIGNED_MAX_MESSAGE (64 KiB), or auth_timeout (10 s) after it connected
(brubeckservice/admission.py). So the keyless attacks here go on fresh connections, each under that budget
and ended by a keyless barrier (a message of an unknown kind, answered ERR 400 after everything before it),
and the tests that cross a limit count the closures (`connections_closed_*` in PONG `stats`). A
connection that signed, as a client's does with its first PING, is never closed for refusals.

Findings that still fail are marked xfail(strict=True), each reason saying what was measured and where the
cause lies. The figures a run measures are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pytest
import zmq.green as zmq
from gevent import socket as gsocket

from brubeckservice import envelope
from brubeckservice.admission import REFUSED_BUDGET, ROOM_GRACE, UNSIGNED_MAX_MESSAGE
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import ProtocolError, ServiceError, ServiceUnavailable
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.pool import MAX_LISTED, RECONNECT_CHECK, Worker
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, receive, wait_until
from tests.brubeckservice.hostile import (
    CALLS_DURING,
    FORGER,
    KEYLESS_ANSWERS,
    KIB,
    MIB,
    PATIENT,
    SIGNER,
    Caller,
    Context,
    Socket,
    Target,
    answers_until_err,
    answers_until_pong,
    assert_log_bounded,
    attack,
    barrier,
    dealer,
    error_status,
    keyless,
    size,
    stats_of,
    unique,
)

#: How many sessions and PINGs a target's replay guards remember when a test asks (100,000 each by default).
REMEMBERED = 2000
DEEP = 100_000  # levels of nesting in the deep payloads
#: The 64-byte ZMTP 3.0 greeting of a NULL-mechanism client (RFC 23): what a plain TCP attacker sends first.
ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)


def report(what: str, **figures: object) -> None:
    """Print what a test measured (shown with `pytest -s`), for the issue's report."""
    print(f"\nhostile: {what}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in figures.items()))


# -- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture
def target_args() -> list[str]:
    """Arguments after the address of apps/hostile_target.py (a test parametrizes this to change them)."""
    return []


@pytest.fixture
def target(tmp_path: Path, target_args: list[str]) -> Iterator[Target]:
    service = Target(tmp_path / "service.log", *target_args)
    yield service
    service.stop()


@pytest.fixture
def context() -> Iterator[Context]:
    """The attackers' context (this process's)."""
    ctx: Context = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def caller(target: Target) -> Iterator[Caller]:
    """A legitimate caller of the target, already calling."""
    client = ServiceClient(target.address, None, PASSPHRASE, timeout=PATIENT)
    legit = Caller(client)
    legit.wait_for(5)
    yield legit
    legit.stop()
    client.close(timeout=0)


@pytest.fixture
def probe(target: Target, context: Context) -> Socket:
    """A connection holding the key that only PINGs: reads the service's counters, sends nothing else."""
    sock = dealer(context, target.address)
    stats_of(sock)
    return sock


#: libzmq 4.3.5's abort when a service closes after a peer left with its inbound queue full and replies
#: unsent (docs/security.md §4): the one exit other than 0 a test may accept, and only by saying so.
LIBZMQ_CLOSE_ABORT = "Assertion failed: !_io_error (src/stream_engine_base.cpp:310)"


def finish(target: Target, *callers: Caller, close_abort_known: bool = False) -> str:
    """What every test of the service ends with: no legitimate call failed, every caller is still calling,
    the service still runs, and it exits cleanly on SIGINT with a bounded log (returned). With
    `close_abort_known`, its exit may instead be libzmq's abort at close (SIGABRT, that assertion in its
    log), once it served everyone through the attack."""
    for legit in callers:
        assert legit.failures == [], legit.failures[:5]
        assert not legit.greenlet.dead, legit.greenlet.exception
    assert target.alive(), f"the service died: exit {target.process.returncode}\n{target.log_text()[-3000:]}"
    for legit in callers:
        legit.stop()
    status = target.stop()
    text = target.log_text()
    if close_abort_known and status == -signal.SIGABRT and LIBZMQ_CLOSE_ABORT in text:
        report("libzmq's abort at close (docs/security.md section 4)", exit_status=status)
        text = text.replace(LIBZMQ_CLOSE_ABORT, "")
    else:
        assert status == 0, text[-3000:]
    assert_log_bounded(text)
    return text


def answered(answers: list[envelope.Envelope]) -> dict[bytes, int]:
    """ERRs by id (each must be small: nothing a peer sends is reflected back)."""
    for env in answers:
        assert size(env) < KIB, f"a {size(env)}-byte answer to {env.msg_id[:40]!r}"
    return {env.msg_id: error_status(env) for env in answers}


def signed(kind: bytes, msg_id: bytes, header: bytes, body: bytes) -> list[bytes]:
    """Six frames signed with the passphrase, whatever their content."""
    frames = [envelope.MARKER, kind, msg_id, header, body]
    return [*frames, SIGNER.sign(frames)]


def deep(levels: int = DEEP) -> bytes:
    return b"[" * levels + b"]" * levels


# -- without the key: garbage of every kind -------------------------------------------------------------

def garbage(n: int) -> list[tuple[list[bytes], int | None, str]]:
    """Round `n` of what a peer without the key can send: (frames, the ERR status it must get, or None for
    no answer at all, and the counter it must raise)."""

    def tag(what: str) -> bytes:
        return b"%s-%d" % (what.encode(), n)

    forged = envelope.build_request(FORGER, tag("forged"), ServiceRequest(path="/echo"), now_ms(), "forger", n + 1)
    unsigned = envelope.build_request(SIGNER, tag("unsigned"), ServiceRequest(path="/echo"), now_ms(), "x", n + 1)
    unsigned_ping = envelope.build_ping(SIGNER, tag("unsigned-ping"), now_ms())
    zero = bytes(32)
    return [
        ([os.urandom(32)], None, "malformed"),  # noise
        ([os.urandom(16) for _ in range(6)], None, "malformed"),  # six frames of noise
        ([b""], None, "malformed"),
        ([envelope.MARKER, envelope.REQ, tag("cut")], None, "malformed"),  # truncated
        (forged[:5], None, "malformed"),  # truncated: no mac frame
        ([b"BRS2", envelope.REQ, tag("v2"), b"{}", b"{}", zero], 505, "malformed"),  # another version
        ([b"BRS0", envelope.PING, tag("v0"), b"{}", b"{}", zero], 505, "malformed"),
        ([envelope.MARKER, b"WHAT", tag("kind"), b"{}", b"{}", zero], 400, "malformed"),  # unknown kind
        ([envelope.MARKER, envelope.REQ, b"", b"{}", b"{}", zero], None, "malformed"),  # no id
        ([envelope.MARKER, envelope.REQ, b"i" * 65, b"{}", b"{}", zero], None, "malformed"),  # oversized id
        ([*unsigned[:5], b""], 401, "forged"),
        (forged, 401, "forged"),
        (envelope.build_ping(FORGER, tag("forged-ping"), now_ms()), 401, "forged"),
        ([*unsigned_ping[:5], b""], 401, "forged"),
        (envelope.build_reply(FORGER, tag("rep"), ServiceResponse(status_code=200), now_ms()), 400, "malformed"),
        (envelope.build_pong(FORGER, tag("pong"), now_ms(), {}), 400, "malformed"),
        (envelope.build_drain(FORGER, tag("drain"), now_ms(), {}), 400, "malformed"),
        (envelope.build_error(tag("err"), 401, "no", now_ms()), 400, "malformed"),
        ([b"r" * 100] * 40 + forged, None, "malformed"),  # too many frames
    ]


def tcp_address(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def zmtp_noise(address: str) -> None:
    """A plain TCP connection that sends a ZMTP 3.0 greeting, then noise, and leaves (libzmq drops it)."""
    with gsocket.create_connection(tcp_address(address), timeout=WAIT) as sock:
        sock.sendall(ZMTP_GREETING + os.urandom(512))


def zmtp10(*messages: list[bytes]) -> bytes:
    """Messages in ZMTP 1.0 framing (RFC 13): per frame, its length + 1 (one byte, or 0xFF and eight), a flags
    byte (1: more frames follow), the body. The first message of a connection is the peer's identity."""
    out = b""
    for message in messages:
        for index, body in enumerate(message):
            size = len(body) + 1
            out += (bytes([size]) if size < 255 else b"\xff" + struct.pack(">Q", size))
            out += (b"\x01" if index < len(message) - 1 else b"\x00") + body
    return out


def closures(counters: Counter[str]) -> dict[str, int]:
    """The connections the service closed, by reason (PONG `stats`), without the zeros."""
    return {key: value for key, value in counters.items() if key.startswith("connections_closed_") and value}


def test_garbage_of_every_kind_is_refused_counted_and_answered_small(target: Target, caller: Caller,
                                                                     context: Context, probe: Socket) -> None:
    # Each round's garbage goes on fresh connections without the key, under the budget of refusals a
    # connection that never signed has (admission.REFUSED_BUDGET, the barrier included), so every message is
    # answered as it would be alone; every fifth round, one more connection spends the whole budget and is
    # closed at its last message; in the first, a 1 MiB message closes a connection at once, and a key
    # holder's connection (never closed for refusals) gets two 1 MiB malformed messages to reflect.
    holder = dealer(context, target.address)
    answers_until_pong(holder)  # (signed: it may send anything up to ZMQ_MAXMSGSIZE)
    before = stats_of(probe)
    expected: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    spent: list[int] = []  # answers each connection past the budget got

    def one_round(n: int) -> None:
        cases = garbage(n)
        per_connection = KEYLESS_ANSWERS - 1  # (and the barrier: 15 refusals, one short of the budget)
        for first in range(0, len(cases), per_connection):
            part = cases[first:first + per_connection]
            sock = keyless(context, target.address)
            end = b"end-%d-%d" % (n, first)
            for frames, _, counter in part:
                sock.send_multipart(frames)
                expected[counter] += 1
            sock.send_multipart(barrier(end))
            expected["malformed"] += 1
            assert answered(answers_until_err(sock, end)) == {frames[-4]: status for frames, status, _ in part
                                                              if status}
            sock.close(linger=0)  # (the next may get its descriptor: it must inherit nothing from it)
        if n % 5 == 0:
            spent.append(spend_the_budget(n))
            expected["forged"] += REFUSED_BUDGET
            closed["connections_closed_refused"] += 1
        if n == 0:  # 1 MiB where a marker and an id go (reflection and log amplification)
            huge = [([b"BRS9" + b"\xff" * MIB, envelope.REQ, b"huge-marker", b"{}", b"{}", bytes(32)], 505),
                    ([envelope.MARKER, envelope.REQ, b"i" * MIB, b"{}", b"{}", bytes(32)], None)]
            for frames, _ in huge:  # without the key: over UNSIGNED_MAX_MESSAGE, the connection is closed unread
                sock = keyless(context, target.address)
                sock.send_multipart(frames)
                wait_until(lambda: stats_of(probe)["connections_closed_oversized"]
                           > before["connections_closed_oversized"] + closed["connections_closed_oversized"],
                           "a 1 MiB message to close its connection")
                closed["connections_closed_oversized"] += 1
                expected["oversized"] += 1
                assert not sock.poll(0)
                sock.close(linger=0)
            for frames, _ in huge:  # a key holder's: read, and answered in a few bytes
                holder.send_multipart(frames)
                expected["malformed"] += 1
            assert answered(answers_until_pong(holder)) == {b"huge-marker": 505}
        if n % 10 == 0:
            zmtp_noise(target.address)

    def spend_the_budget(n: int) -> int:
        """A connection without the key that sends REFUSED_BUDGET forged requests: the first ones are answered
        (ERR 401), the last closes it unanswered. Returns how many answers it got."""
        sock = keyless(context, target.address)
        ids = [b"over-%d-%d" % (n, k) for k in range(REFUSED_BUDGET)]
        forged = [envelope.build_request(FORGER, msg_id, ServiceRequest(path="/echo"), now_ms(), "forger", k + 1)
                  for k, msg_id in enumerate(ids)]
        for frames in forged[:-1]:
            sock.send_multipart(frames)
        got = [envelope.parse_envelope(receive(sock)) for _ in forged[:-1]]
        assert answered(got) == {msg_id: 401 for msg_id in ids[:-1]}
        sock.send_multipart(forged[-1])
        wait_until(lambda: stats_of(probe)["connections_closed_refused"] - before["connections_closed_refused"]
                   > closed["connections_closed_refused"], "the last refusal to close the connection")
        assert not sock.poll(100), "a connection without the key was answered past its budget"
        sock.close(linger=0)
        return len(got)

    rounds = attack(caller, one_round, max_rounds=500, min_rounds=20)
    counters = stats_of(probe) - before
    assert {key: counters[key] for key in ("malformed", "forged", "oversized")} == {
        key: expected[key] for key in ("malformed", "forged", "oversized")}
    assert counters["errors"] == 0  # (a failure inside the transport, which no input may cause)
    assert closures(counters) == dict(closed)  # (neither the caller nor the key holder: they signed)
    assert counters["connections_closed"] == sum(closed.values())
    assert spent == [KEYLESS_ANSWERS] * len(spent)
    text = finish(target, caller)
    report("garbage", rounds=rounds, messages=sum(expected.values()), connections_closed=dict(closed),
           answers_per_connection_past_the_budget=spent[0], log_bytes=len(text.encode()))


def test_a_plain_tcp_peer_taken_for_zmtp_1_0_is_refused_like_any_other(target: Target, caller: Caller,
                                                                      context: Context, probe: Socket) -> None:
    # A TCP peer whose first byte is not 0xFF is a ZMTP 1.0 peer to libzmq: no handshake, and its messages
    # carry no metadata, so no descriptor (ZMQ_SRCFD fails with EINVAL; Channel.source is -1). Its messages
    # are refused one by one all the same, and reading goes on (it used to stop at 'receiving failed').
    raw = dealer(context, target.address)
    answers_until_pong(raw)
    before = stats_of(probe)
    zero = bytes(32)

    def one_round(n: int) -> None:
        with gsocket.create_connection(tcp_address(target.address), timeout=WAIT) as sock:
            sock.sendall(zmtp10([b"peer-%d" % n], [b"BRS2", envelope.REQ, b"old-%d" % n, b"{}", b"{}", zero],
                                [b"noise"]))
        raw.send_multipart([b"BRS2", envelope.REQ, b"v2-%d" % n, b"{}", b"{}", zero])
        assert answered(answers_until_pong(raw)) == {b"v2-%d" % n: 505}

    rounds = attack(caller, one_round, max_rounds=200)
    wait_until(lambda: stats_of(probe)["malformed"] - before["malformed"] >= 3 * rounds,
               "the ZMTP 1.0 peers' messages to be read")
    assert stats_of(probe)["malformed"] - before["malformed"] == 3 * rounds
    text = finish(target, caller)
    assert "receiving failed" not in text


# -- message size: many frames, huge frames --------------------------------------------------------------

def test_oversized_messages_are_dropped_and_memory_stays_bounded(target: Target, caller: Caller,
                                                                 context: Context, probe: Socket) -> None:
    # libzmq delivers a message only whole, so the service holds at least one 40 MiB message as it arrives,
    # and copies the first 11 frames (those it reads before refusing it) into Python: 51 MiB. Two at once,
    # one read while the next arrives, is 102 MiB; the allocator's slack is within the extra frames'
    # share that is never copied. Hence a peak of baseline + 100 MiB, for 200 MiB sent in the first round;
    # after, the allocator may keep what one message and its copies took (51 MiB): baseline + 64 MiB.
    raw = dealer(context, target.address)
    answers_until_pong(raw)
    base = target.rss_mib()
    before = stats_of(probe)
    many = [b"r" * MIB] * 40 + [b"BRS9", envelope.REQ, b"many", b"{}", b"{}", bytes(32)]
    sent = 0

    def one_round(n: int) -> None:
        nonlocal sent
        for _ in range(5 if n == 0 else 1):
            raw.send_multipart(many, copy=False)
            sent += 1
        raw.send_multipart([b"BRS9" + b"\xff" * MIB, envelope.REQ, b"big", b"{}", b"{}", bytes(32)])
        raw.send_multipart([envelope.MARKER, envelope.REQ, b"i" * MIB, b"{}", b"{}", bytes(32)])
        assert answered(answers_until_pong(raw, timeout=PATIENT)) == {b"big": 505}  # the rest: unanswered

    rounds = attack(caller, one_round, max_rounds=20)
    counters = stats_of(probe) - before
    assert counters["malformed"] == sent + 2 * rounds
    peak, after = target.peak_mib() - base, target.rss_mib() - base
    raw.close(linger=0)
    text = finish(target, caller)
    report("40-frame messages", sent_mib=sent * 40, baseline_mib=base, peak_growth_mib=peak,
           after_growth_mib=after, log_bytes=len(text.encode()))
    assert peak < 100
    assert after < 64


@pytest.mark.parametrize("connections", [1, pytest.param(24, marks=pytest.mark.xfail(strict=True, reason=(
    "the bound holds per connection only: libzmq assembles each connection's message whole (up to "
    "ZMQ_MAXMSGSIZE, 16 MiB) before the service can see its size and close that connection, so 24 keyless "
    "connections sending one forged 15 MiB request each at once make it hold them together. Measured: peak "
    "+206..280 MiB over a 41 MiB baseline (back to +1 MiB after); the total grows with the connections, up "
    "to max_connections x 16 MiB. Nothing above libzmq can refuse the bytes earlier: CURVE (no message at all "
    "from a peer without a listed key) or a smaller max_message_size are the remedies (docs/security.md §3)")))],
    ids=["one connection", "24 connections at once"])
def test_forged_requests_with_huge_bodies_hold_bounded_memory(target: Target, caller: Caller, context: Context,
                                                              probe: Socket, connections: int) -> None:
    # 24 forged 15 MiB requests from a peer without the key. A connection that never signed is closed at its
    # first message over UNSIGNED_MAX_MESSAGE (64 KiB), before its MAC is computed; what it sent after is lost
    # with it, but for what libzmq had read meanwhile: it reads on (~1.5 MiB/ms here) while the service
    # wakes up to the first message. Those are still read, their connection no longer tracked, and their MAC
    # computed (answered into the void, counted `forged`), one at a time. Measured, for one connection: 0 to
    # 3 messages behind the first, peak +39 MiB with none and 15 MiB more for each (+84 MiB with 3); so a
    # bound of 128 MiB allows 5, a reaction ~50 ms slow. This is a bound in time, not in bytes: it holds as
    # long as the service reads its socket within tens of milliseconds. After, the allocator may keep what
    # those took: under 64 MiB (measured +0..11).
    base = target.rss_mib()
    before = stats_of(probe)
    heavy = envelope.build_request(FORGER, b"heavy", ServiceRequest(path="/echo", arguments={"x": "y" * (15 * MIB)}),
                                   now_ms(), "forger", 1)
    assert sum(map(len, heavy)) > UNSIGNED_MAX_MESSAGE
    attackers = [keyless(context, target.address) for _ in range(connections)]
    for number in range(24):
        attackers[number % connections].send_multipart(heavy, copy=False)
    wait_until(lambda: stats_of(probe)["connections_closed_oversized"] - before["connections_closed_oversized"]
               >= connections, "every attacking connection to be closed", timeout=PATIENT)
    caller.wait_for(CALLS_DURING)
    counters = stats_of(probe) - before
    peak, after = target.peak_mib() - base, target.rss_mib() - base
    report(f"forged 15 MiB requests on {connections} connections", sent_mib=24 * 15, baseline_mib=base,
           peak_growth_mib=peak, after_growth_mib=after, closed_oversized=counters["connections_closed_oversized"],
           read_after_closing=counters["forged"])
    assert (counters["oversized"], counters["connections_closed_oversized"]) == (connections, connections)
    assert counters["forged"] <= 24 - connections
    for sock in attackers:
        assert not sock.poll(0)  # (nothing answered: closed unread)
        sock.close(linger=0)
    finish(target, caller)
    assert peak < 128, f"peak {peak:.0f} MiB over the baseline"
    assert after < 64, f"{after:.0f} MiB over the baseline after the attack"


# -- replay: captured from the wire, played again ---------------------------------------------------------

class Tap:
    """A ZeroMQ device between a client and the service that keeps a copy of every message the client sends:
    what an observer on the path captures. The service sees one more routing frame, as through any device."""

    def __init__(self, context: Context, address: str) -> None:
        self.front = context.socket(zmq.ROUTER)
        self.back = context.socket(zmq.DEALER)
        for sock in (self.front, self.back):
            sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self.front.bind_to_random_port('tcp://127.0.0.1')}"
        self.back.connect(address)
        self.captured: list[list[bytes]] = []  # the envelopes the client sent, in order
        self._greenlets = [gevent.spawn(self._up), gevent.spawn(self._down)]

    def _up(self) -> None:
        while True:
            frames = self.front.recv_multipart()
            self.captured.append(frames[-envelope.FRAMES:])
            self.back.send_multipart(frames)

    def _down(self) -> None:
        while True:
            self.front.send_multipart(self.back.recv_multipart())

    def close(self) -> None:
        gevent.killall(self._greenlets)
        self.front.close(linger=0)
        self.back.close(linger=0)


def replay(sock: Socket, messages: list[list[bytes]]) -> dict[bytes, int]:
    """Send `messages` again on `sock`; the ERRs they got, by id (a replayed PING gets none: it is dropped)."""
    for frames in messages:
        sock.send_multipart(frames)
    return answered(answers_until_pong(sock))


@pytest.mark.parametrize("target_args", [[str(REMEMBERED)]], ids=[f"remembering {REMEMBERED}"])
def test_captured_requests_and_pings_are_refused_from_other_connections_even_after_a_flood(
        target: Target, caller: Caller, context: Context, probe: Socket) -> None:
    # The target's replay guards remember REMEMBERED sessions and PINGs instead of 100,000, so that a flood
    # of fresh sessions overflows them in a few thousand messages; the logic is the same.
    tap = Tap(context, target.address)
    tapped = ServiceClient(tap.address, None, PASSPHRASE, timeout=PATIENT, heartbeat=60)
    for number in range(10):
        assert tapped.call("/echo", arguments={"RETURN_DATA": number}).body == {"RETURN_DATA": number}
    for _ in range(3):
        tapped.ping()
    tapped.close()
    tap.close()
    # Every one of these was answered, so the service has seen each (heartbeats may still be on their way).
    captured = [frames for frames in tap.captured if frames[1] in (envelope.REQ, envelope.PING)
                and not frames[2].startswith(b"hb-")]
    assert Counter(frames[1] for frames in captured) == {envelope.REQ: 10, envelope.PING: 3}
    # A replayed REQ is refused with ERR 401; a replayed PING is dropped unanswered (counted `replayed`): an
    # ERR would make a 0.4 client that sent the same bytes twice take the worker for refusing it.
    every_request = {frames[2]: 401 for frames in captured if frames[1] == envelope.REQ}
    before = stats_of(probe)
    # (13 refused messages each, under the budget of a connection that never signed; the PING that ends
    # `replay` signs it. Replays earn no credit: a connection that sent only those stays unsigned.)
    for sock in (dealer(context, target.address) for _ in range(3)):
        assert replay(sock, captured) == every_request

    flooder = dealer(context, target.address)
    sessions = 0

    def flood(n: int) -> None:  # fresh sessions and PINGs, honest clocks, by a key holder
        nonlocal sessions
        for _ in range(250):
            sessions += 1
            request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": sessions})
            flooder.send_multipart(envelope.build_request(SIGNER, b"s%d" % sessions, request, now_ms(),
                                                          f"fresh-{sessions}", 1))
            flooder.send_multipart(envelope.build_ping(SIGNER, b"p%d" % sessions, now_ms()))
        kinds = Counter(env.kind for env in answers_until_pong(flooder))
        assert kinds == {envelope.REP: 250, envelope.PONG: 250}

    rounds = attack(caller, flood, max_rounds=400)
    while sessions < 2 * REMEMBERED:
        flood(rounds)
        rounds += 1
    for sock in (dealer(context, target.address), flooder):
        assert replay(sock, captured) == every_request
    counters = stats_of(probe) - before
    assert (counters["forged"], counters["replayed"]) == (5 * 10, 5 * 3)
    assert counters["served"] >= sessions
    assert counters["connections_closed"] == 0
    finish(target, caller)
    report("replay", captured=len(captured), fresh_sessions=sessions, requests_refused=counters["forged"],
           pings_dropped=counters["replayed"])


class Flooder:
    """A key holder flooding fresh sessions (a REQ each) and PINGs, stamped `ahead` ms ahead of the clock, in
    rounds of 250 of each; a round ends with a request of a session the service knows, once answered."""

    def __init__(self, context: Context, address: str, ahead: int) -> None:
        self.sock = dealer(context, address)
        answers_until_pong(self.sock)  # (signed, as a client does on connecting)
        self.ahead = ahead
        self.rounds = 0
        self.sessions = 0

    def round(self) -> None:
        for _ in range(250):
            self.sessions += 1
            number = self.sessions
            self.sock.send_multipart(envelope.build_request(SIGNER, b"s%d" % number, ServiceRequest(path="/echo"),
                                                            now_ms() + self.ahead, f"ahead-{number}", 1))
            self.sock.send_multipart(envelope.build_ping(SIGNER, b"p%d" % number, now_ms() + self.ahead))
            if number % 25 == 0:
                # (Building messages takes this process's CPU: the clients here must go on reading their
                # sockets meanwhile, as clients in processes of their own would.)
                gevent.sleep(0)
        self.rounds += 1
        mark = b"mark-%d" % self.rounds
        self.sock.send_multipart(envelope.build_request(SIGNER, mark, ServiceRequest(path="/echo"),
                                                        now_ms() + self.ahead, "flooder", self.rounds))
        while envelope.parse_envelope(receive(self.sock)).msg_id != mark:
            pass


def newcomers_call(address: str, count: int) -> list[str]:
    """`count` clients started one after the other, each making one call and waiting for a PONG (its PINGs are
    answered, not dropped as replays), until one of them fails: the failure, or nothing."""
    for number in range(count):
        gevent.sleep(0.005)  # (its first request stamped in a later millisecond than the last one's: see below)
        with ServiceClient(address, None, PASSPHRASE, timeout=PATIENT) as newcomer:
            try:
                reply = newcomer.call("/echo", arguments={"RETURN_DATA": number})
            except ServiceError as err:
                return [f"newcomer {number}: {type(err).__name__}: {err}"]
            assert reply.body == {"RETURN_DATA": number}
            try:  # (a PING every 0.5 s: four chances)
                wait_until(lambda: bool(newcomer.endpoints[0].reported), "a PONG", timeout=2)
            except AssertionError:
                return [f"newcomer {number}: no PONG in 2 s"]
    return []


@pytest.mark.parametrize("target_args", [[str(REMEMBERED)]], ids=[f"remembering {REMEMBERED}"])
def test_a_key_holder_with_a_clock_ahead_cannot_lock_other_callers_out(target: Target, caller: Caller,
                                                                       context: Context) -> None:
    # Sessions and PINGs stamped 20 s ahead (within the 30 s window: each one is fresh) fill the replay guards
    # twice over, so that every entry they forget is stamped in the future; the guards' watermark is clamped
    # to the present (signing.py), so once the flood is over new clients get in at once (it used to be
    # refused for up to 30 s). The caller calls between rounds, so its session stays remembered (one forgotten
    # during a flood stamped ahead, and a new session racing another one: see the next test).
    flooder = Flooder(context, target.address, ahead=20_000)

    def flood(n: int) -> None:
        flooder.round()
        caller.wait_for(1)

    rounds = attack(caller, flood, max_rounds=400, min_rounds=2 * REMEMBERED // 250)
    failures = newcomers_call(target.address, 3)
    caller.wait_for(CALLS_DURING)
    assert failures == []
    finish(target, caller)
    report("clock ahead, after the flood", rounds=rounds, sessions=flooder.sessions, legit_calls=caller.ok)


@pytest.mark.parametrize("target_args", [[str(REMEMBERED)]], ids=[f"remembering {REMEMBERED}"])
# (With a flood stamped 20 s ahead, each session the full guard forgot set the watermark to the present and
# kept every new caller out; a forgotten session now counts no later than when its messages arrived.)
@pytest.mark.parametrize("ahead", [0, 20_000], ids=["honest clock", "clock 20 s ahead"])
def test_new_callers_get_in_while_a_key_holder_floods_fresh_sessions(target: Target, caller: Caller,
                                                                     context: Context, ahead: int) -> None:
    flooder = Flooder(context, target.address, ahead)
    stop = False

    def flood() -> None:
        while not stop:
            flooder.round()

    flooding = gevent.spawn(flood)
    try:
        wait_until(lambda: flooder.rounds >= 2 * REMEMBERED // 250, "the replay guards to be filled twice over",
                   timeout=PATIENT)
        failures = newcomers_call(target.address, 3)
        if not failures:
            caller.wait_for(CALLS_DURING)
    finally:
        stop = True
        flooding.join(timeout=PATIENT)
    report(f"new callers during a flood {ahead} ms ahead", rounds=flooder.rounds, sessions=flooder.sessions,
           newcomer_failure=failures, caller_failures=len(caller.failures), legit_calls=caller.ok)
    assert failures == []
    # After it: a new client, and right after it the first request of a client on a host whose clock is 5 ms
    # behind (NTP keeps hosts within a few ms, not within one).
    assert newcomers_call(target.address, 1) == []
    behind = dealer(context, target.address)
    request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": "behind"})
    behind.send_multipart(envelope.build_request(SIGNER, b"behind", request, now_ms() - 5, "host-behind", 1))
    reply = envelope.parse_envelope(receive(behind))
    assert (reply.kind, reply.msg_id) == (envelope.REP, b"behind"), reply
    finish(target, caller)


# -- resources: a key holder that reads nothing; idle connections --------------------------------------

def silent_flood(context: Context, target: Target, count: int) -> Socket:
    """A key holder that sends `count` requests (1 KB answers each) and never reads: RCVHWM 1."""
    silent = dealer(context, target.address, RCVHWM=1)
    for seq in range(1, count + 1):
        request = ServiceRequest(path="/echo", arguments={"RETURN_DATA": "x" * 1000})
        silent.send_multipart(envelope.build_request(SIGNER, b"%d" % seq, request, now_ms(), "silent", seq))
        if seq % 500 == 0:
            gevent.sleep(0)
    return silent


def test_a_key_holder_that_reads_nothing_fails_no_other_call(target: Target, caller: Caller,
                                                             context: Context, probe: Socket) -> None:
    # Bound: the service queues up to 10,000 answers (ZMQ_SNDHWM) of ~1.1 KB to the silent caller, then up to
    # BACKLOG_MAX (1,000) more in its backlog (brubeckservice/backlog.py) for SEND_PATIENCE (5 s), the rest
    # dropped (`undeliverable`); the kernel's socket buffers hold a few MiB more: 64 MiB over the baseline.
    base, base_fds = target.rss_mib(), target.fds()
    started = time.monotonic()
    silent = silent_flood(context, target, 15_000)
    wait_until(lambda: stats_of(probe)["undeliverable"] > 0, "an answer to the silent caller to be dropped",
               timeout=PATIENT)
    caller.wait_for(CALLS_DURING)
    peak = target.peak_mib() - base
    gap = caller.longest_gap(started)
    silent.close(linger=0)
    wait_until(lambda: target.fds() <= base_fds, "the silent caller's connection to be closed")
    after = target.rss_mib() - base
    counters = stats_of(probe)
    finish(target, caller)
    report("silent key holder", sent=15_000, undeliverable=counters["undeliverable"], peak_growth_mib=peak,
           after_growth_mib=after, longest_gap_s=gap, legit_calls=caller.ok)
    assert peak < 64
    assert after < 64


def test_a_key_holder_that_reads_nothing_delays_other_calls_by_less_than_their_timeout(
        target: Target, context: Context, probe: Socket) -> None:
    # Its replies wait in its own backlog, not in the workers that made them (backlog.py): the other callers'
    # calls wait only for the service to get through the silent caller's requests queued ahead of them
    # (measured: 0.5-0.7 s at most), each within a 2.5 s timeout; it used to stall them all for
    # SEND_PATIENCE (5 s), every worker waiting for room in the silent caller's queue.
    with ServiceClient(target.address, None, PASSPHRASE, timeout=2.5) as client:
        impatient = Caller(client, "impatient")
        impatient.wait_for(5)
        started = time.monotonic()
        silent = silent_flood(context, target, 15_000)
        wait_until(lambda: stats_of(probe)["undeliverable"] > 0, "an answer to the silent caller to be dropped",
                   timeout=PATIENT)
        impatient.wait_for(CALLS_DURING)
        gap = impatient.longest_gap(started)
        silent.close(linger=0)
        counters = stats_of(probe)
        finish(target, impatient, close_abort_known=True)
    report("silent key holder, impatient caller", undeliverable=counters["undeliverable"], longest_gap_s=gap,
           legit_calls=impatient.ok)


def fd_headroom() -> int:
    """Descriptors this process may still open."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft - len(os.listdir("/proc/self/fd"))


def test_idle_unauthenticated_connections_keep_no_new_client_out(target: Target, caller: Caller,
                                                                 context: Context) -> None:
    # 300 ZeroMQ peers that complete the handshake and send nothing, 50 TCP connections that send nothing
    # and 50 that stop after the ZMTP greeting. Each costs this process ~2 descriptors (a ZeroMQ socket has a
    # mailbox too): stay well under its limit. The service holds one descriptor each while they stay, and
    # must be back to its baseline (+2: a log file's reopening, a timer) once they left.
    zmq_peers, tcp_peers = 300, 50
    assert fd_headroom() > 2 * zmq_peers + 2 * tcp_peers + 200, "raise RLIMIT_NOFILE to run this test"
    assert fd_headroom() > 0
    base, base_fds = target.rss_mib(), target.fds()
    idle = [dealer(context, target.address) for _ in range(zmq_peers)]
    plain = [gsocket.create_connection(tcp_address(target.address), timeout=WAIT) for _ in range(2 * tcp_peers)]
    for sock in plain[:tcp_peers]:
        sock.sendall(ZMTP_GREETING)
    total = zmq_peers + 2 * tcp_peers
    wait_until(lambda: target.fds() >= base_fds + total, "the service to accept every connection", timeout=PATIENT)
    held = target.fds() - base_fds
    with ServiceClient(target.address, None, PASSPHRASE, timeout=PATIENT) as newcomer:
        assert newcomer.call("/echo", arguments={"RETURN_DATA": "new"}).body == {"RETURN_DATA": "new"}
    caller.wait_for(CALLS_DURING)
    peak = target.peak_mib() - base
    for sock in idle:
        sock.close(linger=0)
    for tcp in plain:
        tcp.close()
    wait_until(lambda: target.fds() <= base_fds + 2, "the service to close the idle connections", timeout=PATIENT)
    after = target.rss_mib() - base
    finish(target, caller)
    report("idle connections", connections=total, fds_held=held, peak_growth_mib=peak, after_growth_mib=after)
    assert peak < 64
    assert after < 32


def test_idle_connections_up_to_the_descriptor_limit_keep_no_new_client_out(tmp_path: Path,
                                                                           context: Context) -> None:
    # A service started with 128 descriptors, and 150 idle peers without the key: they would use up every
    # descriptor, and libzmq could accept no new client. The service keeps at most the limit less 100
    # connections (admission.FD_RESERVE): 28. Past that a newcomer makes room by closing the oldest connection
    # that never signed and is older than ROOM_GRACE (1 s); when none is that old (the idle peers all arrive
    # within a second), the newcomer is closed itself. So only peers without the key crowd each other out: a
    # client arriving later gets in, and the probe, which signed, is never a candidate.
    target = Target(tmp_path / "service.log", fd_limit=128)
    try:
        probe = dealer(context, target.address)
        stats_of(probe)
        # (No reconnecting: a peer the service closed stays away, so the counts are exact. Peers that come
        # back at once, as ZeroMQ sockets do, only take each other's places.)
        idle: list[Socket] = []
        for _ in range(3):  # (in bursts of 50: 150 SYNs at once overflow the listen backlog, ZMQ_BACKLOG 100,
            idle += [keyless(context, target.address) for _ in range(50)]  # and the kernel retries in 1, 3, 7 s)
            gevent.sleep(0.05)
        # 151 connections (the probe's too) for 28 slots: 123 closed, as newcomers or to make room.
        wait_until(lambda: sum(closures(stats_of(probe)).values()) >= 151 - 28,
                   "every idle peer to be accepted, and those past the limit closed", timeout=PATIENT)
        crowded = closures(stats_of(probe))
        assert set(crowded) <= {"connections_closed_over_max_connections", "connections_closed_made_room"}
        assert sum(crowded.values()) == 151 - 28
        gevent.sleep(ROOM_GRACE)  # (the 27 idle peers left are old enough to make room now)
        with ServiceClient(target.address, None, PASSPHRASE, timeout=PATIENT, connect_timeout=2) as newcomer:
            assert newcomer.call("/echo", arguments={"RETURN_DATA": "new"}).body == {"RETURN_DATA": "new"}
            counters = stats_of(probe)  # (the probe signed: it was never a candidate)
            held = target.fds()
        closed = closures(counters)
        assert closed.get("connections_closed_made_room", 0) == crowded.get("connections_closed_made_room", 0) + 1
        assert sum(closed.values()) == 151 - 28 + 1
        for sock in idle:
            sock.close(linger=0)
        assert target.alive()
        report("descriptor limit 128", idle_peers=len(idle), fds_held=held, closed=closed)
    finally:
        assert target.stop() == 0
    assert_log_bounded(target.log_text())


def test_a_new_connection_on_a_reused_descriptor_inherits_nothing_from_the_last_one(target: Target,
                                                                                   context: Context,
                                                                                   probe: Socket) -> None:
    # Admission keys its records by descriptor. Each trial: a keyless peer spends 15 refusals (one short of the
    # budget) and leaves while the service's loop computes the MAC of a 15 MiB request (~50 ms), so that
    # libzmq closes it and accepts the next connection, on the same descriptor, before the service has read
    # the monitor events saying so. The next connection is a keyless peer sending one refused message (it
    # must not be charged to the one that left: no closure counted), or a key holder that PINGs and then sends
    # a 100 KiB request (it signed: it must be answered). Until Admission read the waiting events before
    # looking a message's connection up (Admission._record), the old record was charged and credited instead:
    # an incident in about 60% of these trials (closures counted that never happened; key holders cut off
    # as 'oversized'), and without the busy loop 4-12 of 300 keyless connections miscounted, 1-5 of 300 key
    # holders cut off.
    holder = dealer(context, target.address)
    answers_until_pong(holder)
    heavy = envelope.build_request(FORGER, b"heavy", ServiceRequest(path="/echo", arguments={"x": "y" * (15 * MIB)}),
                                   now_ms(), "forger", 1)
    before = stats_of(probe)
    incidents: list[str] = []
    trials = 0
    while trials < 20 and not incidents:
        leaving = keyless(context, target.address)
        for number in range(KEYLESS_ANSWERS - 1):
            leaving.send_multipart(barrier(b"leaving-%d-%d" % (trials, number)))
        leaving.send_multipart(barrier(b"left-%d" % trials))
        answers_until_err(leaving, b"left-%d" % trials)
        holder.send_multipart(heavy, copy=False)
        gevent.sleep(0.01 + 0.005 * (trials % 4))  # (the 15 MiB arrive in ~10 ms; then its MAC is computed)
        leaving.close(linger=0)
        if trials % 2 == 0:
            newcomer = keyless(context, target.address)
            newcomer.send_multipart(barrier(b"newcomer-%d" % trials))
            answers_until_err(newcomer, b"newcomer-%d" % trials)
            if stats_of(probe)["connections_closed"] > before["connections_closed"]:
                incidents.append(f"trial {trials}: a connection counted as closed, though none spent its budget")
        else:
            newcomer = dealer(context, target.address, RECONNECT_IVL=-1)
            answers_until_pong(newcomer)
            big = ServiceRequest(path="/echo", arguments={"RETURN_DATA": "x" * (100 * KIB)})
            newcomer.send_multipart(envelope.build_request(SIGNER, b"big", big, now_ms(), f"newcomer-{trials}", 1))
            if not newcomer.poll(1000):
                incidents.append(f"trial {trials}: a key holder's 100 KiB request unanswered, its connection "
                                 f"closed: {closures(stats_of(probe) - before)}")
        newcomer.close(linger=0)
        assert answered(answers_until_pong(holder, timeout=PATIENT)) == {b"heavy": 401}
        trials += 1
    report("reused descriptors", trials=trials, incidents=incidents)
    assert incidents == []
    assert target.alive()


# -- routing ids chosen by peers -------------------------------------------------------------------------

def test_peers_with_routing_ids_of_their_choosing_disturb_no_caller(target: Target, caller: Caller,
                                                                    context: Context) -> None:
    # The client sets no routing id (the service's ROUTER makes one up that never crosses the wire), so no
    # squatter can take its place; and a squatter only ever hears answers to its own messages. Ids of the
    # ROUTER's own shape (a zero byte and four more) are among them: libzmq lets a peer choose one.
    # Squatters have no key, so the service closes a connection of theirs at its REFUSED_BUDGET-th refused
    # message: each round has squatters of its own (6 messages each), with ids of its own (libzmq ignores a
    # connection whose id is still held by one it has not finished closing).
    client_session = caller.client.session
    squatters_per_round = 0

    def one_round(n: int) -> None:
        nonlocal squatters_per_round
        ids = [os.urandom(size) for size in (1, 16, 64, 255)] + [b"\0" + os.urandom(4) for _ in range(8)]
        ids += [f"{client_session}-{4 * n + index}".encode() for index in range(4)]  # the ids clients used to set
        ids += [b"twice-%d" % n]
        squatters = [dealer(context, target.address, routing_id=routing_id) for routing_id in ids]
        squatters_per_round = len(squatters)
        for index, sock in enumerate(squatters):
            for msg_id in (b"%d-%d-%d" % (n, index, k) for k in range(3)):
                sock.send_multipart([b"BRS2", envelope.REQ, msg_id, b"{}", b"{}", bytes(32)])
                sock.send_multipart(envelope.build_request(FORGER, msg_id, ServiceRequest(path="/echo"), now_ms(),
                                                           client_session, n + 1))
        twin = None
        for index, sock in enumerate(squatters):
            got: list[envelope.Envelope] = []
            while len(got) < 6:  # keyless: they cannot PING; their own ERRs say everything was read
                assert sock.poll(int(WAIT * 1000)), f"squatter {ids[index]!r} got {len(got)} of its 6 answers"
                got.append(envelope.parse_envelope(sock.recv_multipart()))
            assert sorted((env.msg_id, error_status(env)) for env in got) == sorted(
                (b"%d-%d-%d" % (n, index, k), status) for k in range(3) for status in (401, 505))
            if index == len(squatters) - 1:  # the first with its id is in: a second with the same id
                twin = context.socket(zmq.DEALER)
                twin.setsockopt(zmq.LINGER, 0)
                twin.setsockopt(zmq.ROUTING_ID, ids[index])
                handshakes = twin.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
                twin.connect(target.address)
                assert handshakes.poll(int(WAIT * 1000)), "the twin did not connect"
                twin.disable_monitor()
                handshakes.close(linger=0)
        assert twin is not None
        sock = squatters[-1]  # the first keeps the id: it hears its answers, the twin nothing
        sock.send_multipart([b"BRS2", envelope.REQ, b"twice-%d" % n, b"{}", b"{}", bytes(32)])
        assert [env.msg_id for env in [envelope.parse_envelope(receive(sock))]] == [b"twice-%d" % n]
        assert not twin.poll(0)
        for sock in [*squatters, twin]:
            sock.close(linger=0)

    rounds = attack(caller, one_round, max_rounds=200, min_rounds=3)
    with ServiceClient(target.address, None, PASSPHRASE, timeout=PATIENT) as newcomer:  # a client restarted
        assert newcomer.call("/echo", arguments={"RETURN_DATA": "new"}).body == {"RETURN_DATA": "new"}
    finish(target, caller)
    report("routing-id squatters", squatters_per_round=squatters_per_round, rounds=rounds)


# -- deep nesting ------------------------------------------------------------------------------------------

def test_deep_nesting_anywhere_is_a_clean_error_and_the_caller_is_answered(target: Target, caller: Caller,
                                                                          context: Context,
                                                                          probe: Socket) -> None:
    # A key holder's connection, signed by a PING first as a client's is: it may send 200 KB messages, and
    # its refused ones never close it. Without the key, a message over UNSIGNED_MAX_MESSAGE (64 KiB) closes
    # the connection unread, so a keyless peer only gets nesting under that size looked at: 30,000 deep.
    raw = dealer(context, target.address)
    answers_until_pong(raw)
    before = stats_of(probe)
    slowest = 0.0

    def one_round(n: int) -> None:
        nonlocal slowest
        ts = b'{"ts":%d,"sid":"deep","seq":%d,"path":"/echo"' % (now_ms(), n + 1)
        requests = {  # signed: their sender holds the key, so they get a signed REP 400
            b"body-%d" % n: signed(envelope.REQ, b"body-%d" % n, ts + b"}", b'{"a":' + deep() + b"}"),
            b"header-%d" % n: signed(envelope.REQ, b"header-%d" % n, ts + b',"zz":' + deep() + b"}", b"{}"),
            b"headers-%d" % n: signed(envelope.REQ, b"headers-%d" % n, ts + b',"headers":' + deep() + b"}", b"{}"),
        }
        errors = {
            b"ping-%d" % n: signed(envelope.PING, b"ping-%d" % n, b'{"ts":%d}' % now_ms(), deep()),
            b"forged-%d" % n: [*envelope.build_request(FORGER, b"forged-%d" % n, ServiceRequest(path="/echo"),
                                                       now_ms(), "deep", n + 1)[:4], deep(), bytes(32)],
        }
        started = time.monotonic()
        for frames in [*requests.values(), *errors.values()]:
            raw.send_multipart(frames)
        answers = answers_until_pong(raw)
        slowest = max(slowest, time.monotonic() - started)
        replies = [env for env in answers if env.kind == envelope.REP]
        assert sorted(env.msg_id for env in replies) == sorted(requests)
        for env in replies:
            reply = envelope.parse_reply(env, SIGNER, now_ms(), 30_000)
            assert (reply.status_code, reply.body["error"]["type"]) == (400, "ProtocolError")
            assert size(env) < KIB
        assert answered([env for env in answers if env.kind != envelope.REP]) == {
            msg_id: 401 for msg_id in errors}  # a PING whose body does not parse is refused with 401
        sock = keyless(context, target.address)
        shallow = deep(30_000)
        keyless_errors = {
            b"kl-header-%d" % n: [envelope.MARKER, envelope.REQ, b"kl-header-%d" % n, shallow, b"{}", bytes(32)],
            b"kl-ping-%d" % n: [envelope.MARKER, envelope.PING, b"kl-ping-%d" % n, b'{"ts":%d}' % now_ms(), shallow,
                                bytes(32)],
        }
        assert all(sum(map(len, frames)) <= UNSIGNED_MAX_MESSAGE for frames in keyless_errors.values())
        for frames in keyless_errors.values():
            sock.send_multipart(frames)
        sock.send_multipart(barrier(b"kl-end-%d" % n))
        assert answered(answers_until_err(sock, b"kl-end-%d" % n)) == {msg_id: 401 for msg_id in keyless_errors}
        sock.close(linger=0)
        if n == 0:  # without the key, 200 KB: closed unread
            sock = keyless(context, target.address)
            sock.send_multipart(errors[b"forged-%d" % n])
            wait_until(lambda: stats_of(probe)["connections_closed_oversized"] > before["connections_closed_oversized"],
                       "the connection to be closed")
            assert not sock.poll(0)
            sock.close(linger=0)

    rounds = attack(caller, one_round, max_rounds=100)
    counters = stats_of(probe) - before
    assert counters["malformed"] == 3 * rounds + rounds  # (and the keyless barriers)
    assert counters["forged"] == 2 * rounds + 2 * rounds
    assert (counters["oversized"], counters["connections_closed"]) == (1, 1)
    finish(target, caller)
    report("deep nesting", rounds=rounds, depth=DEEP, slowest_round_ms=slowest * 1000)


# -- the client's sockets: a bad worker among good ones ---------------------------------------------------

class BadWorker:
    """A ROUTER of this process on one address of a client's service. `answer(envelope)` gives what to send
    back to each message the client sends (None: nothing); `send` sends anything to its latest connection."""

    def __init__(self, context: Context, answer: Callable[[envelope.Envelope], list[bytes] | None]) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # wait for room rather than drop past the HWM
        self.address = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.answer = answer
        self.routing: bytes | None = None
        self.greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            routing, *frames = self.router.recv_multipart()
            self.routing = routing
            try:
                env = envelope.parse_envelope(frames)
            except ProtocolError:
                continue
            answer = self.answer(env)
            if answer is not None:
                self.send(answer)

    def send(self, frames: list[bytes]) -> None:
        if self.routing is None:
            return
        try:
            self.router.send_multipart([self.routing, *frames])
        except zmq.ZMQError as err:  # EHOSTUNREACH: that connection is gone; the next message names the new one
            assert err.errno == zmq.EHOSTUNREACH, err

    def close(self) -> None:
        self.greenlet.kill()
        self.router.close(linger=0)


def in_flight(client: ServiceClient, worker: Worker) -> list[bytes]:
    """The ids of the client's calls in flight on `worker`: what the strongest attacker would know."""
    return [msg_id for msg_id, call in client.calls if call.worker is worker]


def assert_client_intact(client: ServiceClient, good: Worker, *callers: Caller) -> None:
    for legit in callers:
        assert legit.failures == [], legit.failures[:5]
        assert not legit.greenlet.dead, legit.greenlet.exception
    assert good.state == "alive", good.reason
    assert not client._reaper.dead, client._reaper.exception
    assert not any(g.dead for g in client.pool._greenlets)


def assert_client_log_bounded(caplog: pytest.LogCaptureFixture, limit: int) -> None:
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("brubeckservice")]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert len(lines) <= limit, lines[:40]
    assert all(len(line) < KIB for line in lines), max(lines, key=len)[:300]


def test_a_keyless_worker_cannot_fail_calls_served_by_another(target: Target, context: Context,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # The bad worker refuses every message (ERR 401), so the client marks it refused and sends it no calls;
    # then it sends ERR, unsigned and forged answers naming the ids of the calls in flight on the good
    # worker, and ids it guesses, with garbage between.
    bad = BadWorker(context, lambda env: envelope.build_error(env.msg_id, 401, "who are you?", now_ms()))
    client = ServiceClient([target.address, bad.address], None, PASSPHRASE, timeout=PATIENT)
    good_worker, bad_worker = client.endpoints
    wait_until(lambda: (good_worker.state, bad_worker.state) == ("alive", "refused"), "the workers' states")
    callers = [Caller(client, f"legit{n}") for n in range(3)]
    for legit in callers:
        legit.wait_for(5)
    before = Counter(client.stats)
    named = 0

    def one_round(n: int) -> None:
        nonlocal named
        known = in_flight(client, good_worker)
        named += len(known)
        for msg_id in [*known, *(os.urandom(8).hex().encode() for _ in range(10))]:
            for status in (401, 400, 505, 503):
                bad.send(envelope.build_error(msg_id, status, "no", now_ms()))
            reply = envelope.build_reply(FORGER, msg_id, ServiceResponse(status_code=200, body="stolen"), now_ms())
            bad.send([*reply[:5], b""])  # unsigned
            bad.send(reply)  # forged
            bad.send(envelope.build_pong(FORGER, msg_id, now_ms(), {"capacity": 1000}))
        bad.send(envelope.build_drain(FORGER, b"drain", now_ms(), {"grace": 1}))
        bad.send([os.urandom(64)])
        bad.send([envelope.MARKER, envelope.REP, b"cut"])
        bad.send([b"BRS2", envelope.REP, b"v2", b"{}", b"{}", bytes(32)])
        bad.send([envelope.MARKER, envelope.ERR, b"i" * 65, b"{}", b"", b""])
        bad.send([envelope.MARKER, b"WHAT", b"kind", b"{}", b"", b""])
        gevent.sleep(0.005)

    try:
        with caplog.at_level(logging.WARNING):
            rounds = attack(callers[0], one_round, max_rounds=2000)
            while named < 5 and rounds < 20_000:  # (until it has named live calls: a slow machine has fewer)
                one_round(rounds)
                rounds += 1
            assert named >= 5
            wait_until(lambda: client.stats["malformed"] - before["malformed"] >= 5 * rounds,
                       "the client to read the last round")
        counters = Counter(client.stats) - before
        assert_client_intact(client, good_worker, *callers)
        assert bad_worker.state == "refused"
        # Per id, 4 ERRs and 2 REPs dropped as late (before any signature work) and a PONG as forged; a forged
        # DRAIN per round.
        assert counters["late"] >= 6 * (10 * rounds + named), (counters, rounds, named)
        assert counters["forged"] == 10 * rounds + named + rounds
        assert_client_log_bounded(caplog, limit=40)
        report("keyless worker", rounds=rounds, ids_of_live_calls_named=named, late=counters["late"],
               forged=counters["forged"], malformed=counters["malformed"],
               legit_calls=sum(legit.ok for legit in callers))
    finally:
        for legit in callers:
            legit.stop()
        client.close(timeout=0)
        bad.close()


def test_a_broken_worker_holding_the_key_cannot_fail_calls_served_by_another(
        target: Target, context: Context, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # It reports no room (capacity 0), so it gets no calls, and lists 5,000 sibling workers; then it sends
    # signed REPs and PONGs naming the calls in flight on the good worker, 20,000 replies nobody asked for,
    # deep-nested bodies, a DRAIN, and at last a message over the client's max_reply_size (its connection is
    # dropped, and made again RECONNECT_CHECK later: see test_a_reply_over_max_reply_size_fails_only_its_own_call).
    listed = [f"ipc://{tmp_path}/w{n}" for n in range(5000)]

    def pong(env: envelope.Envelope) -> list[bytes] | None:
        if env.kind == envelope.PING:
            return envelope.build_pong(SIGNER, env.msg_id, now_ms(), {"capacity": 0, "workers": listed})
        return None

    bad = BadWorker(context, pong)
    client = ServiceClient([target.address, bad.address], None, PASSPHRASE, timeout=PATIENT, max_reply_size=MIB)
    good_worker, bad_worker = client.endpoints
    wait_until(lambda: good_worker.state == "alive" and bad_worker.capacity == 0
               and len(client.endpoints) == 2 + MAX_LISTED, "the bad worker's report and siblings")
    callers = [Caller(client, f"legit{n}") for n in range(3)]
    for legit in callers:
        legit.wait_for(5)
    before = Counter(client.stats)
    unsolicited = 0
    named = 0

    def one_round(n: int) -> None:
        nonlocal unsolicited, named
        known = in_flight(client, good_worker)
        named += len(known)
        for msg_id in known:
            bad.send(envelope.build_reply(SIGNER, msg_id, ServiceResponse(status_code=200, body="stolen"), now_ms()))
            bad.send(envelope.build_pong(SIGNER, msg_id, now_ms(), {"capacity": 0}))
            bad.send(signed(envelope.REP, msg_id, b'{"ts":%d,"status":200}' % now_ms(), deep()))
        for _ in range(min(500, 20_000 - unsolicited)):
            unsolicited += 1
            bad.send(envelope.build_reply(SIGNER, b"stray-%d" % unsolicited, ServiceResponse(status_code=200),
                                          now_ms()))
        bad.send(signed(envelope.PONG, unique("deep"), b'{"ts":%d}' % now_ms(), deep()))
        if n == 2:
            bad.send(envelope.build_drain(SIGNER, b"drain-1", now_ms(), {"grace": 1, "inflight": 0}))
        gevent.sleep(0.005)

    try:
        with caplog.at_level(logging.WARNING):
            rounds = attack(callers[0], one_round, max_rounds=2000)
            while unsolicited < 20_000 or (named < 5 and rounds < 2000):
                one_round(rounds)
                rounds += 1
            assert named >= 5
            # Per id, a signed REP and a deep one are dropped as late (before their signature is checked); the
            # PONG naming it completes nothing; each deep PONG is dropped as forged.
            # (The deep PONG ends each round: once the last is counted, the client has read everything.)
            wait_until(lambda: client.stats["forged"] - before["forged"] >= rounds, "the client to read the last round",
                       timeout=PATIENT)
            counters = Counter(client.stats) - before
            assert (counters["late"], counters["forged"], counters["drains"]) == (20_000 + 2 * named, rounds, 1)
            bad.send([b"x" * (2 * MIB)])  # over max_reply_size: libzmq drops that connection
            wait_until(lambda: bad_worker.state == "dead", "the client to drop the connection to the bad worker")
            attack(callers[0], lambda n: gevent.sleep(0.01), max_rounds=2000)  # the good worker serves on
        assert_client_intact(client, good_worker, *callers)
        assert len(client.endpoints) == 2 + MAX_LISTED
        assert_client_log_bounded(caplog, limit=40)
        report("broken key-holding worker", rounds=rounds, unsolicited=unsolicited, ids_of_live_calls_named=named,
               late=counters["late"], forged=counters["forged"], legit_calls=sum(legit.ok for legit in callers))
    finally:
        for legit in callers:
            legit.stop()
        client.close(timeout=0)
        bad.close()


def test_a_deeply_nested_reply_fails_its_own_call_at_once_with_a_protocol_error(context: Context) -> None:
    # A worker holding the key whose every reply is a body nested 100,000 deep: each call fails at once with
    # the typed error (not at its timeout), and the client goes on.
    def answer(env: envelope.Envelope) -> list[bytes] | None:
        if env.kind == envelope.PING:
            return envelope.build_pong(SIGNER, env.msg_id, now_ms(), {"capacity": 100})
        if env.kind == envelope.REQ:
            return signed(envelope.REP, env.msg_id, b'{"ts":%d,"status":200}' % now_ms(), deep())
        return None

    bad = BadWorker(context, answer)
    try:
        with ServiceClient(bad.address, None, PASSPHRASE, timeout=PATIENT) as client:
            for _ in range(20):
                with pytest.raises(ProtocolError, match="does not parse"):
                    client.call("/echo")
            assert client.stats["malformed"] == 20
            assert not client._reaper.dead
            assert client.endpoints[0].state == "alive"
    finally:
        bad.close()


def test_a_reply_over_max_reply_size_fails_only_its_own_call(target: Target) -> None:
    # libzmq takes a frame over ZMQ_MAXMSGSIZE for a protocol error and gives that connection up for good;
    # the pool connects again itself RECONNECT_CHECK (2 s) later (pool.py, EVENT_DISCONNECTED).
    with ServiceClient(target.address, None, PASSPHRASE, timeout=PATIENT, max_reply_size=64 * KIB) as client:
        with pytest.raises(ServiceUnavailable, match="lost while /echo was in flight"):
            client.call("/echo", arguments={"RETURN_DATA": "x" * (100 * KIB)})
        lost = time.monotonic()
        wait_until(lambda: client.endpoints[0].state == "alive", "the connection to be made again",
                   timeout=RECONNECT_CHECK + 2)
        report("reply over max_reply_size", reconnected_after_s=time.monotonic() - lost)
        assert client.call("/echo", arguments={"RETURN_DATA": "small"}).body == {"RETURN_DATA": "small"}
    assert target.alive()
