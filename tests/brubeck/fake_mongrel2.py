"""A fake Mongrel2: the two handler sockets Mongrel2 binds, on loopback TCP, driven by the test.

Push request frames in, read the reply frames a Mongrel2Connection publishes. Used alone
(transports/test_mongrel2.py) or beside a real Mongrel2 as an extra peer of the app's sockets
(transports/test_mongrel2_integration.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import gevent
import zmq.green as zmq

from brubeck.wire.mongrel2 import HeaderValue, Mongrel2Message, build_message, build_request_headers, parse_reply

SENDER = "0a7d2c1e-5b4f-4e3a-9c8d-112233445566"
WAIT = 5.0  # seconds any one expected frame may take before the test fails


class FakeMongrel2:
    """Mongrel2's side of the handler sockets: a bound PUSH for requests and a bound SUB for replies."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], first_conn_id: int = 1) -> None:
        self.push = context.socket(zmq.PUSH)
        self.sub = context.socket(zmq.SUB)
        for sock in (self.push, self.sub):
            sock.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.send_spec = f"tcp://127.0.0.1:{self.push.bind_to_random_port('tcp://127.0.0.1')}"
        self.recv_spec = f"tcp://127.0.0.1:{self.sub.bind_to_random_port('tcp://127.0.0.1')}"
        self._conn_ids = itertools.count(first_conn_id)

    def send(self, frame: bytes) -> None:
        self.push.send(frame)

    def request(self, method: str, target: str, headers: Mapping[str, HeaderValue] | None = None,
                body: bytes = b"", protocol: str = "json") -> str:
        """Push a request frame for a new client connection; return that connection's id."""
        conn_id = str(next(self._conn_ids))
        all_headers = build_request_headers(method, target, headers)
        message = Mongrel2Message(SENDER, conn_id, str(all_headers["PATH"]), all_headers, body,
                                  "tnetstring" if protocol == "tnetstring" else "json")
        self.send(build_message(message))
        return conn_id

    def reply(self, timeout: float = WAIT) -> tuple[str, list[str], bytes]:
        """The next reply frame: (sender, connection ids, body)."""
        with gevent.Timeout(timeout):
            return parse_reply(self.sub.recv())

    def wait_until_subscribed(self, timeout: float = 10.0) -> None:
        """Ping until a reply arrives: until then a PUB drops what it sends."""
        with gevent.Timeout(timeout):
            while True:
                conn_id = self.request("GET", "/ping")
                try:
                    while self.reply(timeout=0.2)[1] != [conn_id]:
                        pass  # the answer to an earlier ping
                    return
                except gevent.Timeout:
                    continue
