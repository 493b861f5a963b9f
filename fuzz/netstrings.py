"""Fuzz target: the netstrings and tnetstrings of a Mongrel2 request (headers, then body), after a fixed
`SENDER ID PATH ` prefix, so that every mutation lands in the part `tnetstring.pop` and the JSON and
tnetstring header decoders read.

Oracle: that of `fuzz.mongrel2_request`, for the frame `PREFIX + data`.
"""

from __future__ import annotations

from fuzz import mongrel2_request

PREFIX = b"54c6755b-9628-40dc-9a7d-5bc6e6a1f6f1 7 /hello "


def check(data: bytes) -> None:
    mongrel2_request.check(PREFIX + data)
