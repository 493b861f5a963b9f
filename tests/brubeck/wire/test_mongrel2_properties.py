"""Properties of the Mongrel2 handler protocol (brubeck/wire/mongrel2.py), for inputs Hypothesis makes.

Any bytes, and real captures damaged a few bytes at a time, parse into a message or raise brubeck's
`ProtocolError`, never another exception; `build_message` and `parse_message` are inverses in both header
protocols, and so are `build_reply` and `parse_reply`. The golden tables are in test_mongrel2.py.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from brubeck.errors import ProtocolError
from brubeck.wire.mongrel2 import (
    MAX_REPLY_TARGETS,
    Mongrel2Message,
    build_message,
    build_reply,
    parse_message,
    parse_reply,
)
from tests.strategies import PROPERTIES, mutated, nested

CAPTURES = [path.read_bytes() for path in sorted((Path(__file__).resolve().parents[2] / "fixtures" / "mongrel2")
                                                 .glob("*.bin"))]


def tnetstring_nested(depth: int) -> bytes:
    """A tnetstring list inside a list, `depth` deep: `3:0:],]` and so on."""
    value = b"0:]"
    for _ in range(depth):
        value = b"%d:%s]" % (len(value), value)
    return value


def parsed(raw: bytes) -> Mongrel2Message | None:
    """The message in `raw`, or None when `parse_message` refused it with a ProtocolError."""
    try:
        return parse_message(raw)
    except ProtocolError:
        return None


# No space (the framing's separator) in a sender, a path or a reply's sender; never empty.
words = st.text(st.characters(blacklist_characters=" ", blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40)
conn_ids = st.from_regex(r"[0-9]{1,20}", fullmatch=True)
header_values = st.text() | st.lists(st.text(), max_size=3)


@st.composite
def messages(draw: st.DrawFn) -> Mongrel2Message:
    return Mongrel2Message(draw(words), draw(conn_ids), draw(words),
                           draw(st.dictionaries(st.text(), header_values, max_size=8)), draw(st.binary()),
                           draw(st.sampled_from(["json", "tnetstring"])))


@PROPERTIES
@given(st.binary())
@example(b"S 1 / 6:0:]0:,}0:,")              # a list as a tnetstring dict key (was TypeError)
@example(b"S 1 / 1:\x85#0:,")                # a non-ASCII byte in a tnetstring integer (was OverflowError)
@example(b"S 1 / " + tnetstring_nested(2_000) + b"0:,")
@example(b"S 1 / 10000:" + nested(b"[", b"]") + b",0:,")  # JSON nested too deep
@example(b'S 1 / 7:{"a":\xff},0:,')
def test_any_bytes_parse_into_a_message_or_raise_protocol_error(raw: bytes) -> None:
    parsed(raw)


@PROPERTIES
@given(mutated(CAPTURES))
def test_damaged_captures_parse_into_a_message_or_raise_protocol_error(raw: bytes) -> None:
    parsed(raw)


@PROPERTIES
@given(messages())
def test_built_messages_parse_back_into_the_same_message(message: Mongrel2Message) -> None:
    assert parse_message(build_message(message)) == message


@PROPERTIES
@given(mutated(CAPTURES))
@example(b"S 1 / 26:6:METHOD,3:GET,1:a,4:caf\xe9,}0:,")    # latin-1 header bytes, read as text
@example(b'S 1 / 26:{"a":1.5,"b":null,"c":[1,{"d":2}]},0:,')  # JSON that is not all strings
@example(b"S 1 / 13:1:1#1:a,1:b,]}0:,")                     # a tnetstring integer key and list
def test_what_parses_is_built_again_into_a_frame_that_parses_the_same(raw: bytes) -> None:
    message = parsed(raw)
    if message is not None:
        assert parse_message(build_message(message)) == message


@PROPERTIES
@given(st.binary())
@example(b"S 1:\xb5, ")                        # a non-ASCII id (was UnicodeDecodeError)
@example(b"S 4:1 x2, body")                    # an id that is not a number
@example(b"S 0:, body")                        # no id at all
@example(b"S " + tnetstring_nested(2_000) + b" body")
@example(b"S 1:\x85# body")
def test_any_bytes_parse_into_a_reply_or_raise_protocol_error(raw: bytes) -> None:
    try:
        _, ids, _ = parse_reply(raw)
    except ProtocolError:
        return
    assert ids and all(conn_id.isascii() and conn_id.isdigit() for conn_id in ids)


@PROPERTIES
@given(words, st.lists(conn_ids, min_size=1, max_size=MAX_REPLY_TARGETS), st.binary())
def test_built_replies_parse_back_into_the_same_parts(sender: str, ids: list[str], body: bytes) -> None:
    assert parse_reply(build_reply(sender, ids, body)) == (sender, ids, body)
