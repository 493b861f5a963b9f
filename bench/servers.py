"""The server side of every benchmark, one process each: `python -m bench.servers KIND ADDRESS...`.

Each prints `READY` on stdout once its sockets are bound (or connected, behind Mongrel2) and then serves
until it is killed; the orchestrator (`bench.procs`) starts, waits for and stops them. Kinds:

    raw-router ADDR               ROUTER echo: decode the JSON arguments, encode them back (zmq.green floor)
    plain-router ADDR             the same echo in plain blocking pyzmq, no gevent (floor of cases 1, 2, 5)
    service ADDR                  a Brubeck app on a ServiceConnection with an echo ServiceMessageHandler
    zerorpc ADDR                  a zerorpc server with an `echo` method
    raw-m2 SEND RECV              zmq.green Mongrel2 handler that parses each request (the HTTP floor)
    raw-m2-call SEND RECV ADDR    the same, making one call to a raw-router per request (zmq.green, 2 greenlets)
    floor-m2-call SEND RECV ADDR  plain pyzmq, one zmq.Poller loop, one call to a plain-router per request
                                  (the floor of case 5)
    m2-hello SEND RECV            a Brubeck app behind Mongrel2 with a JSONMessageHandler saying hello
    m2-service SEND RECV ADDR     a Brubeck web handler making one sync service call per request

The raw and plain routers hold replies whose correlation id starts with `RAW_HOLD` until a `RAW_RELEASE`
message, and the service holds `HOLD_PATH` calls until a `RELEASE_PATH` call, so the memory benchmark can
keep 10,000 calls in flight. SEND and RECV are Mongrel2's handler `send_spec` and `recv_spec`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import msgspec
import zmq as plain_zmq
import zmq.green as zmq

from bench.payload import (
    ECHO_PATH,
    HOLD_PATH,
    PASSPHRASE,
    PAYLOAD_JSON,
    RAW_HOLD,
    RAW_RELEASE,
    READY,
    RELEASE_PATH,
    hello_body,
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: A raw-router id starting with this asks how many replies it holds (the answer's body is the count).
RAW_QUERY = b"q"
#: The service path answering how many calls the service holds.
HELD_PATH = "/held"


def _ready() -> None:
    print(READY, flush=True)


# -- RPC servers ----------------------------------------------------------------------------------------


def raw_router(address: str) -> None:
    """ROUTER echo: [identity, id, JSON] in, the same id and the re-encoded JSON out. No greenlet per call."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # With MANDATORY a full pipe is EAGAIN, which zmq.green's send waits out: the floor never drops a reply.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.bind(address)
    _ready()
    held: list[list[bytes]] = []
    send = sock.send_multipart
    while True:
        identity, msg_id, body = sock.recv_multipart()
        reply = [identity, msg_id, _encode(_decode(body))]
        try:
            if msg_id.startswith(RAW_HOLD):
                held.append(reply)
                continue
            if msg_id.startswith(RAW_RELEASE):
                for frames in held:
                    send(frames)
                held.clear()
            elif msg_id.startswith(RAW_QUERY):
                reply[2] = _encode(len(held))
            send(reply)
        except zmq.ZMQError as err:  # EHOSTUNREACH: that caller has gone
            print(f"raw-router: reply dropped: {err}", file=sys.stderr)


def plain_router(address: str) -> None:
    """`raw_router` in plain pyzmq: one blocking recv/send loop, no gevent, no zmq.green.

    The floor of cases 1, 2 and 5: nothing between libzmq and the codec but pyzmq's own calls. The loop is
    raw_router's (hold/release included), so `plain` against `raw` measures zmq.green and gevent alone.
    """
    context = plain_zmq.Context()
    sock = context.socket(plain_zmq.ROUTER)
    sock.setsockopt(plain_zmq.LINGER, 0)
    # With MANDATORY a full pipe blocks the send (as raw_router waits it out): never a dropped reply.
    sock.setsockopt(plain_zmq.ROUTER_MANDATORY, 1)
    sock.bind(address)
    _ready()
    held: list[list[bytes]] = []
    send = sock.send_multipart
    while True:
        identity, msg_id, body = sock.recv_multipart()
        reply = [identity, msg_id, _encode(_decode(body))]
        try:
            if msg_id.startswith(RAW_HOLD):
                held.append(reply)
                continue
            if msg_id.startswith(RAW_RELEASE):
                for frames in held:
                    send(frames)
                held.clear()
            elif msg_id.startswith(RAW_QUERY):
                reply[2] = _encode(len(held))
            send(reply)
        except plain_zmq.ZMQError as err:  # EHOSTUNREACH: that caller has gone
            print(f"plain-router: reply dropped: {err}", file=sys.stderr)


def service(address: str) -> None:
    """A Brubeck app serving `ECHO_PATH` (echo the arguments into the payload) and the hold/release pair."""
    from brubeck.application import Brubeck
    from brubeckservice import ServiceConnection, ServiceMessageHandler, ServiceResponse

    held: list[tuple[Any, ServiceResponse]] = []

    class EchoHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            for key, value in self.message.arguments.items():
                self.add_to_payload(key, value)
            self.set_status(200)
            return self.render()

    class HoldHandler(EchoHandler):
        def request(self) -> ServiceResponse | None:  # type: ignore[override]
            held.append((self.message, super().request()))
            return None  # answered later, by ReleaseHandler

    class ReleaseHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            for message, response in held:
                _paced_reply(connection, message, response)
            self.add_to_payload("released", len(held))
            held.clear()
            self.set_status(200)
            return self.render()

    class HeldHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            self.add_to_payload("held", len(held))
            self.set_status(200)
            return self.render()

    # An echo never waits on anything: it declares room for every call the cases keep in flight (10k held),
    # as an I/O-bound service would. (The default, 100 at once, would queue the rest: cases 3 and 6a.)
    connection = ServiceConnection(address, None, PASSPHRASE, capacity=100_000)
    app = Brubeck(msg_conn=connection, log_level=logging.WARNING,
                  handler_tuples=[(f"^{ECHO_PATH}$", EchoHandler), (f"^{HOLD_PATH}$", HoldHandler),
                                  (f"^{RELEASE_PATH}$", ReleaseHandler), (f"^{HELD_PATH}$", HeldHandler)])
    _ready()
    app.run()


def _paced_reply(connection: Any, message: Any, response: Any) -> None:
    """`ServiceConnection.reply`, but waiting out a full pipe instead of dropping the reply.

    The service sends without blocking and drops a reply its ROUTER cannot queue (send HWM 1000, see the
    report): fine for a reply now and then, not for 10,000 held replies released at once.
    """
    from brubeckservice import envelope
    from brubeckservice.clock import now_ms

    frames = [*message.sender, *envelope.build_reply(connection.signer, message.msg_id, response, now_ms())]
    while True:
        try:
            connection.socket.send_multipart(frames, flags=zmq.NOBLOCK)
            return
        except zmq.Again:
            gevent.sleep(0.001)


def zerorpc_server(address: str) -> None:
    import zerorpc

    class Echo:
        def echo(self, arguments: dict[str, Any]) -> dict[str, Any]:
            return arguments

    server = zerorpc.Server(Echo())
    server.bind(address)
    _ready()
    server.run()


# -- HTTP handlers behind Mongrel2 ----------------------------------------------------------------------


def _netstring(data: bytes) -> tuple[bytes, bytes]:
    """`SIZE:BYTES,` -> (BYTES, what follows)."""
    size, _, rest = data.partition(b":")
    end = int(size)
    return rest[:end], rest[end + 1:]


def raw_m2(send_spec: str, recv_spec: str) -> None:
    """The HTTP floor: parse each Mongrel2 request (netstrings, JSON headers) and answer the hello JSON.

    `SENDER ID PATH SIZE:HEADERS,SIZE:BODY,` in; `SENDER SIZE:ID, HTTP-RESPONSE` out. One loop, no greenlet
    per request, no routing: what any Mongrel2 handler has to do at the least.
    """
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pub = context.socket(zmq.PUB)
    pull.connect(send_spec)
    pub.connect(recv_spec)
    _ready()
    while True:
        raw = pull.recv()
        sender, conn_id, path, rest = raw.split(b" ", 3)
        headers_json, rest = _netstring(rest)
        _body, _ = _netstring(rest)
        headers = _decode(headers_json)
        if path == b"@*" or headers.get("METHOD") == "JSON":
            continue  # a disconnect notice: never answered
        body = _encode(hello_body(int(time.time() * 1000)))
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))
        pub.send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, response))


def raw_m2_call(send_spec: str, recv_spec: str, service_addr: str) -> None:
    """The zmq.green floor of benchmark 5 (orientation; floor_m2_call is the floor): each request makes one
    call to the raw echo server, and is answered with the echo. Event-driven, no greenlet per request: one
    greenlet forwards parsed requests to a DEALER (correlation id = Mongrel2 sender and connection id),
    another answers each reply over PUB.
    """
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pub = context.socket(zmq.PUB)
    dealer = context.socket(zmq.DEALER)
    pull.connect(send_spec)
    pub.connect(recv_spec)
    dealer.connect(service_addr)
    arguments = PAYLOAD_JSON

    def forward() -> None:
        while True:
            raw = pull.recv()
            sender, conn_id, path, rest = raw.split(b" ", 3)
            headers_json, rest = _netstring(rest)
            _body, _ = _netstring(rest)
            headers = _decode(headers_json)
            if path == b"@*" or headers.get("METHOD") == "JSON":
                continue
            dealer.send_multipart([b"%s %s" % (sender, conn_id), _encode(_decode(arguments))])

    def answer() -> None:
        while True:
            msg_id, body = dealer.recv_multipart()
            sender, conn_id = msg_id.split(b" ")
            reply = hello_body(int(time.time() * 1000))
            reply["echo"] = _decode(body)
            payload = _encode(reply)
            response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(payload), payload))
            pub.send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, response))

    workers = [gevent.spawn(forward), gevent.spawn(answer)]
    _ready()
    gevent.joinall(workers, raise_error=True)


def _parse_m2(raw: bytes) -> tuple[bytes, bytes] | None:
    """A Mongrel2 request -> (sender, connection id), parsed as raw_m2 does (netstrings, JSON headers);
    None for a disconnect notice, which is never answered."""
    sender, conn_id, path, rest = raw.split(b" ", 3)
    headers_json, rest = _netstring(rest)
    _body, _ = _netstring(rest)
    headers = _decode(headers_json)
    if path == b"@*" or headers.get("METHOD") == "JSON":
        return None
    return sender, conn_id


def _echo_response(msg_id: bytes, body: bytes) -> bytes:
    """The Mongrel2 reply to the request `msg_id` ("SENDER CONN_ID") once its echo `body` came back: the
    hello JSON with the echo in it, as raw_m2_call's answer() builds it."""
    sender, conn_id = msg_id.split(b" ")
    reply = hello_body(int(time.time() * 1000))
    reply["echo"] = _decode(body)
    payload = _encode(reply)
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(payload), payload))
    return b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, response)


def floor_m2_call(send_spec: str, recv_spec: str, service_addr: str) -> None:
    """The floor of benchmark 5, event-driven: raw_m2_call's work in plain pyzmq, one thread, no gevent.

    One zmq.Poller loop over the PULL from Mongrel2 and the DEALER to a plain-router; each wake-up drains
    every message ready on either (NOBLOCK until EAGAIN). A request is sent on as one call (correlation id
    = sender and connection id) and answered over PUB when its echo comes back, any number in flight. No
    greenlet, no hub, no per-request state: what a handler calling a service has to do at the least.
    """
    context = plain_zmq.Context()
    pull = context.socket(plain_zmq.PULL)
    pub = context.socket(plain_zmq.PUB)
    dealer = context.socket(plain_zmq.DEALER)
    pull.connect(send_spec)
    pub.connect(recv_spec)
    dealer.connect(service_addr)
    poller = plain_zmq.Poller()
    poller.register(pull, plain_zmq.POLLIN)
    poller.register(dealer, plain_zmq.POLLIN)
    _ready()
    while True:
        for sock, _event in poller.poll():
            if sock is pull:
                _forward_requests(pull, dealer)
            else:
                _answer_replies(dealer, pub)


def _forward_requests(pull: plain_zmq.Socket[bytes], dealer: plain_zmq.Socket[bytes]) -> None:
    """Every request ready on `pull`, each sent on as one call to the echo service."""
    arguments = PAYLOAD_JSON
    while True:
        try:
            raw = pull.recv(plain_zmq.NOBLOCK)
        except plain_zmq.Again:
            return
        parsed = _parse_m2(raw)
        if parsed is not None:
            dealer.send_multipart([b"%s %s" % parsed, _encode(_decode(arguments))])


def _answer_replies(dealer: plain_zmq.Socket[bytes], pub: plain_zmq.Socket[bytes]) -> None:
    """Every echo ready on `dealer`, each answered to its HTTP request over `pub`."""
    while True:
        try:
            msg_id, body = dealer.recv_multipart(plain_zmq.NOBLOCK)
        except plain_zmq.Again:
            return
        pub.send(_echo_response(msg_id, body))


def m2_hello(send_spec: str, recv_spec: str) -> None:
    from brubeck.application import Brubeck
    from brubeck.handlers import JSONMessageHandler
    from brubeck.response import HTTPResponse
    from brubeck.transports.mongrel2 import Mongrel2Connection

    class HelloHandler(JSONMessageHandler):
        def get(self) -> HTTPResponse:
            self.add_to_payload("message", "hello")
            self.set_status(200)
            return self.render()

    app = Brubeck(msg_conn=Mongrel2Connection(send_spec, recv_spec), log_level=logging.WARNING,
                  handler_tuples=[("^/", HelloHandler)])
    _ready()
    app.run()


def m2_service(send_spec: str, recv_spec: str, service_addr: str) -> None:
    """A web handler that calls the echo service once per request (`send_service_request`, sync)."""
    from bench.payload import PAYLOAD
    from brubeck.application import Brubeck
    from brubeck.handlers import JSONMessageHandler
    from brubeck.response import HTTPResponse
    from brubeck.transports.mongrel2 import Mongrel2Connection
    from brubeckservice import ServiceClientMixin, ServiceMessageHandler

    class CallHandler(JSONMessageHandler, ServiceClientMixin):
        def get(self) -> HTTPResponse:
            self.register_service(service_addr, None, PASSPHRASE)
            request = self.create_service_request(ECHO_PATH, "request", PAYLOAD)
            response, _ = self.send_service_request(service_addr, request)
            self.add_to_payload("echo", response.body)
            self.set_status(200 if response.ok else 502)
            return self.render()

    class EchoReplyHandler(ServiceMessageHandler):
        """Where the mixin routes each reply (by its path and METHOD `response`) on this app."""

        def response(self) -> None:
            return None

    app = Brubeck(msg_conn=Mongrel2Connection(send_spec, recv_spec), log_level=logging.WARNING,
                  handler_tuples=[(f"^{ECHO_PATH}$", EchoReplyHandler), ("^/", CallHandler)])
    _ready()
    app.run()


KINDS: dict[str, tuple[Callable[..., None], int]] = {
    "raw-router": (raw_router, 1),
    "plain-router": (plain_router, 1),
    "service": (service, 1),
    "zerorpc": (zerorpc_server, 1),
    "raw-m2": (raw_m2, 2),
    "raw-m2-call": (raw_m2_call, 3),
    "floor-m2-call": (floor_m2_call, 3),
    "m2-hello": (m2_hello, 2),
    "m2-service": (m2_service, 3),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    function, arity = KINDS[args.kind]
    if len(args.addresses) != arity:
        parser.error(f"{args.kind} takes {arity} address(es)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    function(*args.addresses)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
