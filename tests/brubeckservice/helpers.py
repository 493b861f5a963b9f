"""Service handlers, a fake service and a waiting helper shared by the brubeckservice tests.

The handlers are what users write (2013 style: set a status, add to the payload, name the METHOD the
reply is routed to, return `self.render()`). Handlers that must report to the test or wait for it do so
through a `Gate` passed in the app's settings, never through module globals.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import zmq.green as zmq
from gevent.event import Event
from gevent.queue import Queue

from brubeckservice import envelope
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import Signer

PASSPHRASE = "my_shared_secret"
WAIT = 5.0  # the longest any test waits for something that should happen at once


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll `predicate`, yielding to other greenlets, until it holds; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        gevent.sleep(0.005)


def read_line(process: subprocess.Popen[Any], timeout: float) -> str:
    """The next line `process` writes to its stdout pipe (opened with ``stdout=subprocess.PIPE``).

    Reads a byte at a time straight from the pipe, so nothing after the line is taken from the next call.
    Raises AssertionError after `timeout` s without a whole line, or when the pipe closes first.
    """
    assert process.stdout is not None, "start the process with stdout=subprocess.PIPE"
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"no line from pid {process.pid} within {timeout}s (so far {line!r})")
        byte = os.read(fd, 1)
        if not byte:
            raise AssertionError(f"pid {process.pid} closed stdout (exit {process.poll()}) after {line!r}")
        line += byte
    return line.decode().rstrip("\n")


class Gate:
    """Lets a test see requests arrive at a handler (`arrived`) and decide when they finish (`release`)."""

    def __init__(self) -> None:
        self.arrived: Any = Queue()  # of ServiceRequest
        self.release = Event()

    def next_arrival(self, timeout: float = WAIT) -> ServiceRequest:
        request: ServiceRequest = self.arrived.get(timeout=timeout)
        return request


def _echo(handler: ServiceMessageHandler) -> ServiceResponse:
    handler.set_status(200, "Took a while, but I am back.")
    handler.add_to_payload("RETURN_DATA", handler.message.get_argument("RETURN_DATA", "NO DATA"))
    handler.add_to_payload("conn_id", handler.message.conn_id)
    handler.headers = {"METHOD": "response"}
    return handler.render()


class EchoHandler(ServiceMessageHandler):
    """The 2013 demo's slow service without the sleep: echoes RETURN_DATA and the caller's conn_id."""

    def request(self) -> ServiceResponse:
        return _echo(self)


class BlockingHandler(ServiceMessageHandler):
    """Reports each request to the app's `gate`, then answers like EchoHandler once the gate opens."""

    def request(self) -> ServiceResponse:
        gate: Gate = self.application.settings["gate"]
        gate.arrived.put(self.message)
        gate.release.wait()
        return _echo(self)


class FailingHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        raise ValueError("the handler broke")


class DeferredHandler(ServiceMessageHandler):
    """Answers nothing now: hands the request to the test, which replies later with connection.reply()."""

    def request(self) -> None:
        gate: Gate = self.application.settings["gate"]
        gate.arrived.put(self.message)


class NotRenderingHandler(ServiceMessageHandler):
    """A common mistake: returning the payload instead of `self.render()`."""

    def request(self) -> dict[str, Any]:
        return {"RETURN_DATA": "forgot to render"}


ROUTES: list[tuple[str, Any]] = [
    (r"^/echo", EchoHandler),
    (r"^/block", BlockingHandler),
    (r"^/fail", FailingHandler),
    (r"^/defer", DeferredHandler),
    (r"^/no-render", NotRenderingHandler),
]


class FakeService:
    """A bare ROUTER playing the service, with a real `ServiceClient` connected to it.

    The test reads what the client sent (`receive`) and answers anything it likes (`send`), valid or not.
    The client's heartbeats are slowed to one a minute; `receive` answers them (a worker with room for
    1,000 calls) and skips them, so a test sees the messages it is about.
    """

    def __init__(self) -> None:
        self.address = f"inproc://fake-service-{uuid.uuid4().hex}"
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind(self.address)
        self.signer = Signer(PASSPHRASE)
        self.client = ServiceClient(self.address, None, PASSPHRASE, context=self.context, heartbeat=60)

    def receive(self, timeout: float = WAIT) -> tuple[list[bytes], envelope.Envelope]:
        """The next message from the client but its heartbeats: (routing frames, envelope)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise AssertionError(f"the client sent nothing within {timeout}s")
            routing, frames = envelope.split_routing(self.router.recv_multipart())
            env = envelope.parse_envelope(frames)
            if not (env.kind == envelope.PING and env.msg_id.startswith(b"hb-")):
                return routing, env
            self.send(routing, envelope.build_pong(self.signer, env.msg_id, now_ms(), {"capacity": 1000}))

    def send(self, routing: list[bytes], frames: list[bytes]) -> None:
        self.router.send_multipart([*routing, *frames])

    def reply(self, routing: list[bytes], msg_id: bytes, response: ServiceResponse,
              signer: Signer | None = None) -> None:
        self.send(routing, envelope.build_reply(signer or self.signer, msg_id, response, now_ms()))

    def close(self) -> None:
        self.client.close(timeout=0)
        self.router.close(linger=0)
        self.context.destroy(linger=0)


def signed_request(signer: Signer, path: str = "/echo", *, msg_id: bytes = b"raw-1", ts: int | None = None,
                   arguments: dict[str, Any] | None = None) -> list[bytes]:
    """The six frames of a REQ as a hand-written client would send them (session "raw", number 1)."""
    request = ServiceRequest(path=path, arguments=arguments or {})
    return envelope.build_request(signer, msg_id, request, now_ms() if ts is None else ts, "raw", 1)


def receive(sock: zmq.Socket[bytes], timeout: float = WAIT) -> list[bytes]:
    """The next message on `sock`, or fail the test after `timeout` s."""
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"nothing received within {timeout}s")
    return sock.recv_multipart()


def assert_next_is_pong(sock: zmq.Socket[bytes], signer: Signer, msg_id: bytes = b"probe") -> None:
    """PING through `sock` and check the PONG is the first thing to come back.

    One connection keeps its order, so this proves that nothing was sent back before the PING was
    answered: the way to show that a message got no reply, without waiting an arbitrary time.
    """
    sock.send_multipart(envelope.build_ping(signer, msg_id, now_ms()))
    env = envelope.parse_envelope(receive(sock))
    assert (env.kind, env.msg_id) == (envelope.PONG, msg_id)
