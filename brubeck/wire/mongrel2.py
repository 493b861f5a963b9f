"""The Mongrel2 handler protocol, both directions, as pure functions.

Request (Mongrel2 -> handler), one ZeroMQ frame::

    message  = sender SP conn-id SP path SP headers body
    headers  = netstring(JSON object)          ; Handler(protocol='json'), the default
             / tnetstring(dict)                ; Handler(protocol='tnetstring')
    body     = netstring(raw bytes)
    netstring = length ":" bytes ","           ; length is decimal, no leading sign

Reply (handler -> Mongrel2), one ZeroMQ frame::

    reply    = sender SP netstring(conn-id *(SP conn-id)) SP raw-body

An empty reply body closes the listed connections. A netstring is exactly a tnetstring whose type tag is
",", so the `tnetstring` package parses both header encodings and the body.

A disconnect notice is a request with path "@*", headers {"METHOD": "JSON"} and body
{"type": "disconnect"}; a handler must not answer it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import tnetstring

from brubeck.errors import ProtocolError

HeaderValue = str | list[str]
Headers = dict[str, HeaderValue]
HeaderProtocol = Literal["json", "tnetstring"]

#: Mongrel2's default `limits.handler_targets`: at most this many connection ids in one reply.
MAX_REPLY_TARGETS = 128

_json_decoder = msgspec.json.Decoder()
_typed_headers = msgspec.json.Decoder(dict[str, str | list[str]]).decode
_json_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Mongrel2Message:
    """One message from Mongrel2: who sent it, for which connection, and the HTTP request it carries."""

    sender: str
    conn_id: str
    path: str
    headers: Headers = field(default_factory=dict)
    body: bytes = b""
    protocol: HeaderProtocol = "json"

    @property
    def method(self) -> str:
        value = self.headers.get("METHOD", "")
        return value if isinstance(value, str) else value[0]

    def is_disconnect(self) -> bool:
        """True for Mongrel2's notice that a client went away (never answer it)."""
        return is_disconnect_notice(self.method, self.path, self.body)


def is_disconnect_notice(method: str, path: str, body: bytes) -> bool:
    """Mongrel2's notice that a client went away: METHOD JSON, path "@*", body {"type":"disconnect"}."""
    return method == "JSON" and path == "@*" and body.startswith(b'{"type":"disconnect"')


def _text(value: bytes) -> str:
    # Header bytes are ASCII in practice; latin-1 keeps any other byte instead of failing the request.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _header_value(value: object) -> HeaderValue:
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return [item if isinstance(item, str) else _text(item) if isinstance(item, bytes) else str(item)
                for item in value]
    return str(value)


def _decode_headers(raw: object) -> tuple[Headers, HeaderProtocol]:
    if isinstance(raw, bytes):  # netstring holding JSON
        try:
            # The usual case: an object of strings and lists of strings, checked by msgspec as it decodes.
            return _typed_headers(raw), "json"
        except (msgspec.DecodeError, UnicodeDecodeError):
            # Something unusual: a number, not an object, or bytes that are not UTF-8. Which exception msgspec
            # raises for invalid UTF-8 changed between versions (UnicodeDecodeError, then DecodeError), so the
            # careful path decides about the bytes itself and hands msgspec text.
            pass
        try:
            # Mongrel2 copies a client's header bytes into the JSON unchanged, so a latin-1 header value makes
            # the block invalid UTF-8; read it as latin-1 rather than fail the request (as _text).
            decoded = _json_decoder.decode(_text(raw))
        except (msgspec.DecodeError, RecursionError) as exc:  # (RecursionError: nested too deep)
            raise ProtocolError(f"Mongrel2 headers are not valid JSON: {exc}") from None
        protocol: HeaderProtocol = "json"
    elif isinstance(raw, dict):
        decoded, protocol = raw, "tnetstring"
    else:
        raise ProtocolError(f"Mongrel2 headers must be a JSON netstring or a tnetstring dict: {raw!r:.40}")
    if not isinstance(decoded, dict):
        raise ProtocolError("Mongrel2 headers are not an object")
    headers: Headers = {}
    for key, value in decoded.items():
        name = _text(key) if isinstance(key, bytes) else str(key)
        headers[name] = _header_value(value)
    return headers, protocol


def _pop(data: bytes, what: str) -> tuple[object, bytes]:
    """`tnetstring.pop`, its every complaint about the bytes a `ProtocolError` starting with `what`."""
    try:
        popped: tuple[object, bytes] = tnetstring.pop(data)
        return popped
    except (ValueError, RecursionError) as exc:  # (RecursionError: nested too deep)
        problem = str(exc)
    except TypeError as exc:  # a list or a dict as the key of a dict
        problem = f"a tnetstring dict has an unhashable key ({exc})"
    except OverflowError:  # tnetstring3 fails to quote a non-ASCII byte of an integer in its ValueError
        problem = "a tnetstring integer holds a byte that is not ASCII"
    raise ProtocolError(f"{what}: {problem}")


def parse_message(raw: bytes) -> Mongrel2Message:
    """Parse one raw Mongrel2 request frame; raise `ProtocolError` on anything malformed."""
    parts = raw.split(b" ", 3)
    if len(parts) != 4:
        raise ProtocolError("Mongrel2 message needs 'SENDER ID PATH' before its netstrings")
    sender, conn_id, path, rest = parts
    if not sender or not conn_id.isdigit() or not path:
        raise ProtocolError("Mongrel2 message has an empty sender or path, or a non-numeric connection id")
    raw_headers, rest = _pop(rest, "Mongrel2 message has a malformed netstring")
    body, rest = _pop(rest, "Mongrel2 message has a malformed netstring")
    if rest:
        raise ProtocolError(f"Mongrel2 message has {len(rest)} trailing bytes")
    if not isinstance(body, bytes):
        raise ProtocolError("Mongrel2 message body is not a netstring")
    headers, protocol = _decode_headers(raw_headers)
    return Mongrel2Message(_text(sender), conn_id.decode("ascii"), _text(path), headers, body, protocol)


def _netstring(data: bytes) -> bytes:
    return b"%d:%s," % (len(data), data)


def _tnet_headers(headers: Headers) -> bytes:
    # tnetstring.dumps writes a dict's keys in reverse order; the inverse of parse_message keeps them in order.
    #   dict = SIZE ":" *(netstring(name) (netstring(value) / SIZE ":" *netstring(value) "]")) "}"
    parts: list[bytes] = []
    for name, value in headers.items():
        parts.append(_netstring(name.encode("utf-8")))
        if isinstance(value, str):
            parts.append(_netstring(value.encode("utf-8")))
        else:
            items = b"".join(_netstring(item.encode("utf-8")) for item in value)
            parts.append(b"%d:%s]" % (len(items), items))
    payload = b"".join(parts)
    return b"%d:%s}" % (len(payload), payload)


def build_request_headers(method: str, target: str, headers: Mapping[str, HeaderValue] | None = None, *,
                          version: str = "HTTP/1.1", remote_addr: str | None = None,
                          url_scheme: str | None = None) -> Headers:
    """The headers Mongrel2 gives a handler for `METHOD target` (target: path and optional ?query): its own
    PATH, METHOD, VERSION, URI, QUERY (only when the target has a query, as Mongrel2 does), REMOTE_ADDR and
    URL_SCHEME when given, then the client's `headers` (lower-case names, as Mongrel2 passes them; a given
    name replaces a derived one). The inverse, for tests and other transports, of what a real Mongrel2
    sends (tests/fixtures/mongrel2/)."""
    path, has_query, query = target.partition("?")
    derived: Headers = {"PATH": path, "METHOD": method, "VERSION": version, "URI": target}
    if has_query:
        derived["QUERY"] = query
    if remote_addr is not None:
        derived["REMOTE_ADDR"] = remote_addr
    if url_scheme is not None:
        derived["URL_SCHEME"] = url_scheme
    return {**derived, **headers} if headers else derived


def build_message(message: Mongrel2Message) -> bytes:
    """The inverse of `parse_message`: the frame Mongrel2 would send (for tests and test clients)."""
    if message.protocol == "tnetstring":
        headers = _tnet_headers(message.headers)
    else:
        headers = _netstring(_json_encoder.encode(message.headers))
    head = f"{message.sender} {message.conn_id} {message.path} ".encode()
    return head + headers + _netstring(message.body)


def build_reply(sender: str | bytes, conn_ids: Iterable[str | int], body: bytes) -> bytes:
    """A reply frame sending `body` to each connection id (at most `MAX_REPLY_TARGETS` of them)."""
    ids = " ".join(str(conn_id) for conn_id in conn_ids).encode("ascii")
    if not ids:
        raise ValueError("a Mongrel2 reply needs at least one connection id")
    if ids.count(b" ") >= MAX_REPLY_TARGETS:
        raise ValueError(f"a Mongrel2 reply targets at most {MAX_REPLY_TARGETS} connections")
    if isinstance(sender, str):
        sender = sender.encode("utf-8")
    return b"%s %s %s" % (sender, _netstring(ids), body)


def parse_reply(raw: bytes) -> tuple[str, list[str], bytes]:
    """Parse a reply frame into (sender, conn_ids, body): what Mongrel2 does with our replies."""
    sender, _, rest = raw.partition(b" ")
    ids, rest = _pop(rest, "Mongrel2 reply has a malformed id netstring")
    if not isinstance(ids, bytes) or not rest.startswith(b" "):
        raise ProtocolError("Mongrel2 reply needs 'SENDER SIZE:IDS, BODY'")
    conn_ids = ids.split(b" ")
    if not all(conn_id.isdigit() for conn_id in conn_ids):  # (bytes.isdigit: ASCII digits only)
        raise ProtocolError(f"Mongrel2 reply ids must be decimal numbers, one space apart: {ids[:40]!r}")
    return _text(sender), [conn_id.decode("ascii") for conn_id in conn_ids], rest[1:]


def header(headers: Mapping[str, HeaderValue], name: str, default: str = "") -> str:
    """One header's value (the last one when repeated); names are looked up as given, then lowercased."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        return default
    return value if isinstance(value, str) else (value[-1] if value else default)
