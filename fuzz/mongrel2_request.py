"""Fuzz target: one Mongrel2 request frame, JSON or tnetstring headers (`brubeck.wire.mongrel2.parse_message`).

Oracle: any bytes parse into a `Mongrel2Message` or raise brubeck's `ProtocolError`; a message that parses,
built again by `build_message` (in the header protocol it came in), parses back into the same message.
"""

from __future__ import annotations

from brubeck.errors import ProtocolError
from brubeck.wire.mongrel2 import build_message, parse_message
from fuzz import same


def check(data: bytes) -> None:
    try:
        message = parse_message(data)
    except ProtocolError:
        return
    same(parse_message(build_message(message)), message, "parse(build(message))")
