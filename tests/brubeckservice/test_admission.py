"""Admission: a service keeps at most so many connections, and none that never signs or goes silent.

A bare ROUTER on tcp 127.0.0.1 (any free port) stands for the service: messages reading b"signed" are taken
for correctly signed ones (the service calls `signed(fd)` after its signature check). Peers are real
DEALERs, whose own monitors show the service closing their connections.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import zmq.green as zmq
from zmq.utils.monitor import recv_monitor_message

from brubeck.transports.channel import Channel
from brubeckservice.admission import REFUSED_BUDGET, UNSIGNED_MAX_MESSAGE, Admission, default_max_connections
from tests.brubeckservice.helpers import WAIT, wait_until

log = logging.getLogger("tests.admission")


class Service:
    def __init__(self, context: Any, **options: Any) -> None:
        self.router = context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.address = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats: Counter[str] = Counter()
        self.received: list[bytes] = []
        self.admission = Admission(self.router, self.stats, log, **options)
        self.channel = Channel(self.router, self._on_message, track_source=True)

    def _on_message(self, frames: list[bytes]) -> None:
        fd = self.channel.source
        if not self.admission.admits(fd, sum(map(len, frames))):
            return
        self.received.append(frames[-1])
        if frames[-1] in (b"signed", b"y" * (UNSIGNED_MAX_MESSAGE + 1)):
            self.admission.signed(fd)
        else:
            self.admission.refused(fd)

    def close(self) -> None:
        self.admission.close()
        self.channel.close(linger=0)


class Peer:
    def __init__(self, context: Any, address: str) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RECONNECT_IVL, 60_000)  # cut off stays cut off, for the test to see
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.socket.connect(address)
        assert self.next_event() == zmq.EVENT_CONNECTED

    def next_event(self) -> int:
        assert self.monitor.poll(int(WAIT * 1000)), "no connection event"
        return int(recv_monitor_message(self.monitor)["event"])

    def cut_off(self) -> bool:
        return bool(self.monitor.poll(0)) and int(recv_monitor_message(self.monitor)["event"]) == zmq.EVENT_DISCONNECTED

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


@pytest.fixture
def context() -> Iterator[Any]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_a_connection_that_never_signs_is_closed_after_auth_timeout(context: Any) -> None:
    service = Service(context, auth_timeout=0.3)
    silent, talking = Peer(context, service.address), Peer(context, service.address)
    try:
        talking.socket.send(b"signed")
        wait_until(lambda: service.received == [b"signed"], "the signed message")
        assert silent.next_event() == zmq.EVENT_DISCONNECTED
        assert service.stats["connections_closed_unauthenticated"] == 1
        assert not talking.cut_off()
        assert len(service.admission) == 1
    finally:
        for peer in (silent, talking):
            peer.close()
        service.close()


def test_a_connection_that_never_signed_is_closed_at_its_refused_budget(context: Any) -> None:
    service = Service(context, auth_timeout=60)
    noisy = Peer(context, service.address)
    try:
        for _ in range(REFUSED_BUDGET):
            noisy.socket.send(b"garbage")
        assert noisy.next_event() == zmq.EVENT_DISCONNECTED
        assert service.stats["connections_closed_refused"] == 1
        assert len(service.received) == REFUSED_BUDGET
    finally:
        noisy.close()
        service.close()


def test_a_large_message_before_any_signed_one_closes_its_connection(context: Any) -> None:
    service = Service(context, auth_timeout=60)
    big, signed = Peer(context, service.address), Peer(context, service.address)
    try:
        signed.socket.send(b"signed")
        wait_until(lambda: service.received == [b"signed"], "the signed message")
        big.socket.send(b"x" * (UNSIGNED_MAX_MESSAGE + 1))
        signed.socket.send(b"y" * (UNSIGNED_MAX_MESSAGE + 1))  # a key holder's: fine
        assert big.next_event() == zmq.EVENT_DISCONNECTED
        assert service.stats["connections_closed_oversized"] == 1
        wait_until(lambda: len(service.received) == 2, "the key holder's large message")  # (not the other)
        assert service.received[1] == b"y" * (UNSIGNED_MAX_MESSAGE + 1) and not signed.cut_off()
    finally:
        big.close()
        signed.close()
        service.close()


def test_nobody_is_judged_while_messages_wait_unread(context: Any) -> None:
    # Closing a connection whose signed PING waits unread (the service saturated, its socket paused) would
    # close a genuine client.
    behind = [True]
    service = Service(context, auth_timeout=0.2, backlog=lambda: behind[0])
    peer = Peer(context, service.address)
    try:
        wait_until(lambda: len(service.admission) == 1, "the connection")
        for connection in service.admission.connections.values():
            connection.accepted_at -= 1.0  # past auth_timeout: only the unread messages spare it
        service.admission.sweep()
        assert not peer.cut_off() and len(service.admission) == 1
        behind[0] = False
        assert peer.next_event() == zmq.EVENT_DISCONNECTED
    finally:
        peer.close()
        service.close()


def test_a_descriptor_reused_by_another_socket_is_not_shut_down(context: Any) -> None:
    import os
    import socket

    service = Service(context, auth_timeout=60)
    peer = Peer(context, service.address)
    other_a, other_b = socket.socketpair()
    try:
        wait_until(lambda: len(service.admission) == 1, "the connection")
        (fd, connection), = service.admission.connections.items()
        # As if libzmq had closed the connection and the number now named another socket: dup2 puts one
        # there, and the admission's record no longer matches its inode.
        saved = os.dup(fd)
        os.dup2(other_a.fileno(), fd)
        try:
            service.admission.sweep()  # (nothing due)
            service.admission._close(fd, connection, "test", "closing %d", fd)
            other_b.sendall(b"still open")
            assert other_a.recv(16) == b"still open"
        finally:
            os.dup2(saved, fd)
            os.close(saved)
    finally:
        other_a.close()
        other_b.close()
        peer.close()
        service.close()


def test_a_connection_silent_for_idle_timeout_is_closed(context: Any) -> None:
    service = Service(context, auth_timeout=60, idle_timeout=0.3)
    peer = Peer(context, service.address)
    try:
        peer.socket.send(b"signed")
        assert peer.next_event() == zmq.EVENT_DISCONNECTED
        assert service.stats["connections_closed_idle"] == 1
    finally:
        peer.close()
        service.close()


def test_at_the_limit_a_newcomer_pushes_out_the_oldest_that_never_signed(context: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("brubeckservice.admission.ROOM_GRACE", 0.0)
    service = Service(context, max_connections=3, auth_timeout=60)
    signed = Peer(context, service.address)
    peers: list[Peer] = []
    try:
        signed.socket.send(b"signed")
        wait_until(lambda: service.received == [b"signed"], "the signed message")
        peers = [Peer(context, service.address) for _ in range(2)]
        wait_until(lambda: len(service.admission) == 3, "three connections")
        peers.append(Peer(context, service.address))  # the fourth
        assert peers[0].next_event() == zmq.EVENT_DISCONNECTED  # the oldest unsigned one went
        assert service.stats["connections_closed_made_room"] == 1
        wait_until(lambda: len(service.admission) == 3, "three connections again")
        assert not signed.cut_off() and not peers[1].cut_off() and not peers[2].cut_off()
    finally:
        for peer in (signed, *peers):
            peer.close()
        service.close()


def test_when_every_connection_signed_the_newcomer_is_closed(context: Any) -> None:
    service = Service(context, max_connections=2, auth_timeout=60)
    members = [Peer(context, service.address) for _ in range(2)]
    late = None
    try:
        for member in members:
            member.socket.send(b"signed")
        wait_until(lambda: len(service.received) == 2, "both signed messages")
        late = Peer(context, service.address)
        assert late.next_event() == zmq.EVENT_DISCONNECTED
        assert service.stats["connections_closed_over_max_connections"] == 1
        assert not any(member.cut_off() for member in members)
    finally:
        for peer in (*members, *([late] if late else [])):
            peer.close()
        service.close()


def test_many_keyless_connections_stay_within_the_limit(context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("brubeckservice.admission.ROOM_GRACE", 0.0)
    service = Service(context, max_connections=20, auth_timeout=60)
    crowd: list[Peer] = []
    try:
        for _ in range(100):
            crowd.append(Peer(context, service.address))
            assert len(service.admission) <= 20
        wait_until(lambda: service.stats["connections_closed_made_room"] == 80, "80 to make room for the others")
        assert len(service.admission) == 20
        member = Peer(context, service.address)  # a genuine client still gets in, and stays
        crowd.append(member)
        member.socket.send(b"signed")
        wait_until(lambda: service.received[-1:] == [b"signed"], "its signed message")
        for _ in range(30):
            crowd.append(Peer(context, service.address))
        assert not member.cut_off()
    finally:
        for peer in crowd:
            peer.close()
        service.close()


def test_the_default_limit_leaves_descriptors_to_the_rest_of_the_process() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(16, min(100_000, soft - 100))
