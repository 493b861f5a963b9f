"""Fuzz target: request bodies and query strings (`brubeck.forms.parse_body`, `parse_query`).

The input is a Content-Type line, a newline, then the body (the line is read as latin-1, as Mongrel2 may
pass header bytes that are not UTF-8): so the fuzzer varies the media type, boundary and charset as well
as the urlencoded or multipart bytes. The whole input is also parsed as a query string.

Oracle: `parse_body` adds str fields and `UploadedFile`s, or raises brubeck's `ProtocolError`;
`parse_query` never raises, and what it returns, urlencoded again, parses back into the same arguments.
"""

from __future__ import annotations

from urllib.parse import urlencode

from brubeck.errors import ProtocolError
from brubeck.forms import Arguments, Files, UploadedFile, parse_body, parse_query
from fuzz import Mismatch, same


def check(data: bytes) -> None:
    content_type, _, body = data.partition(b"\n")
    arguments: Arguments = {}
    files: Files = {}
    try:
        parse_body(content_type.decode("latin-1"), body, arguments, files)
    except ProtocolError:
        pass
    else:
        fields_are_text = all(isinstance(v, str) for values in arguments.values() for v in values)
        files_are_files = all(isinstance(f, UploadedFile) and isinstance(f.body, bytes)
                              for uploads in files.values() for f in uploads)
        if not (fields_are_text and files_are_files):
            raise Mismatch(f"parse_body gave {arguments!r:.200} and {files!r:.200}")
    query = parse_query(data)
    same(parse_query(urlencode(query, doseq=True)), query, "parse_query(urlencode(query))")
