"""brubeck.transports.channel: event-driven ZeroMQ I/O in the gevent hub, and recycled worker greenlets.

Real ZeroMQ sockets on inproc (and one ipc pair); every wait has a timeout.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import gevent
import pytest
import zmq
from gevent.event import Event
from gevent.queue import Queue

from brubeck.transports.channel import Channel, Pump, Workers

WAIT = 5.0
_names = itertools.count()


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(context: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
    address = f"inproc://channel-{next(_names)}"
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind(address)
    b.connect(address)
    return a, b


def test_messages_sent_before_delivery_starts_are_all_delivered_whole_and_in_order(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    sender, receiver = pair(context)
    for n in range(50):
        sender.send_multipart([b"part-1", b"%d" % n, b"last"])
    received: Queue = Queue()
    channel = Channel(receiver, received.put)  # the FD's edge for these is long gone
    got = [received.get(timeout=WAIT) for _ in range(50)]
    assert got == [[b"part-1", b"%d" % n, b"last"] for n in range(50)]
    channel.close(linger=0)


def test_send_and_deliver_between_two_channels(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    a, b = pair(context)
    echoed: Queue = Queue()
    ponger = Channel(b)
    ponger.start(lambda frames: ponger.send([b"re:" + frames[0]]))
    pinger = Channel(a, echoed.put)
    for n in range(300):  # many messages each way: no edge may be lost between sends and reads
        pinger.send([b"%d" % n])
    assert [echoed.get(timeout=WAIT) for _ in range(300)] == [[b"re:%d" % n] for n in range(300)]
    pinger.close(linger=0)
    ponger.close(linger=0)


def test_a_failing_deliver_does_not_stop_delivery(context: zmq.Context[zmq.Socket[bytes]],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    sender, receiver = pair(context)
    good: Queue = Queue()

    def deliver(frames: list[bytes]) -> None:
        if frames == [b"bad"]:
            raise ValueError("hostile input")
        good.put(frames)

    channel = Channel(receiver, deliver)
    for frame in (b"bad", b"ok-1", b"bad", b"ok-2"):
        sender.send(frame)
    assert [good.get(timeout=WAIT), good.get(timeout=WAIT)] == [[b"ok-1"], [b"ok-2"]]
    assert "failed to handle a message" in caplog.text
    channel.close(linger=0)


def test_send_never_waits_it_raises_again_when_there_is_no_connection(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IMMEDIATE, 1)
    dealer.connect("ipc:///nonexistent-dir-for-brubeck-tests/nobody")
    channel = Channel(dealer)
    with pytest.raises(zmq.Again):
        channel.send([b"anyone?"])
    channel.close(linger=0)


def test_pause_holds_messages_in_zeromq_and_resume_delivers_them(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    sender, receiver = pair(context)
    received: Queue = Queue()
    channel = Channel(receiver, received.put)
    channel.pause()
    sender.send(b"while paused")
    with pytest.raises(gevent.queue.Empty):
        received.get(timeout=0.2)  # nothing may arrive while paused: waiting is the assertion
    channel.resume()
    assert received.get(timeout=WAIT) == [b"while paused"]
    channel.close(linger=0)


def test_a_blocked_worker_holds_up_no_other_and_finished_workers_are_reused() -> None:
    release = Event()
    done: Queue = Queue()

    def handle(item: str) -> None:
        if item == "slow":
            release.wait(timeout=WAIT)
        done.put(item)

    workers: Workers[str] = Workers(handle)
    assert workers.dispatch("slow")
    for n in range(20):
        assert workers.dispatch(f"fast-{n}")
        assert done.get(timeout=WAIT) == f"fast-{n}"
    # One greenlet is parked in the slow item; the fast ones took turns on one more, recycled each time.
    assert (workers.count, workers.busy) == (2, 1)
    release.set()
    assert done.get(timeout=WAIT) == "slow"
    workers.close()


def test_workers_refuse_past_their_limit() -> None:
    release = Event()
    workers: Workers[int] = Workers(lambda _: release.wait(timeout=WAIT), limit=2)
    assert workers.dispatch(1) and workers.dispatch(2)
    assert not workers.dispatch(3)
    release.set()
    workers.close()


def test_a_pump_with_a_limit_handles_that_many_at_once_and_everything_in_order(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    sender, receiver = pair(context)
    release = Event()
    started: Queue = Queue()
    finished: list[bytes] = []
    all_finished = Event()
    most = [0]

    def handle(item: bytes) -> None:
        started.put(item)
        most[0] = max(most[0], pump.workers.busy)
        release.wait(timeout=WAIT)
        finished.append(item)
        if len(finished) == 6:
            all_finished.set()

    pump: Pump[bytes] = Pump(Channel(receiver), lambda frames: frames[0], handle, limit=2)
    for n in range(6):
        sender.send(b"%d" % n)
    assert [started.get(timeout=WAIT), started.get(timeout=WAIT)] == [b"0", b"1"]
    with pytest.raises(gevent.queue.Empty):
        started.get(timeout=0.2)  # the limit holds the rest back: waiting is the assertion
    release.set()
    assert [started.get(timeout=WAIT) for _ in range(4)] == [b"2", b"3", b"4", b"5"]
    assert all_finished.wait(timeout=WAIT)
    assert sorted(finished) == [b"%d" % n for n in range(6)]
    assert most[0] == 2
    pump.close()
    pump.channel.close(linger=0)


def test_a_message_of_too_many_frames_is_cut_short_and_the_next_one_arrives_whole(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    sender, receiver = pair(context)
    sender.send_multipart([b"%d" % n for n in range(100)])
    sender.send_multipart([b"next", b"one"])
    received: Queue = Queue()
    channel = Channel(receiver, received.put, max_frames=10)
    assert received.get(timeout=WAIT) == [b"%d" % n for n in range(11)]  # the first 11 kept: "too many"
    assert received.get(timeout=WAIT) == [b"next", b"one"]  # the other 89 were read and thrown away
    channel.close(linger=0)


def test_the_source_of_each_message_is_its_connections_descriptor(tmp_path: object) -> None:
    import socket
    import time

    import zmq.green as gzmq

    context: zmq.Context[zmq.Socket[bytes]] = gzmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    sources: Queue = Queue()
    channel = Channel(router, lambda frames: sources.put((frames[-1], channel.source)), track_source=True)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(address)
    raw = socket.create_connection(address[len("tcp://"):].rsplit(":", 1))  # type: ignore[arg-type]
    try:
        dealer.send(b"zmtp 3")
        frame, fd = sources.get(timeout=WAIT)
        assert frame == b"zmtp 3" and fd > 2
        # A peer whose first byte is not 0xFF speaks ZMTP 1.0 to libzmq: its messages have no metadata, and
        # asking for ZMQ_SRCFD raised EINVAL, which stopped the channel. Now the source is -1.
        # ZMTP 1.0 framing: per frame, its length + 1, a flags byte (1: more follow), the body; the first
        # message is the peer's identity.
        raw.sendall(b"\x05\x00peer" + b"\x03\x01ab" + b"\x06\x00world")
        frame, fd = sources.get(timeout=WAIT)
        assert (frame, fd) == (b"world", -1)
        dealer.send(b"still read")
        deadline = time.monotonic() + WAIT
        while frame != b"still read" and time.monotonic() < deadline:
            frame, fd = sources.get(timeout=WAIT)
        assert frame == b"still read" and fd > 2
    finally:
        raw.close()
        dealer.close(linger=0)
        channel.close(linger=0)
        context.destroy(linger=0)


def test_send_soon_sends_with_the_turn_of_the_loop_and_keeps_order_with_send(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    a, b = pair(context)
    received: Queue = Queue()
    receiver = Channel(b, received.put)
    sender = Channel(a)
    sender.send_soon([b"1"])
    sender.send_soon([b"2", b"two"])
    assert b.poll(0) == 0  # not yet: queued for this turn of the loop
    sender.send([b"3"])  # what was queued goes first
    sender.send_soon([b"4"])
    got = [received.get(timeout=WAIT) for _ in range(4)]  # (waiting lets the hub flush)
    assert got == [[b"1"], [b"2", b"two"], [b"3"], [b"4"]]
    sender.close(linger=0)
    receiver.close(linger=0)


def test_a_message_send_soon_cannot_send_goes_to_its_unsent_callback_with_the_error(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    dealer = context.socket(zmq.DEALER)  # no peer: every send is EAGAIN
    channel = Channel(dealer)
    unsent: Queue = Queue()
    channel.send_soon([b"lost"], lambda frames, error: unsent.put((list(frames), type(error))))
    channel.send_soon([b"dropped"])  # without a callback: logged, and the next still goes to its own
    channel.send_soon([b"also"], lambda frames, error: unsent.put((list(frames), type(error))))
    assert unsent.get(timeout=WAIT) == ([b"lost"], zmq.Again)
    assert unsent.get(timeout=WAIT) == ([b"also"], zmq.Again)
    channel.close(linger=0)


def test_close_sends_what_send_soon_queued(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    a, b = pair(context)
    sender = Channel(a)
    sender.send_soon([b"last words"])
    sender.close(linger=1000)
    assert b.poll(int(WAIT * 1000)) and b.recv_multipart() == [b"last words"]


def test_send_soon_sends_at_once_when_its_outbox_is_full(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    from brubeck.transports.channel import OUTBOX_MAX

    a, b = pair(context)
    sender = Channel(a)
    for n in range(OUTBOX_MAX):
        sender.send_soon([b"%d" % n])
    # No turn of the loop has passed: what went is what a full outbox sent by itself.
    got = []
    while b.poll(0):
        got.append(b.recv_multipart())
    assert got == [[b"%d" % n] for n in range(OUTBOX_MAX)]
    sender.close(linger=0)


def test_asking_whether_a_message_waits_between_drains_does_not_lose_it(
        context: zmq.Context[zmq.Socket[bytes]]) -> None:
    # Asking (ZMQ_EVENTS) processes libzmq's commands and may consume the FD's edge for a message that
    # just arrived: the channel must still deliver it (the service's sweeper asks between drains).
    a, b = pair(context)
    received: Queue = Queue()
    receiver = Channel(b, received.put)
    assert received.empty() and not receiver.readable()
    gevent.sleep(0)  # (the first drain, scheduled by start, has run: nothing is due)
    for n in range(3):
        a.send(b"%d" % n)  # (inproc: its command is in the receiver's mailbox now)
        assert receiver.readable()  # ... and processed here, in this greenlet, between drains
        assert received.get(timeout=WAIT) == [b"%d" % n]
    receiver.close(linger=0)
