"""Where a call's CPU goes: each step of the library's hot paths timed in-process, `python -m bench.hotpath`.

Socket-free steps (envelope, signing, routing, handlers) run in a loop on prepared inputs; the zmq and
gevent primitives run on an ipc socket pair and the hub of this one process. Each figure is the best of
`--repeat` rounds (the least disturbed by other load on the machine), in microseconds per operation, next
to what the raw floors of `bench.servers` / `bench.clients` do for the same purpose. Steps that the
library under test no longer has are reported as n/a, so this runs against any revision.

Sums are indicative: in a live run the same steps also pay for libzmq's wake-ups between threads and
processes and for cache misses, which is why the bench's measured CPU per call is higher.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import msgspec
import zmq.green as zmq
from gevent.event import AsyncResult

from bench.payload import ECHO_PATH, PASSPHRASE, PAYLOAD, PAYLOAD_JSON, hello_body

Step = Callable[[], object]
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: A GET as wrk sends it, as Mongrel2 hands it to a handler (headers as Mongrel2 1.12.2 adds them).
WRK_HEADERS = {"PATH": "/", "x-forwarded-for": "127.0.0.1", "host": "127.0.0.1:6767", "METHOD": "GET",
               "VERSION": "HTTP/1.1", "URI": "/", "PATTERN": "/", "URL_SCHEME": "http", "REMOTE_ADDR": "127.0.0.1"}
SENDER = "54c6755b-9628-40dc-9a7d-5bc6e6a1f6f1"


def best_us(step: Step, number: int, repeat: int) -> float:
    """Best of `repeat` rounds of `number` calls, microseconds per call."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            step()
        best = min(best, time.perf_counter() - started)
    return best / number * 1e6


class Table:
    def __init__(self, number: int, repeat: int) -> None:
        self.number, self.repeat = number, repeat
        self.rows: list[tuple[str, str, float]] = []

    def time(self, section: str, name: str, make: Callable[[], Step], number: int | None = None) -> float:
        """Time the step `make()` returns; n/a (NaN) when the library has no such step."""
        try:
            step = make()
            value = best_us(step, number or self.number, self.repeat)
        except (AttributeError, ImportError, TypeError, KeyError) as err:
            print(f"  {name:<58} n/a ({type(err).__name__}: {err})"[:120])
            self.rows.append((section, name, float("nan")))
            return float("nan")
        print(f"  {name:<58} {value:8.2f} us")
        self.rows.append((section, name, value))
        return value


def _consume(items: list[Any], use: Callable[[Any], object]) -> Step:
    """A step using a fresh prepared item each time (for inputs that may be used once, like seq numbers)."""
    source: Iterator[Any] = iter(items)
    return lambda: use(next(source))


# -- the service call ---------------------------------------------------------------------------------------


def service_client(table: Table) -> None:
    from brubeckservice import envelope
    from brubeckservice.clock import now_ms
    from brubeckservice.correlation import Call, PendingCalls
    from brubeckservice.models import ServiceRequest
    from brubeckservice.signing import Signer

    section = "client"
    print("Service call, client side (ServiceClient.call / send)")
    signer = Signer(PASSPHRASE)
    request = ServiceRequest(path=ECHO_PATH, method="request", arguments=PAYLOAD)
    request.deadline = now_ms() + 30_000
    table.time(section, "ServiceRequest(...) built by call()", lambda: lambda: ServiceRequest(
        path=ECHO_PATH, method="request", arguments=PAYLOAD, headers={}, conn_id=""))
    table.time(section, "Call(...) + AsyncResult()", lambda: lambda: Call(ECHO_PATH, waiter=AsyncResult()))
    pending = PendingCalls()
    expiry = time.monotonic() + 30

    def register() -> None:
        msg_id = pending.new_id()
        pending.add(msg_id, Call(ECHO_PATH), expiry)
        pending.pop(msg_id)

    table.time(section, "PendingCalls new_id + add + pop", lambda: register)
    seq = itertools.count(1)
    table.time(section, "envelope.encode_request (JSON x2 + HMAC)", lambda: lambda: envelope.build_request(
        signer, b"0123abcd-1f", request, now_ms(), "0123456789abcdef", next(seq)))
    header = envelope.RequestHeader(ts=now_ms(), sid="0123456789abcdef", seq=1, path=ECHO_PATH,
                                    deadline=request.deadline)
    table.time(section, "  of which: RequestHeader + encode", lambda: lambda: _encode(envelope.RequestHeader(
        ts=1, sid="0123456789abcdef", seq=2, path=ECHO_PATH, method="request", headers={}, conn_id="",
        deadline=request.deadline)))
    table.time(section, "  of which: arguments encode", lambda: lambda: _encode(PAYLOAD))
    frames5 = [envelope.MARKER, envelope.REQ, b"0123abcd-1f", _encode(header), PAYLOAD_JSON]
    table.time(section, "  of which: Signer.sign (HMAC-SHA256)", lambda: lambda: signer.sign(frames5))
    response_frames = _reply_frames(signer)
    table.time(section, "envelope.parse (reply)", lambda: lambda: envelope.parse_envelope(response_frames))
    env = envelope.parse_envelope(response_frames)
    now = now_ms()
    table.time(section, "envelope.open_reply (HMAC verify + JSON x2)", lambda: lambda: envelope.parse_reply(
        env, signer, now, 30_000))
    table.time(section, "  of which: Signer.verify", lambda: lambda: signer.verify(env.signed_frames, env.mac))
    table.time(section, "now_ms() (called 3x per call)", lambda: now_ms)
    table.time(section, "gevent.Timeout(30) start + close (per call at 83ffdf8)", lambda: _timeout_step)


def _timeout_step() -> None:
    timeout = gevent.Timeout(30)
    timeout.start()
    timeout.close()


def _reply_frames(signer: Any) -> list[bytes]:
    from brubeckservice import envelope
    from brubeckservice.clock import now_ms
    from brubeckservice.models import ServiceResponse

    response = ServiceResponse(status_code=200, status_msg="OK", body=PAYLOAD, path=ECHO_PATH)
    return list(envelope.build_reply(signer, b"0123abcd-1f", response, now_ms()))


def service_server(table: Table) -> None:
    import logging

    from brubeck.application import Brubeck
    from brubeckservice import ServiceConnection, ServiceMessageHandler, ServiceResponse, envelope
    from brubeckservice.clock import now_ms
    from brubeckservice.models import ServiceRequest
    from brubeckservice.signing import ReplayGuard, Signer

    section = "service"
    print("Service call, service side (ServiceConnection + Brubeck.handle + ServiceMessageHandler)")
    signer = Signer(PASSPHRASE)
    count = table.number * table.repeat + 10
    base = ServiceRequest(path=ECHO_PATH, method="request", arguments=PAYLOAD, deadline=now_ms() + 600_000)
    now = now_ms()
    routing = [b"0123456789abcdef-0"]
    requests = [[*routing, *envelope.build_request(signer, b"0123abcd-%x" % i, base, now, "0123456789abcdef", i)]
                for i in range(1, count + 1)]
    table.time(section, "envelope.split_routing + parse", lambda: _consume(
        requests, lambda f: envelope.parse_envelope(envelope.split_routing(f)[1])))
    parsed = [envelope.parse_envelope(envelope.split_routing(f)[1]) for f in requests]
    guard = ReplayGuard()
    table.time(section, "envelope.open_request (verify, JSON x2, replay, struct)", lambda: _consume(
        parsed, lambda e: envelope.parse_request(e, signer, now, guard)))
    guard2 = ReplayGuard()
    seqs = iter(range(1, 10**9))
    table.time(section, "  of which: ReplayGuard.check", lambda: lambda: guard2.check("s", next(seqs), now, now))
    table.time(section, "  of which: arguments decode (dict)", lambda: lambda: _decode(PAYLOAD_JSON))

    class EchoHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            for key, value in self.message.arguments.items():
                self.add_to_payload(key, value)
            self.set_status(200)
            return self.render()

    context = zmq.Context()
    try:
        directory = tempfile.mkdtemp(prefix="hotpath-")
        connection = ServiceConnection(f"ipc://{directory}/svc.sock", None, PASSPHRASE, context=context)
        app = Brubeck(msg_conn=connection, log_level=logging.WARNING, handler_tuples=[
            ("^/other$", EchoHandler), (f"^{ECHO_PATH}$", EchoHandler)])
        request = envelope.parse_request(parsed[-1], signer, now, ReplayGuard())
        table.time(section, "Brubeck.handle (route, handler, echo, render)", lambda: lambda: app.handle(request))
        table.time(section, "  of which: Router.match (2 routes)", lambda: lambda: app.router.match(
            ECHO_PATH, "request"))
        table.time(section, "  of which: EchoHandler(app, request)", lambda: lambda: EchoHandler(app, request))
        table.time(section, "  of which: status text lookup (set_status 200)",
                   lambda: lambda: EchoHandler._status_text(EchoHandler, 200))  # type: ignore[arg-type]
        response = app.handle(request)
        table.time(section, "envelope.encode_reply (JSON x2 + HMAC)", lambda: lambda: envelope.build_reply(
            signer, b"0123abcd-1f", response, now_ms()))
        connection.close()
    finally:
        context.term()


# -- HTTP handlers behind Mongrel2 ------------------------------------------------------------------------


def http_handler(table: Table) -> None:
    import logging

    from brubeck.application import Brubeck
    from brubeck.handlers import JSONMessageHandler
    from brubeck.request import Request
    from brubeck.response import HTTPResponse
    from brubeck.wire.mongrel2 import Mongrel2Message, build_message, build_reply

    section = "http"
    print("HTTP hello through Mongrel2 (Mongrel2Connection.serve + Brubeck.handle + JSONMessageHandler)")
    raw = build_message(Mongrel2Message(SENDER, "7", "/", dict(WRK_HEADERS), b""))

    class HelloHandler(JSONMessageHandler):
        def get(self) -> HTTPResponse:
            self.add_to_payload("message", "hello")
            self.set_status(200)
            return self.render()

    class Null:
        base_handler = JSONMessageHandler

    app = Brubeck(msg_conn=Null(), log_level=logging.WARNING,  # type: ignore[arg-type]
                  handler_tuples=[("^/", HelloHandler)])
    table.time(section, "Request.parse_msg (netstrings + JSON headers)", lambda: lambda: Request.parse_msg(raw))
    request = Request.parse_msg(raw)
    table.time(section, "is_disconnect + is_upload_start + should_close", lambda: lambda: (
        request.is_disconnect(), request.is_upload_start(), request.should_close()))
    table.time(section, "Brubeck.handle (route, handler, render)", lambda: lambda: app.handle(request))
    table.time(section, "  of which: HelloHandler(app, request)", lambda: lambda: HelloHandler(app, request))
    table.time(section, "  of which: HTTPResponse(body, 200, None, headers)", lambda: lambda: HTTPResponse(
        b'{"message":"hello"}', 200, None, [("Content-Type", "application/json")]))
    response = app.handle(request)
    table.time(section, "build_reply (Mongrel2 reply frame)", lambda: lambda: build_reply(
        request.sender, [request.conn_id], response))
    print("HTTP floor (bench.servers.raw_m2), for comparison")
    table.time("floor", "raw handler: parse + hello JSON + response bytes", lambda: lambda: _raw_m2_step(raw))


def _raw_m2_step(raw: bytes) -> bytes:
    from bench.servers import _netstring

    sender, conn_id, _path, rest = raw.split(b" ", 3)
    headers_json, rest = _netstring(rest)
    _netstring(rest)
    _decode(headers_json)
    body = _encode(hello_body(int(time.time() * 1000)))
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body))
    return b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, response)


# -- primitives: gevent and zmq ---------------------------------------------------------------------------


def primitives(table: Table) -> None:
    section = "primitives"
    print("gevent and zmq primitives (both sides pay these; the raw floors fewer of them)")
    hub = gevent.get_hub()

    def wake() -> None:
        result: AsyncResult = AsyncResult()
        hub.loop.run_callback(result.set, 1)
        result.get()

    table.time(section, "AsyncResult wait + set from the hub (a call's wake-up)", lambda: wake)
    table.time(section, "gevent.spawn + run a trivial greenlet", lambda: _spawn_step, number=2000)
    table.time("floor", "raw floor JSON: decode + encode the payload", lambda: lambda: _encode(_decode(PAYLOAD_JSON)))
    context = zmq.Context()
    directory = tempfile.mkdtemp(prefix="hotpath-")
    router = context.socket(zmq.ROUTER)
    dealer = context.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{directory}/p.sock")
    dealer.connect(f"ipc://{directory}/p.sock")
    gevent.sleep(0.2)
    six = [b"BRS1", b"REQ", b"0123abcd-1f", b"h" * 100, PAYLOAD_JSON, b"m" * 32]
    two = [b"c1f", PAYLOAD_JSON]
    channel_class = _find_channel()
    channel: Any = channel_class(dealer) if channel_class is not None else None
    server_channel: Any = channel_class(router) if channel_class is not None else None

    def drain() -> None:
        while router.poll(50):
            router.recv_multipart()

    def timed_send(name: str, step: Step) -> None:
        table.time(section, name, lambda: step, number=5000)
        drain()

    if channel is not None:
        table.time(section, "Channel.readable(): getsockopt(ZMQ_EVENTS), idle socket", lambda: channel.readable)
    table.time(section, "zmq.green socket.get(zmq.EVENTS) (wakes a waiting reader)",
               lambda: lambda: dealer.get(zmq.EVENTS))
    if channel is not None:
        timed_send("Channel.send, 6 frames (library)", lambda: channel.send(six))
    timed_send("green send_multipart NOBLOCK, 6 frames (at b0ef456)",
               lambda: dealer.send_multipart(six, flags=zmq.NOBLOCK))
    timed_send("green send_multipart, 2 frames (raw floor)", lambda: dealer.send_multipart(two))

    def timed_recv(name: str, frames: list[bytes], receive: Step) -> None:
        def make() -> Step:
            for _ in range(5000 * table.repeat + 10):
                dealer.send_multipart(frames)
            while not router.poll(50):
                pass
            gevent.sleep(0.2)
            return receive
        table.time(section, name, make, number=5000)
        drain()

    if server_channel is not None:
        # Older revisions read with recv() from a greenlet; now the hub reads with recv_now().
        receive = getattr(server_channel, "recv_now", None) or server_channel.recv
        timed_recv("Channel read, 7 frames (library)", six, receive)
    timed_recv("green recv_multipart, 3 frames (raw floor)", two, router.recv_multipart)
    router.close()
    dealer.close()
    context.term()


def _find_channel() -> Any:
    """The library's fast multipart channel, wherever this revision keeps it (None before it had one)."""
    import importlib

    for module in ("brubeck.transports.channel", "brubeckservice.sockets"):
        try:
            return getattr(importlib.import_module(module), "Channel")  # noqa: B009 - not in every revision
        except (ImportError, AttributeError):
            continue
    return None


def _spawn_step() -> None:
    gevent.spawn(int).join()


SECTIONS = {"client": service_client, "service": service_server, "http": http_handler, "primitives": primitives}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=5000, help="operations per round")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is reported")
    parser.add_argument("sections", nargs="*", choices=[[], *SECTIONS], default=[])
    args = parser.parse_args(argv)
    import brubeckservice

    print(f"library: {brubeckservice.__file__}")
    table = Table(args.number, args.repeat)
    for name in args.sections or SECTIONS:
        SECTIONS[name](table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
