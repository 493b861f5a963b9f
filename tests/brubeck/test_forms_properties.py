"""Properties of the form parsers (brubeck/forms.py), for inputs Hypothesis makes.

Any Content-Type and body, and real bodies damaged a few bytes at a time, add fields and files or raise
brubeck's `ProtocolError`, never another exception; a query string or a multipart body built from fields
and files parses back into them. The examples in test_forms.py are the golden cases.
"""

from __future__ import annotations

from urllib.parse import urlencode

from hypothesis import example, given
from hypothesis import strategies as st

from brubeck.errors import ProtocolError
from brubeck.forms import Arguments, Files, UploadedFile, parse_body, parse_query
from tests.brubeck.test_forms import BOUNDARY, MULTIPART
from tests.strategies import PROPERTIES, mutated

URLENCODED = b"name=world&x=1&x=2&message=hello+there%21&empty="
# A field and a file in an unknown or non-text charset (both were LookupError).
LATIN0_PART = (b'--X\r\nContent-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=latin-0\r\n'
               b"\r\nvalue\r\n--X--\r\n")
PLAIN_PART = b'--X\r\nContent-Disposition: form-data; name="a"\r\n\r\nvalue\r\n--X--\r\n'


def parsed(content_type: str, body: bytes) -> tuple[Arguments, Files] | None:
    """What `parse_body` adds, or None when it raised ProtocolError; checks the types of what it adds."""
    arguments: Arguments = {}
    files: Files = {}
    try:
        parse_body(content_type, body, arguments, files)
    except ProtocolError:
        return None
    assert all(isinstance(value, str) for values in arguments.values() for value in values)
    assert all(isinstance(upload, UploadedFile) and isinstance(upload.body, bytes)
               for uploads in files.values() for upload in uploads)
    return arguments, files


content_types = st.sampled_from([
    "application/x-www-form-urlencoded", f"multipart/form-data; boundary={BOUNDARY}", "multipart/form-data",
    "multipart/form-data; boundary=X", "multipart/form-data; boundary=X; charset=latin-1", "application/json",
]) | st.text()


@PROPERTIES
@given(content_types, st.binary())
@example("multipart/form-data; boundary=X", LATIN0_PART)
@example("multipart/form-data; boundary=X; charset=rot13", PLAIN_PART)
@example("multipart/form-data; boundary=X; charset=nope", PLAIN_PART)
@example("multipart/form-data; boundary=X; charset=utf-16", PLAIN_PART)
@example('multipart/form-data; boundary="', PLAIN_PART)
def test_any_body_adds_fields_and_files_or_raises_protocol_error(content_type: str, body: bytes) -> None:
    parsed(content_type, body)


@PROPERTIES
@given(mutated([MULTIPART]))
def test_a_damaged_multipart_body_adds_fields_and_files_or_raises_protocol_error(body: bytes) -> None:
    parsed(f"multipart/form-data; boundary={BOUNDARY}", body)


@PROPERTIES
@given(mutated([URLENCODED]))
def test_a_damaged_urlencoded_body_adds_fields(body: bytes) -> None:
    assert parsed("application/x-www-form-urlencoded", body) is not None


@PROPERTIES
@given(st.text() | st.binary())
@example(b"a=%ff&%zz=1&&=&a")
def test_any_query_string_parses_into_text_arguments(query: str | bytes) -> None:
    arguments = parse_query(query)
    assert all(isinstance(value, str) for values in arguments.values() for value in values)


@PROPERTIES
@given(st.dictionaries(st.text(), st.lists(st.text(), min_size=1, max_size=3), max_size=5))
def test_urlencoded_arguments_parse_back(arguments: Arguments) -> None:
    assert parse_query(urlencode(arguments, doseq=True)) == arguments


# Part names and file names go in a quoted-string; leave out what it would have to escape.
quotable = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cc", "Cs")), max_size=20)
Part = tuple[str, str | None, str | None, bytes]


@st.composite
def parts(draw: st.DrawFn) -> Part:
    name = draw(quotable.filter(bool))
    if draw(st.booleans()):
        return name, None, None, draw(st.text(max_size=40)).encode()
    content_type = draw(st.sampled_from([None, "text/plain", "application/octet-stream", "image/png"]))
    # (A file name, as a browser sends one: an empty one is a file input left empty, whose default type the
    # multipart package has changed between versions.)
    return name, draw(quotable.filter(bool)), content_type, draw(st.binary(max_size=200))


def multipart_body(boundary: str, form: list[Part]) -> bytes:
    chunks = []
    for name, filename, content_type, data in form:
        disposition = f'form-data; name="{name}"' + ("" if filename is None else f'; filename="{filename}"')
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


@PROPERTIES
@given(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), st.lists(parts(), min_size=1, max_size=5))
def test_a_multipart_body_parses_back_into_its_fields_and_files(boundary: str, form: list[Part]) -> None:
    delimiter = f"\r\n--{boundary}".encode()
    if any(delimiter in b"\r\n" + data + b"\r\n" for _, _, _, data in form):
        return  # the data holds the delimiter: no body can carry it with this boundary
    arguments: Arguments = {}
    files: Files = {}
    for name, filename, content_type, data in form:
        if filename is None:
            arguments.setdefault(name, []).append(data.decode())
        else:
            files.setdefault(name, []).append(
                UploadedFile(filename, content_type or "application/octet-stream", data))
    assert parsed(f"multipart/form-data; boundary={boundary}", multipart_body(boundary, form)) == (arguments, files)
