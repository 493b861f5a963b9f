"""The one request object every web transport builds: Mongrel2 and WSGI alike.

Headers follow Mongrel2's shape whatever the transport: client header names lowercased, plus upper-case
keys PATH, METHOD, VERSION, URI, QUERY, REMOTE_ADDR, URL_SCHEME. Query and form arguments, files and
cookies are parsed on first use, so a handler that never reads them never pays for them.
"""

from __future__ import annotations

from functools import cached_property

from brubeck.cookies import parse_cookie_header
from brubeck.forms import Arguments, Files, parse_body, parse_query
from brubeck.wire.mongrel2 import HeaderValue, Mongrel2Message, header, is_disconnect_notice, parse_message

UPLOAD_START = "x-mongrel2-upload-start"
UPLOAD_DONE = "x-mongrel2-upload-done"


class Request:
    """An HTTP request as a Brubeck handler sees it (`self.message`)."""

    def __init__(self, sender: str, conn_id: str, path: str, headers: dict[str, HeaderValue],
                 body: bytes, url: str | None = None) -> None:
        self.sender = sender
        self.conn_id = conn_id
        self.path = path
        self.headers = headers
        self.body = body
        self.url = url if url is not None else header(headers, "URI", path)
        self.method = header(headers, "METHOD", "GET")
        self.version = header(headers, "VERSION", "HTTP/1.1")

    @classmethod
    def from_message(cls, message: Mongrel2Message) -> Request:
        return cls(message.sender, message.conn_id, message.path, message.headers, message.body)

    @classmethod
    def parse_msg(cls, raw: bytes) -> Request:
        """A Request from one raw Mongrel2 message frame; `ProtocolError` if it is malformed."""
        return cls.from_message(parse_message(raw))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url!r} conn={self.sender}:{self.conn_id}>"

    # -- what the message is ------------------------------------------------------------------------

    def is_disconnect(self) -> bool:
        """True for Mongrel2's notice that the client went away; it must not be answered."""
        return is_disconnect_notice(self.method, self.path, self.body)

    def should_close(self) -> bool:
        """True when the connection must be closed after the response (Connection: close, HTTP/1.0)."""
        connection = header(self.headers, "connection").lower()
        if connection == "close":
            return True
        return self.version == "HTTP/1.0" and connection != "keep-alive"

    def is_upload_start(self) -> bool:
        """Mongrel2 began spooling a large body to disk; answering now would cancel the upload."""
        return UPLOAD_START in self.headers and UPLOAD_DONE not in self.headers

    def is_upload_done(self) -> bool:
        """Mongrel2 finished spooling a large body to `upload_path` (relative to Mongrel2's chroot)."""
        return UPLOAD_DONE in self.headers

    @property
    def upload_path(self) -> str | None:
        value = header(self.headers, UPLOAD_DONE) or header(self.headers, UPLOAD_START)
        return value or None

    # -- who sent it --------------------------------------------------------------------------------

    @property
    def remote_addr(self) -> str:
        forwarded = header(self.headers, "x-forwarded-for")
        if forwarded:
            return forwarded.split(",")[0].strip()
        return header(self.headers, "REMOTE_ADDR")

    @property
    def content_type(self) -> str:
        return header(self.headers, "content-type")

    @property
    def query_string(self) -> str:
        return header(self.headers, "QUERY")

    # -- parsed on first use ------------------------------------------------------------------------

    @cached_property
    def _form(self) -> tuple[Arguments, Files]:
        arguments = parse_query(self.query_string) if self.query_string else {}
        files: Files = {}
        parse_body(self.content_type, self.body, arguments, files)
        return arguments, files

    @property
    def arguments(self) -> Arguments:
        """Query and form arguments, `{name: [values]}`; a malformed form body raises ProtocolError (400)."""
        return self._form[0]

    @property
    def files(self) -> Files:
        return self._form[1]

    @cached_property
    def cookies(self) -> dict[str, str]:
        return parse_cookie_header(header(self.headers, "cookie"))

    def get_arguments(self, name: str, strip: bool = True) -> list[str]:
        values = self.arguments.get(name, [])
        return [value.strip() for value in values] if strip else list(values)

    def get_argument(self, name: str, default: str | None = None, strip: bool = True) -> str | None:
        """The last value given for `name`, or `default`."""
        values = self.arguments.get(name)
        if not values:
            return default
        return values[-1].strip() if strip else values[-1]

    def get_cookie(self, name: str, default: str | None = None) -> str | None:
        return self.cookies.get(name, default)
