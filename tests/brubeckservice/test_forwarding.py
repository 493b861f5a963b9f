"""brubeckservice/forwarding.py and `forward_to_service`: a service answering the browser through Mongrel2.

Three layers: the pure HTTP builders (bytes in, bytes out); `Forwarding` against a fake Mongrel2 (a bound
SUB socket, as Mongrel2 binds one on recv_spec); then the whole path behind a real Mongrel2, a web app and a
service in this process's hub, read by real HTTP clients (`requests` in a thread, raw gevent sockets where
the chunks themselves matter). Streams are driven by the test: the handler writes its next piece when the
test, having read the one before, hands it one.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.queue import Queue

from brubeck.application import Brubeck
from brubeck.connections import Mongrel2Connection, WSGIConnection
from brubeck.context import shielded
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeck.response import HTTPResponse, render
from brubeck.testing import Mongrel2Server as Mongrel2Process
from brubeck.throttle import LogThrottle
from brubeck.wire.mongrel2 import build_request_headers, parse_reply
from brubeckservice import forwarding
from brubeckservice.answers import CLOSE_HINT, METHOD_HINT, chunk, http_answer, is_error_reply, stream_head
from brubeckservice.clock import now_ms
from brubeckservice.errors import ForwardFailed, build_error_body
from brubeckservice.forwarding import Forwarding, Link, Mongrel2Server
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection
from tests.brubeck.http_client import fetch
from tests.brubeck.sample_app import wait_until_served
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, Gate, wait_until

SENDER = "5f0c2a4e-8d1b-4c3a-9e7f-0123456789ab"

# -- what is published (pure) --------------------------------------------------------------------------------


def test_a_payload_becomes_a_json_answer_with_the_handlers_status_and_headers() -> None:
    response = ServiceResponse(status_code=201, status_msg="Made", body={"id": 7},
                               headers={"X-Id": "7", "Content-Length": "999", "Connection": "keep-alive"})
    assert http_answer(response) == (b'HTTP/1.1 201 Made\r\nX-Id: 7\r\nContent-Type: application/json\r\n'
                                     b'Content-Length: 8\r\n\r\n{"id":7}')


def test_a_text_body_goes_as_it_is_and_close_says_so() -> None:
    response = ServiceResponse(status_code=200, status_msg="OK", body="<p>hi</p>")
    assert http_answer(response, close=True) == (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                                                 b"Connection: close\r\nContent-Length: 9\r\n\r\n<p>hi</p>")


@pytest.mark.parametrize("response", [
    ServiceResponse(status_code=200, body="x", headers={"X-Evil": "a\r\nSet-Cookie: b"}),
    ServiceResponse(status_code=200, body={"x": object()}),  # (not JSON)
    ServiceResponse(status_code=99, body={}),
])
def test_what_cannot_be_sent_as_http_is_a_500(response: ServiceResponse) -> None:
    assert http_answer(response).status_code == 500


def test_a_stream_head_is_chunked_or_closed() -> None:
    assert stream_head(200, "OK", {"X-A": "1", "Transfer-Encoding": "gzip"}, chunked=True) == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
    assert stream_head(404, "", {"Content-Type": "text/html"}, chunked=False) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n")


def test_chunks_and_never_an_empty_one() -> None:
    assert chunk(b"hello world, 17 b") == b"11\r\nhello world, 17 b\r\n"
    assert chunk(b"") == b""  # (an empty chunk would end the body)


def test_only_errors_in_the_protocols_shape_go_back_to_the_web_app() -> None:
    assert is_error_reply(ServiceResponse(status_code=404, body=build_error_body("NotFound", "no route")))
    assert not is_error_reply(ServiceResponse(status_code=404, body="<h1>No such item</h1>"))
    assert not is_error_reply(ServiceResponse(status_code=200, body=build_error_body("X", "y")))


@pytest.mark.parametrize("kwargs", [{"recv_spec": "run/replies"}, {"sender": "has space"}, {"sender": ""},
                                    {"flush_interval": -1.0}, {"stream_timeout": 0.0}])
def test_a_bad_mongrel2_server_is_a_configuration_error(kwargs: dict[str, Any]) -> None:
    from brubeck.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        Mongrel2Server(**{"recv_spec": "tcp://127.0.0.1:1", "sender": SENDER, **kwargs})


# -- Forwarding, against a fake Mongrel2 -------------------------------------------------------------------


class FakeRecvSpec:
    """What Mongrel2 binds on a handler's recv_spec: a SUB subscribed to replies beginning with SENDER."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], address: str) -> None:
        self.context, self.address = context, address
        self.sub = self._bind()

    def _bind(self) -> zmq.Socket[bytes]:
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, SENDER.encode())
        sub.bind(self.address)
        return sub

    def restart(self) -> None:
        """As a Mongrel2 restarting: the connection drops, and a new subscription comes."""
        self.sub.close(linger=0)
        self.sub = self._bind()

    def reply(self) -> tuple[str, list[str], bytes]:
        with gevent.Timeout(WAIT):
            return parse_reply(self.sub.recv())


@dataclass
class Fixture:
    forwarding: Forwarding
    mongrel2: FakeRecvSpec
    replies: list[tuple[Any, Any]]
    stats: Counter[str]

    @property
    def link(self) -> Link:
        return self.forwarding.links["main"]

    def admitted(self, **fields: Any) -> ServiceRequest:
        request = new_request(**fields)
        assert self.forwarding.refusal(request) is None
        return request


_ids = itertools.count(1)


def new_request(**fields: Any) -> ServiceRequest:
    fields.setdefault("reply_to", "main")
    fields.setdefault("conn_id", "7")
    request = ServiceRequest(path="/svc", **fields)
    request.sender, request.msg_id = (b"caller",), b"id-%d" % next(_ids)
    return request


@pytest.fixture
def fake(short_tmp: Path) -> Iterator[Fixture]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    address = f"ipc://{short_tmp}/replies"
    mongrel2 = FakeRecvSpec(context, address)
    replies: list[tuple[Any, Any]] = []
    stats: Counter[str] = Counter()
    servers = {"main": Mongrel2Server(address, SENDER, flush_interval=0.05)}
    fwd = Forwarding(servers, context, lambda request, response: replies.append((request, response)), stats,
                     LogThrottle(forwarding.log))
    fwd.start()
    wait_until(fwd.links["main"].ready.is_set, "the fake Mongrel2's subscription")
    try:
        yield Fixture(fwd, mongrel2, replies, stats)
    finally:
        fwd.close()
        mongrel2.sub.close(linger=0)
        context.destroy(linger=0)


def test_an_unknown_server_is_refused_by_name_never_by_address(fake: Fixture) -> None:
    request = new_request(reply_to="tcp://10.0.0.1:9999")
    refusal = fake.forwarding.refusal(request)
    assert refusal is not None and "'main'" in refusal and fake.mongrel2.address not in refusal
    assert type(refusal) is str and fake.forwarding.refuse(request) == (400, refusal)


@pytest.mark.parametrize("conn_id", ["", "7 8", "x", "\uff11\uff12", "12345678901"])
def test_a_connection_id_mongrel2_would_not_parse_is_refused(fake: Fixture, conn_id: str) -> None:
    assert fake.forwarding.refusal(new_request(conn_id=conn_id)) is not None


def test_an_answer_is_published_then_the_caller_told(fake: Fixture) -> None:
    request = fake.admitted(deadline=now_ms() + 5000)
    fake.forwarding.answer(request, ServiceResponse(status_code=200, body={"a": 1}))
    sender, ids, body = fake.mongrel2.reply()
    assert (sender, ids) == (SENDER, ["7"]) and body.endswith(b'\r\n\r\n{"a":1}')
    [(told, rep)] = fake.replies
    assert told is request and rep.status_code == 200
    assert rep.body == {"forwarded": True, "status": 200, "bytes": len(body), "streamed": False}


def test_head_and_close_hints_are_honoured(fake: Fixture) -> None:
    request = fake.admitted(headers={METHOD_HINT: "HEAD", CLOSE_HINT: "1"})
    fake.forwarding.answer(request, ServiceResponse(status_code=200, body="four"))
    body = fake.mongrel2.reply()[2]
    assert body.endswith(b"Connection: close\r\nContent-Length: 4\r\n\r\n")  # (GET's length, no body)
    assert fake.mongrel2.reply() == (SENDER, ["7"], b"")  # then the connection is closed


def test_a_late_answer_is_not_published_nor_answered(fake: Fixture) -> None:
    late = fake.admitted(deadline=now_ms() - 1)
    fake.forwarding.answer(late, ServiceResponse(status_code=200, body="too late"))
    fake.link.publish("8", b"marker")  # what comes first at Mongrel2 shows nothing came before it
    assert fake.mongrel2.reply() == (SENDER, ["8"], b"marker")
    assert fake.replies == [] and fake.stats["forward_late"] == 1


def test_an_error_goes_back_to_the_caller_unpublished(fake: Fixture) -> None:
    request = fake.admitted()
    error = ServiceResponse(status_code=500, body=build_error_body("RuntimeError", "internals"))
    fake.forwarding.answer(request, error)
    assert fake.replies == [(request, error)]
    fake.link.publish("8", b"marker")
    assert fake.mongrel2.reply()[2] == b"marker"


def test_an_answer_for_a_mongrel2_that_restarted_is_not_published(fake: Fixture) -> None:
    request = fake.admitted()
    generation = fake.link.generation
    fake.mongrel2.restart()  # (its connection ids start again: conn 7 may be another browser now)
    wait_until(lambda: fake.link.generation > generation and fake.link.ready.is_set(), "the new subscription")
    fake.forwarding.answer(request, ServiceResponse(status_code=200, body="for the old conn 7"))
    [(_, rep)] = fake.replies
    assert rep.status_code == 503 and rep.body["error"]["type"] == "ForwardFailed"
    fake.link.publish("8", b"marker")
    assert fake.mongrel2.reply()[2] == b"marker"


def test_a_server_that_never_subscribes_is_refused_after_the_grace(short_tmp: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forwarding, "START_GRACE", 0.0)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fwd = Forwarding({"main": Mongrel2Server(f"ipc://{short_tmp}/nobody", SENDER)}, context,
                     lambda *_: None, Counter(), LogThrottle(forwarding.log))
    fwd.start()
    try:
        refused = fwd.refuse(new_request())
        assert refused is not None and refused[0] == 503 and "not connected" in refused[1]
    finally:
        fwd.close()
        context.destroy(linger=0)


def test_a_stream_sends_its_head_at_once_then_coalesced_pieces_then_its_end(fake: Fixture) -> None:
    request = fake.admitted(deadline=now_ms() + 5000)
    stream = fake.forwarding.stream(request, 200, "OK", {"Content-Type": "text/plain"})
    stream.write(b"first")
    head = fake.mongrel2.reply()[2]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"chunked\r\n\r\n5\r\nfirst\r\n")
    assert fake.replies[0][1].body["streamed"] is True  # the caller is told at the first byte
    for piece in (b"a", b"b", b"c"):
        stream.write(piece)  # (no yield between them: one message)
    assert fake.mongrel2.reply()[2] == b"3\r\nabc\r\n"
    fake.forwarding.answer(request, ServiceResponse(status_code=200))
    assert fake.mongrel2.reply()[2] == b"0\r\n\r\n"
    assert len(fake.replies) == 1


def test_a_stream_whose_handler_fails_is_cut_short(fake: Fixture) -> None:
    request = fake.admitted()
    stream = fake.forwarding.stream(request, 200, "OK", {})
    stream.write(b"part")
    fake.mongrel2.reply()
    fake.forwarding.answer(request, ServiceResponse(status_code=500, body=build_error_body("E", "boom")))
    assert fake.mongrel2.reply() == (SENDER, ["7"], b"")  # closed, without the last chunk
    assert stream.ended.startswith("aborted") and len(fake.replies) == 1
    with pytest.raises(ForwardFailed):
        stream.write(b"more")


def test_closing_cuts_open_streams_short(fake: Fixture) -> None:
    stream = fake.forwarding.stream(fake.admitted(), 200, "OK", {})
    stream.write(b"part")
    fake.mongrel2.reply()
    fake.forwarding.close()
    assert fake.mongrel2.reply() == (SENDER, ["7"], b"")


# -- the whole path, behind a real Mongrel2 ------------------------------------------------------------------


class ForwardPage(ServiceClientMixin, WebMessageHandler):
    """GET /forward?to=SERVICE_PATH[&server=NAME][&timeout=S][&service=none]: forwarded to the service."""

    def get(self) -> None:
        settings = self.application.settings
        address = settings["nowhere"] if self.get_argument("service") == "none" else settings["service_addr"]
        self.register_service(address, passphrase=PASSPHRASE, connect_timeout=0.5)
        request = self.create_service_request(self.get_argument("to") or "/svc/page",
                                              arguments={"name": self.get_argument("name") or "you"})
        timeout = float(self.get_argument("timeout") or 10)
        return self.forward_to_service(address, request, timeout=timeout, server=self.get_argument("server"))


class Page(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200, "Answered by the service")
        self.headers["X-Answered-By"] = "service"
        self.set_body(f"<p>hello {self.message.get_argument('name')}</p>")
        return self.render()


class Payload(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200)
        self.add_to_payload("name", self.message.get_argument("name"))
        return self.render()


class Paced(ServiceMessageHandler):
    """Streams each piece the test puts in the `pieces` queue, until None."""

    def request(self) -> ServiceResponse:
        pieces: Queue = self.application.settings["pieces"]
        for piece in iter(pieces.get, None):
            self.stream(piece)
        return self.render()


class Burst(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        for number in range(100):
            self.stream(f"{number}\n")
        return self.render()


class Silent(ServiceMessageHandler):
    """Never answers in time: it waits for the test (the web app's timeout stops it first, by CANCEL)."""

    def request(self) -> ServiceResponse:
        gate: Gate = self.application.settings["gate"]
        gate.arrived.put(self.message)
        gate.release.wait(WAIT)
        self.set_status(200)
        return self.render()


class Late(ServiceMessageHandler):
    """Answers once the test releases it, after the web app has given up, even if cancelled meanwhile."""

    def request(self) -> None:
        gate: Gate = self.application.settings["gate"]
        gate.arrived.put(self.message)
        with shielded():  # (a CANCEL must not stop it: this answer is the late one the test is about)
            gate.release.wait(WAIT)
            self.set_status(200)
            self.set_body("too late")
            self.application.msg_conn.reply(self.message, self.render())


class Boom(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        raise RuntimeError("secret internals")


class BrokenStream(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.stream("a")
        raise RuntimeError("failed half way")


SERVICE_ROUTES: list[tuple[str, Any]] = [
    (r"^/svc/page$", Page), (r"^/svc/json$", Payload), (r"^/svc/paced$", Paced), (r"^/svc/burst$", Burst),
    (r"^/svc/silent$", Silent), (r"^/svc/late$", Late), (r"^/svc/boom$", Boom), (r"^/svc/broken$", BrokenStream)]


def ping(application: Brubeck, message: Request) -> HTTPResponse:
    return render("pong")


@dataclass
class Stack:
    url: str
    port: int
    web: Brubeck
    service: Brubeck
    connection: ServiceConnection
    pieces: Queue
    gate: Gate

    def client(self) -> Any:
        from brubeckservice.mixin import registry

        return registry(self.web)[self.web.settings["service_addr"]]


def start_service(address: str, mongrel2: dict[str, Mongrel2Server] | None, **settings: Any
                  ) -> tuple[Brubeck, ServiceConnection, gevent.Greenlet]:
    connection = ServiceConnection(address, None, PASSPHRASE, mongrel2=mongrel2)
    app = Brubeck(msg_conn=connection, handler_tuples=SERVICE_ROUTES, pool=Pool(), **settings)
    return app, connection, gevent.spawn(connection.process_messages, app)


def stop(app: Brubeck, serving: gevent.Greenlet | None = None) -> None:
    app.close()
    if serving is not None:
        serving.join(timeout=WAIT)
    if app.pool is not None:
        app.pool.kill(timeout=WAIT)


@pytest.fixture
def stack(mongrel2_required: None, short_tmp: Path) -> Iterator[Stack]:
    pieces: Queue = Queue()
    gate = Gate()
    with Mongrel2Process() as m2:
        service, connection, service_serving = start_service(
            f"ipc://{short_tmp}/service", {"main": Mongrel2Server(m2.recv_spec, m2.send_ident, flush_interval=0.2)},
            pieces=pieces, gate=gate)
        web = Brubeck(msg_conn=Mongrel2Connection(m2.send_spec, m2.recv_spec), pool=Pool(),
                      handler_tuples=[(r"^/ping$", ping), (r"^/forward$", ForwardPage)], forward_server="main",
                      service_addr=f"ipc://{short_tmp}/service", nowhere=f"ipc://{short_tmp}/nobody")
        web_serving = gevent.spawn(web.msg_conn.process_messages, web)
        try:
            wait_until_served(m2.url)
            assert connection.forwarding is not None
            wait_until(connection.forwarding.links["main"].ready.is_set, "Mongrel2's subscription to the service")
            yield Stack(m2.url, m2.http_port, web, service, connection, pieces, gate)
        finally:
            gate.release.set()
            stop(web, web_serving)
            stop(service, service_serving)


class RawHTTP:
    """One HTTP connection on a gevent socket (the hub keeps serving while the test reads): the head, each
    chunk as it was framed, or the rest until the server closes. Every read times out after WAIT."""

    def __init__(self, port: int) -> None:
        self.sock = gsocket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.file = self.sock.makefile("rb")

    def send(self, target: str, version: str = "HTTP/1.1", method: str = "GET") -> None:
        self.sock.sendall(f"{method} {target} {version}\r\nHost: localhost\r\n\r\n".encode())

    def head(self) -> tuple[int, dict[str, str]]:
        status = int(self.file.readline().split(b" ")[1])
        headers = {}
        for line in iter(self.file.readline, b"\r\n"):
            assert line, "the connection closed inside the head"
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunk(self) -> bytes | None:
        """The next chunk's data (b"" for the last chunk), or None when the connection closed instead."""
        size_line = self.file.readline()
        if not size_line:
            return None
        data: bytes = self.file.read(int(size_line.strip(), 16))
        assert self.file.read(2) == b"\r\n"
        return data

    def chunks(self) -> list[bytes]:
        """Every chunk up to the last one."""
        found: list[bytes] = []
        while (data := self.chunk()) != b"":
            assert data is not None, f"the connection closed after {found}"
            found.append(data)
        return found

    def body(self, headers: dict[str, str]) -> bytes:
        data: bytes = self.file.read(int(headers["content-length"]))
        return data

    def rest(self) -> bytes:
        data: bytes = self.file.read()
        return data

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(stack: Stack) -> Iterator[RawHTTP]:
    connection = RawHTTP(stack.port)
    yield connection
    connection.close()


def test_the_service_answers_the_browser(stack: Stack) -> None:
    response = fetch("GET", f"{stack.url}/forward?to=/svc/page&name=Ada")
    assert (response.status_code, response.reason, response.text) == (200, "Answered by the service",
                                                                      "<p>hello Ada</p>")
    assert response.headers["X-Answered-By"] == "service"
    wait_until(lambda: stack.client().pending == 0, "the REP saying so")
    assert stack.connection.stats["forwarded"] == 1


def test_a_payload_arrives_as_json(stack: Stack) -> None:
    response = fetch("GET", f"{stack.url}/forward?to=/svc/json&name=Ada")
    assert response.status_code == 200 and response.json() == {"name": "Ada"}


def test_answers_keep_the_connection_usable(raw: RawHTTP) -> None:
    for target in ("/forward?to=/svc/page", "/forward?to=/svc/burst", "/forward?to=/svc/json"):
        raw.send(target)
        status, headers = raw.head()
        assert status == 200
        if headers.get("transfer-encoding") == "chunked":
            assert b"".join(raw.chunks()) == "".join(f"{n}\n" for n in range(100)).encode()
        else:
            raw.body(headers)


def test_a_stream_arrives_in_pieces_and_whole(stack: Stack, raw: RawHTTP) -> None:
    raw.send("/forward?to=/svc/paced")
    stack.pieces.put("one ")
    status, headers = raw.head()
    assert (status, headers["transfer-encoding"]) == (200, "chunked") and "content-length" not in headers
    assert raw.chunk() == b"one "
    # The REP went with the first byte: the web app's call is over, so its timeout cannot fire now.
    wait_until(lambda: stack.client().pending == 0, "the REP sent at the first byte")
    stack.pieces.put("two ")
    assert raw.chunk() == b"two "
    stack.pieces.put("three")
    stack.pieces.put(None)
    assert raw.chunk() == b"three"
    assert raw.chunk() == b""  # the last chunk
    assert stack.connection.stats["forward_streams"] == 1


def test_a_stream_decodes_whole_in_an_http_client(stack: Stack) -> None:
    response = fetch("GET", f"{stack.url}/forward?to=/svc/burst")
    assert response.status_code == 200 and response.text == "".join(f"{n}\n" for n in range(100))


def test_pieces_written_together_are_coalesced(raw: RawHTTP) -> None:
    raw.send("/forward?to=/svc/burst")
    raw.head()
    chunks = raw.chunks()
    assert len(chunks) == 2 and chunks[0] == b"0\n"  # the first at once, the other 99 in one message


def test_a_silent_service_gets_the_browser_a_504(stack: Stack, raw: RawHTTP) -> None:
    raw.send("/forward?to=/svc/silent&timeout=0.5")
    stack.gate.next_arrival()
    status, headers = raw.head()
    assert status == 504
    raw.body(headers)
    assert raw.rest() == b""  # and the web app closed the connection


def test_an_answer_after_the_deadline_is_not_published(stack: Stack, raw: RawHTTP) -> None:
    raw.send("/forward?to=/svc/late&timeout=0.5")
    stack.gate.next_arrival()
    status, headers = raw.head()
    assert status == 504
    raw.body(headers)
    assert raw.rest() == b""
    stack.gate.release.set()
    wait_until(lambda: stack.connection.stats["forward_late"] == 1, "the late answer to be dropped")
    assert stack.connection.stats["forwarded"] == 0


def test_a_service_that_is_not_running_gets_the_browser_a_503(stack: Stack) -> None:
    assert fetch("GET", f"{stack.url}/forward?service=none").status_code == 503
    assert fetch("GET", f"{stack.url}/forward?service=none").status_code == 503  # (now known unreachable)


def test_an_unknown_server_name_is_refused_and_the_web_app_says_so(stack: Stack) -> None:
    response = fetch("GET", f"{stack.url}/forward?server=elsewhere")
    assert (response.status_code, response.text) == (400, "400 Bad Request\n")  # the web app's page
    assert stack.connection.stats["forward_refused"] == 1


@pytest.mark.parametrize(("to", "status"), [("/svc/missing", 404), ("/svc/boom", 500)])
def test_errors_on_the_service_are_answered_by_the_web_app(stack: Stack, to: str, status: int) -> None:
    response = fetch("GET", f"{stack.url}/forward?to={to}")
    assert response.status_code == status and "secret" not in response.text
    assert response.text.startswith(f"{status} ")  # the web app's error page, not the service's internals


def test_a_stream_that_fails_half_way_is_cut_short(raw: RawHTTP) -> None:
    raw.send("/forward?to=/svc/broken")
    assert raw.head()[0] == 200
    assert raw.chunk() == b"a"
    assert raw.chunk() is None  # closed without the last chunk: the browser knows it is incomplete


def test_head_gets_the_head_alone(stack: Stack) -> None:
    get = fetch("GET", f"{stack.url}/forward?to=/svc/page")
    head = fetch("HEAD", f"{stack.url}/forward?to=/svc/page")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.content))


@pytest.mark.parametrize(("to", "body"), [("/svc/page", b"<p>hello you</p>"),
                                          ("/svc/burst", "".join(f"{n}\n" for n in range(100)).encode())])
def test_http_1_0_gets_an_answer_ended_by_the_close(raw: RawHTTP, to: str, body: bytes) -> None:
    raw.send(f"/forward?to={to}", version="HTTP/1.0")
    status, headers = raw.head()
    assert (status, headers["connection"]) == (200, "close") and "transfer-encoding" not in headers
    assert raw.rest() == body


# -- other transports and misuse ----------------------------------------------------------------------------


def test_behind_wsgi_the_answer_is_relayed(short_tmp: Path) -> None:
    service, _, service_serving = start_service(f"ipc://{short_tmp}/service", None)
    connection = WSGIConnection(port=0)
    web = Brubeck(msg_conn=connection, pool=Pool(), handler_tuples=[(r"^/forward$", ForwardPage)],
                  service_addr=f"ipc://{short_tmp}/service", nowhere=f"ipc://{short_tmp}/nobody")
    connection.start(web)
    url = f"http://127.0.0.1:{connection.port}"
    try:
        page = fetch("GET", f"{url}/forward?to=/svc/page&name=Ada")
        assert (page.status_code, page.text, page.headers["X-Answered-By"]) == (200, "<p>hello Ada</p>", "service")
        assert fetch("GET", f"{url}/forward?to=/svc/burst").text == "".join(f"{n}\n" for n in range(100))
        assert fetch("GET", f"{url}/forward?to=/svc/missing").status_code == 404
    finally:
        stop(web)
        stop(service, service_serving)


def test_behind_mongrel2_without_a_server_name_is_a_configuration_error(short_tmp: Path) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    web = Brubeck(msg_conn=Mongrel2Connection(f"ipc://{short_tmp}/a", f"ipc://{short_tmp}/b", context=context),
                  handler_tuples=[(r"^/forward$", ForwardPage)], service_addr=f"ipc://{short_tmp}/service",
                  nowhere="")
    headers = build_request_headers("GET", "/forward")
    try:
        response = web.handle(Request(SENDER, "3", "/forward", headers, b""))
        assert isinstance(response, HTTPResponse) and response.status_code == 500
    finally:
        web.close()
        context.destroy(linger=0)
