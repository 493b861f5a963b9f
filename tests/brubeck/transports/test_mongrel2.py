"""Mongrel2Connection against a fake Mongrel2: real ZeroMQ sockets bound where Mongrel2 binds them.

The fake pushes request frames and reads the reply frames the connection publishes, so these tests see
exactly what Mongrel2 would receive: which connection a reply goes to, when a close frame follows, and
when nothing is sent at all. test_mongrel2_integration.py repeats the essentials through a
real Mongrel2 and real HTTP.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq

from brubeck.application import Brubeck
from brubeck.connections import Mongrel2Connection
from brubeck.request import Request
from brubeck.wire.mongrel2 import HeaderValue, Mongrel2Message, build_message
from tests.brubeck.fake_mongrel2 import SENDER, FakeMongrel2
from tests.brubeck.http_client import parse_response
from tests.brubeck.sample_app import build_app, stop


@dataclass
class Served:
    fake: FakeMongrel2
    connection: Mongrel2Connection
    app: Brubeck


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


@contextmanager
def serve(context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path, **options: Any) -> Iterator[Served]:
    """The sample app on a Mongrel2Connection to a fresh fake Mongrel2, ready to answer."""
    fake = FakeMongrel2(context)
    connection = Mongrel2Connection(fake.send_spec, fake.recv_spec, **options)
    app = build_app(connection, upload_root=str(tmp_path))
    serving = gevent.spawn(connection.process_messages, app)
    try:
        fake.wait_until_subscribed()
        yield Served(fake, connection, app)
    finally:
        stop(app, connection, serving)


@pytest.fixture
def served(context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path) -> Iterator[Served]:
    with serve(context, tmp_path) as running:
        yield running


def test_a_request_is_answered_on_its_connection(served: Served) -> None:
    conn_id = served.fake.request("GET", "/hello?name=zmq")
    sender, conn_ids, body = served.fake.reply()
    assert (sender, conn_ids) == (SENDER, [conn_id])
    assert parse_response(body)[::2] == (200, b"hello zmq")


def test_an_http_11_connection_is_left_open(served: Served) -> None:
    first = served.fake.request("GET", "/hello")
    second = served.fake.request("GET", "/hello")
    # Had the first reply been followed by a close frame, that frame would come second.
    frames = [served.fake.reply() for _ in range(2)]
    assert [(ids, parse_response(body)[0]) for _, ids, body in frames] == [([first], 200), ([second], 200)]


@pytest.mark.parametrize("headers", [{"connection": "close"}, {"VERSION": "HTTP/1.0"}],
                         ids=["connection-close", "http-1.0"])
def test_a_reply_is_followed_by_a_close_frame_when_the_client_wants_it(served: Served,
                                                                         headers: dict[str, HeaderValue]) -> None:
    conn_id = served.fake.request("GET", "/hello", headers)
    assert parse_response(served.fake.reply()[2])[0] == 200
    assert served.fake.reply() == (SENDER, [conn_id], b"")


def test_a_disconnect_notice_is_never_answered(served: Served) -> None:
    served.fake.send(build_message(Mongrel2Message(SENDER, "77", "@*", {"METHOD": "JSON"},
                                                   b'{"type":"disconnect"}')))
    served.fake.send(build_message(Mongrel2Message(SENDER, "78", "@*", {"METHOD": "JSON"},
                                                   b'{"type":"disconnect"}', "tnetstring")))
    conn_id = served.fake.request("GET", "/ping")
    assert served.fake.reply()[1] == [conn_id]


def test_upload_start_is_not_answered_and_upload_done_is_handled(served: Served, tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "upload.AbC123").write_bytes(b"u" * 5000)
    start = {"content-length": "5000", "x-mongrel2-upload-start": "/tmp/upload.AbC123"}
    first = served.fake.request("POST", "/big", start)
    done = served.fake.request("POST", "/big", {**start, "x-mongrel2-upload-done": "/tmp/upload.AbC123"})
    _, conn_ids, body = served.fake.reply()
    assert conn_ids == [done] != [first]
    digest = hashlib.sha256(b"u" * 5000).hexdigest()
    assert parse_response(body)[2] == b'{"size":5000,"sha256":"%s","via":"upload"}' % digest.encode()
    assert not (tmp_path / "tmp" / "upload.AbC123").exists()  # the sample handler removes what it read


GARBAGE_WITH_AN_ID = [b"S 9 / garbage", b"S 9 /x 99:{},0:,", b'S 9 /x 2:{},3:ab,', b"S 9 /x 2:[],0:,"]
GARBAGE = [b"", b"\xff" * 64, b"no spaces", b"S x / 2:{},0:,"]


def test_garbage_frames_get_a_400_when_they_name_a_connection_and_never_stop_serving(served: Served) -> None:
    for frame in GARBAGE + GARBAGE_WITH_AN_ID:
        served.fake.send(frame)
    for _ in GARBAGE_WITH_AN_ID:
        sender, conn_ids, body = served.fake.reply()
        assert (sender, conn_ids) == ("S", ["9"])
        assert parse_response(body)[0] == 400
        assert served.fake.reply() == ("S", ["9"], b"")
    conn_id = served.fake.request("GET", "/hello")
    assert served.fake.reply()[1] == [conn_id]


@pytest.mark.parametrize("frame", GARBAGE + GARBAGE_WITH_AN_ID)
def test_accept_and_answer_never_raise_on_garbage(served: Served, frame: bytes) -> None:
    request = served.connection.accept(served.app, frame)
    if request is not None:
        served.connection.answer(served.app, request)


def test_a_raising_handler_is_a_500_and_the_next_request_is_served(served: Served) -> None:
    served.fake.request("GET", "/boom")
    assert parse_response(served.fake.reply()[2])[0] == 500
    served.fake.request("GET", "/hello")
    assert parse_response(served.fake.reply()[2])[0] == 200


def test_a_route_returning_no_http_response_is_a_500_not_silence(served: Served) -> None:
    conn_id = served.fake.request("GET", "/not-http")
    _, conn_ids, body = served.fake.reply()
    assert conn_ids == [conn_id]
    assert parse_response(body)[0] == 500


def test_a_deferred_reply_is_sent_to_the_request_s_connection(served: Served) -> None:
    conn_id = served.fake.request("GET", "/deferred")
    _, conn_ids, body = served.fake.reply()
    assert conn_ids == [conn_id]
    assert parse_response(body)[2] == b"answered later"


def test_tnetstring_requests_are_served_like_json_ones(served: Served) -> None:
    conn_id = served.fake.request("GET", "/hello?name=tnet", protocol="tnetstring")
    _, conn_ids, body = served.fake.reply()
    assert conn_ids == [conn_id]
    assert parse_response(body)[2] == b"hello tnet"


def test_a_body_over_max_body_size_is_a_413(context: zmq.Context[zmq.Socket[bytes]], tmp_path: Path) -> None:
    with serve(context, tmp_path, max_body_size=100) as served:
        served.fake.request("POST", "/echo", {"content-type": "text/plain"}, b"x" * 101)
        assert parse_response(served.fake.reply()[2])[0] == 413
        served.fake.request("POST", "/echo", {"content-type": "text/plain"}, b"x" * 100)
        assert parse_response(served.fake.reply()[2])[0] == 200


def test_a_reply_to_many_connections_is_split_at_mongrel2_s_target_limit(served: Served) -> None:
    conn_ids = [str(n) for n in range(300)]
    served.connection.reply_bulk(SENDER, conn_ids, b"broadcast")
    frames = [served.fake.reply() for _ in range(3)]
    assert [ids for _, ids, _ in frames] == [conn_ids[:128], conn_ids[128:256], conn_ids[256:]]
    assert {(sender, body) for sender, _, body in frames} == {(SENDER, b"broadcast")}


def test_send_and_close_connection_address_one_client(served: Served) -> None:
    served.connection.send(SENDER, 5, "text is sent as utf-8: \u00e9")
    assert served.fake.reply() == (SENDER, ["5"], "text is sent as utf-8: \u00e9".encode())
    served.connection.close_connection(Request(SENDER, "6", "/", {}, b""))
    assert served.fake.reply() == (SENDER, ["6"], b"")


def test_closing_leaves_a_given_context_usable(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    fake = FakeMongrel2(context)
    connection = Mongrel2Connection(fake.send_spec, fake.recv_spec, context=context)
    connection.close()
    connection.close()  # closing twice is harmless
    assert not context.closed
    context.socket(zmq.PUB).close()
