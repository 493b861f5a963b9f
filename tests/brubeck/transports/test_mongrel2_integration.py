"""The sample application behind a REAL Mongrel2, over real HTTP.

Mongrel2 runs as its own process (brubeck.testing.Mongrel2Server); the application runs in this process's
gevent hub with Mongrel2Connection.process_messages; clients run in OS threads (see http_client.py). What
both transports must do alike is in test_both_transports.py; this module holds what is Mongrel2's own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
import zmq.green as zmq

from brubeck.connections import Mongrel2Connection
from tests.brubeck.conftest import UPLOAD_THRESHOLD
from tests.brubeck.fake_mongrel2 import SENDER, FakeMongrel2
from tests.brubeck.http_client import (
    fetch,
    parse_response,
    send_until_closed,
)
from tests.brubeck.sample_app import Running

pytestmark = pytest.mark.mongrel2



def test_what_the_handler_sees_of_a_request(behind_mongrel2: Running) -> None:
    seen = fetch("GET", f"{behind_mongrel2.url}/echo?x=1&x=2", headers={"Cookie": "a=b; c=d"}).json()
    assert (seen["method"], seen["path"], seen["url"], seen["version"]) == ("GET", "/echo", "/echo?x=1&x=2",
                                                                           "HTTP/1.1")
    assert (seen["arguments"], seen["cookies"]) == ({"x": ["1", "2"]}, {"a": "b", "c": "d"})











def mongrel2_connection(running: Running) -> Mongrel2Connection:
    assert isinstance(running.connection, Mongrel2Connection)
    return running.connection


@pytest.fixture
def observer(behind_mongrel2: Running) -> Iterator[FakeMongrel2]:
    """A second, fake Mongrel2 the app's sockets also connect to: a way into its PULL path and a view of
    what it publishes. Its connection ids are far above any real Mongrel2 would use here."""
    connection = mongrel2_connection(behind_mongrel2)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake = FakeMongrel2(context, first_conn_id=900_000)
    connection.in_sock.connect(fake.send_spec)
    connection.out_sock.connect(fake.recv_spec)
    try:
        fake.wait_until_subscribed()
        yield fake
    finally:
        context.destroy(linger=0)


# Garbage naming no readable sender and connection id, and garbage that does (answered with a 400 there:
# an id no real Mongrel2 connection has here, and the fake's sender, so the answer reaches no real client).
GARBAGE = [b"", b"\xff" * 64, b"no spaces", b"S x / 2:{},0:,"]
GARBAGE_WITH_AN_ID = [b"%s 900999 / garbage", b"%s 900999 /x 99:{},0:,", b"%s 900999 /x 2:[],0:,",
                      b"%s 900999 / 2:{},0:,trailing"]


def test_malformed_frames_in_the_pull_path_do_not_stop_the_app(behind_mongrel2: Running,
                                                               observer: FakeMongrel2) -> None:
    for frame in GARBAGE + [frame % SENDER.encode() for frame in GARBAGE_WITH_AN_ID]:
        observer.send(frame)
    # Frames from one peer are served in order, so once the last is answered all the garbage has been read.
    for _ in GARBAGE_WITH_AN_ID:
        sender, conn_ids, body = observer.reply()
        assert (sender, conn_ids, parse_response(body)[0]) == (SENDER, ["900999"], 400)
        assert observer.reply() == (SENDER, ["900999"], b"")
    assert behind_mongrel2.serving is not None and not behind_mongrel2.serving.dead
    assert fetch("GET", f"{behind_mongrel2.url}/hello?name=after").text == "hello after"


@pytest.mark.parametrize("frame", [*GARBAGE, *(frame % SENDER.encode() for frame in GARBAGE_WITH_AN_ID)])
def test_accept_and_answer_never_raise_on_garbage(behind_mongrel2: Running, frame: bytes) -> None:
    connection = mongrel2_connection(behind_mongrel2)
    request = connection.accept(behind_mongrel2.app, frame)
    if request is not None:
        connection.answer(behind_mongrel2.app, request)
    assert fetch("GET", f"{behind_mongrel2.url}/hello").status_code == 200


def test_tnetstring_headers(behind_mongrel2_tnetstring: Running) -> None:
    request = (b"GET /echo?x=1&x=2 HTTP/1.1\r\nHost: x\r\nX-Many: one\r\nX-Many: two\r\nX-Name: caf\xe9\r\n"
               b"Cookie: a=b\r\nConnection: close\r\n\r\n")
    status, _, body = parse_response(send_until_closed(behind_mongrel2_tnetstring.port, request))
    assert status == 200
    assert fetch("GET", f"{behind_mongrel2_tnetstring.url}/hello?name=tnet").text == "hello tnet"
    echoed = json.loads(body)
    assert (echoed["method"], echoed["arguments"], echoed["cookies"]) == ("GET", {"x": ["1", "2"]}, {"a": "b"})
    assert (echoed["x-many"], echoed["x-name"]) == (["one", "two"], "caf\u00e9")


def test_a_repeated_header_arrives_as_a_list(behind_mongrel2: Running) -> None:
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Many: one\r\nX-Many: two\r\nConnection: close\r\n\r\n"
    status, _, body = parse_response(send_until_closed(behind_mongrel2.port, request))
    assert status == 200
    assert b'"x-many":["one","two"]' in body


def test_a_large_upload_reaches_the_handler_when_mongrel2_is_done_with_it(
        behind_mongrel2_spooling: Running) -> None:
    body = bytes(i % 251 for i in range(100 * UPLOAD_THRESHOLD))
    response = fetch("POST", f"{behind_mongrel2_spooling.url}/big", data=body)
    # Had the app answered upload-start, Mongrel2 would have cancelled the upload and sent that answer:
    # an empty body, read from the request instead of from the spooled file.
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest(), "via": "upload"}
    small = fetch("POST", f"{behind_mongrel2_spooling.url}/big", data=b"tiny")
    assert small.json()["via"] == "body"
