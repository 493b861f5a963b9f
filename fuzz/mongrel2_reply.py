"""Fuzz target: a handler's reply frame as Mongrel2 reads it (`brubeck.wire.mongrel2.parse_reply`).

Oracle: any bytes parse into (sender, connection ids, body) or raise brubeck's `ProtocolError`; a reply that
parses, built again by `build_reply`, parses back into the same parts.
"""

from __future__ import annotations

from brubeck.errors import ProtocolError
from brubeck.wire.mongrel2 import MAX_REPLY_TARGETS, build_reply, parse_reply
from fuzz import same


def check(data: bytes) -> None:
    try:
        reply = parse_reply(data)
    except ProtocolError:
        return
    sender, conn_ids, body = reply
    if len(conn_ids) <= MAX_REPLY_TARGETS:  # more is parsed, but build_reply refuses to write it
        same(parse_reply(build_reply(sender, conn_ids, body)), reply, "parse_reply(build_reply(reply))")
