"""Throws garbage at a service from its own process, then checks the service still answers it.

    python garbage_sender.py SERVICE_ADDR ROUNDS

Each round sends random bytes, wrong frame counts, a b"BRS2" message, an unknown kind and a REQ with a
forged signature. The last three carry a usable id, so the service answers each with an ERR; the script
waits for all of them (at most 10 s) and exits 0 only if every one came back as the ERR it should be. Each
round has a connection of its own: a service closes one that sends 16 refused messages and no signed one
(docs/security.md).
"""

import os
import sys

import zmq

from brubeckservice import envelope
from brubeckservice.clock import now_ms
from brubeckservice.models import ServiceRequest
from brubeckservice.signing import Signer

service_addr, rounds = sys.argv[1], int(sys.argv[2])
expected: dict[bytes, int] = {}
forger = Signer("not the passphrase")

context = zmq.Context()
for n in range(rounds):
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(service_addr)
    sock.send_multipart([os.urandom(32)])
    sock.send_multipart([os.urandom(16) for _ in range(6)])
    sock.send_multipart([envelope.MARKER, envelope.REQ, b"three frames"])
    for kind, marker, status in ((b"REQ", b"BRS2", 505), (b"WHAT", envelope.MARKER, 400)):
        msg_id = b"%s-%d" % (kind, n)
        expected[msg_id] = status
        sock.send_multipart([marker, kind, msg_id, b"{}", b"{}", b"\0" * 32])
    msg_id = b"forged-%d" % n
    expected[msg_id] = 401
    sock.send_multipart(envelope.build_request(forger, msg_id, ServiceRequest(path="/service/slow"),
                                                now_ms(), "forger", n + 1))
    while expected:
        if not sock.poll(10_000):
            sys.exit(f"no answer for {sorted(expected)}")
        env = envelope.parse_envelope(sock.recv_multipart())
        header, _ = envelope.parse_control(env, None, now_ms(), 30_000)
        if env.kind != envelope.ERR or expected.pop(env.msg_id, None) != header.status:
            sys.exit(f"unexpected answer {env.kind!r} {env.msg_id!r} {header.status}")
    sock.close()
print(f"{rounds} rounds of garbage refused")
context.term()
