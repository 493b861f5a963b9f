"""Fast message I/O on zmq.green sockets, and the receive loop every zmq transport shares.

zmq.green wraps every frame's send and recv in three Python layers (green -> sugar -> backend), and pyzmq's
constants are enum flags whose `&` and `|` run in Python; for a six-frame message that was most of the cost
of a call (measured: 56 us to send and receive six frames on inproc, 7 us through the backend directly).
libzmq delivers multipart messages atomically: once the first frame of a message is received the rest are
already here, and once the first frame is accepted for sending the rest will be. So only the first frame
ever needs to wait; these functions wait for it the green way and move every other frame through the
backend, with plain-int flags.

The socket's FD is edge-triggered: a backend call may consume the edge that announced a message. zmq.green
re-reads EVENTS after each of its own calls for that reason; we do the same, and when a message is
waiting we read EVENTS through the green socket, which wakes the greenlet blocked in its `recv`.

The receive loop (`lead`) runs each message in a greenlet of its own, so a slow handler holds up nothing,
while starting it as soon as possible: the greenlet that receives the last waiting message hands receiving
to a fresh greenlet and handles that message itself (leader/follower); when messages arrive in a batch,
each gets a new greenlet, in order, so that one pass of the event loop starts them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import gevent
import zmq.green as zmq
from zmq.backend import Socket as BackendSocket

T = TypeVar("T")

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_backend_send = BackendSocket.send
_backend_recv = BackendSocket.recv
_backend_get = BackendSocket.get


class Channel:
    """A zmq.green socket with one reader greenlet and any number of senders, moving multipart messages.

    It knows whether its reader is blocked waiting, so a sender only pays for waking it when that matters.
    """

    __slots__ = ("reader_waiting", "socket")

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.socket = socket
        self.reader_waiting = False

    def readable(self) -> bool:
        events = cast(int, _backend_get(self.socket, _EVENTS))
        return bool(events & _POLLIN)

    def send(self, frames: Sequence[bytes]) -> None:
        """Queue a whole multipart message without waiting; raises zmq.Again when it cannot be queued now."""
        sock = self.socket
        last = len(frames) - 1
        try:
            for index in range(last):
                _backend_send(sock, frames[index], _SNDMORE_NOBLOCK)
            _backend_send(sock, frames[last], _NOBLOCK)
        finally:
            # Our backend call may have consumed the edge announcing a message to the blocked reader.
            if self.reader_waiting and self.readable():
                sock.get(zmq.EVENTS)  # the green getter wakes the greenlet waiting to read

    def recv(self) -> list[bytes]:
        """Receive one whole multipart message, waiting (this greenlet only) for its first frame.

        Call it from one greenlet only (the reader). It asks EVENTS itself before it waits, so nothing
        needs rearming after a read.
        """
        sock = self.socket
        # Asking EVENTS first avoids raising (and building) a zmq.Again for every empty read.
        if self.readable():
            frame = _backend_recv(sock, _NOBLOCK, False)
        else:
            self.reader_waiting = True
            try:
                frame = sock.recv(copy=False)
            finally:
                self.reader_waiting = False
        # Frames (copy=False) know whether more follow: no RCVMORE getsockopt per frame.
        frames = [frame.bytes]
        while frame.more:
            frame = _backend_recv(sock, _NOBLOCK, False)
            frames.append(frame.bytes)
        return frames


def lead(channel: Channel, accept: Callable[[list[bytes]], T | None], handle: Callable[[T], None],
         spawn: Callable[..., Any], closed: Callable[[], bool], log: logging.Logger) -> None:
    """Receive on `channel` until a message is accepted, then hand receiving on and handle it here.

    `accept` turns frames into something to handle (or None when it dealt with them itself); `handle`
    must not raise. Returns when this greenlet stops receiving: it handed over, or `closed()` is true.
    """
    batch = False  # handed messages to greenlets since this greenlet last waited
    while not closed():
        try:
            frames = channel.recv()
        except zmq.ZMQError:
            if closed():
                return
            log.exception("receiving failed")
            gevent.sleep(0.1)  # a persistent socket error must not become a busy loop
            continue
        try:
            item = accept(frames)
        except Exception:  # nothing a peer sends may stop the loop
            log.exception("failed to accept a message")
            continue
        if item is None:
            continue
        if batch or channel.readable():
            # Greenlets start in the order they were spawned: spawning the rest of a batch too keeps
            # replies in arrival order (HTTP pipelining relies on it).
            batch = channel.readable()
            spawn(handle, item)
            continue
        spawn(lead, channel, accept, handle, spawn, closed, log)
        handle(item)
        return
