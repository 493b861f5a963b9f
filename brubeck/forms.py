"""Request arguments: the query string and form bodies (urlencoded and multipart), as pure functions.

Arguments are `{name: [value, ...]}` (a name may repeat); uploaded files are `{name: [UploadedFile, ...]}`.
Parsing uses `urllib.parse` and the `multipart` package; nothing is hand-rolled.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from urllib.parse import parse_qs

import multipart

from brubeck.errors import ProtocolError

Arguments = dict[str, list[str]]


@dataclass(slots=True)
class UploadedFile:
    """One file from a multipart form. `file["body"]` works too, as in Brubeck 0.4."""

    filename: str
    content_type: str
    body: bytes

    def __getitem__(self, key: str) -> str | bytes:
        if key not in ("filename", "content_type", "body"):
            raise KeyError(key)
        value: str | bytes = getattr(self, key)
        return value


Files = dict[str, list[UploadedFile]]


def parse_query(query: str | bytes, into: Arguments | None = None) -> Arguments:
    """Parse `a=1&a=2&b=` into {'a': ['1', '2'], 'b': ['']}, adding to `into` when given."""
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    arguments: Arguments = {} if into is None else into
    for name, values in parse_qs(query, keep_blank_values=True).items():
        arguments.setdefault(name, []).extend(values)
    return arguments


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    media_type, options = multipart.parse_options_header(content_type)
    return media_type.lower(), options


def parse_body(content_type: str, body: bytes, arguments: Arguments, files: Files) -> None:
    """Add the form fields and files of `body` to `arguments` and `files`; other bodies are left alone.

    Raises `ProtocolError` (400) when a body declared as a form does not parse.
    """
    if not body or not content_type:
        return
    media_type, options = _media_type(content_type)
    if media_type == "application/x-www-form-urlencoded":
        parse_query(body, into=arguments)
    elif media_type == "multipart/form-data":
        boundary = options.get("boundary")
        if not boundary:
            raise ProtocolError("multipart/form-data body without a boundary")
        _parse_multipart(body, boundary, options.get("charset", "utf8"), arguments, files)


def _parse_multipart(body: bytes, boundary: str, charset: str, arguments: Arguments, files: Files) -> None:
    try:
        parser = multipart.MultipartParser(io.BytesIO(body), boundary, len(body), charset=charset,
                                           strict=True)
        for part in parser:
            if part.filename is not None:
                content_type = part.content_type or "application/octet-stream"
                files.setdefault(part.name, []).append(UploadedFile(part.filename, content_type, part.raw))
            else:
                arguments.setdefault(part.name, []).append(part.value)
    except (multipart.MultipartError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed multipart/form-data body: {exc}") from None
    except LookupError as exc:  # the charset parameter names no text encoding ('latin-0', 'rot13')
        raise ProtocolError(f"multipart/form-data body in an unknown charset: {exc}") from None
