"""Properties of the error body of a reply (brubeckservice/errors.py), for inputs Hypothesis makes.

`build_error_body` and `parse_error_body` are inverses across the wire's JSON; any decoded body has an
error object or None, never an exception, and so does the message of the `RemoteServiceError` raised for
it. The golden cases are in test_errors.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from brubeckservice.errors import RemoteServiceError, build_error_body, parse_error_body
from brubeckservice.models import ServiceResponse
from tests.strategies import PROPERTIES, json_values


def _not_a_parameter(key: str) -> bool:
    return key not in ("type", "message", "error_type")


extras = st.dictionaries(st.text().filter(_not_a_parameter), json_values, max_size=3)


@PROPERTIES
@given(st.text(), st.text(), extras)
def test_an_error_body_reads_back_from_the_wire(error_type: str, message: str, extra: dict[str, Any]) -> None:
    body = build_error_body(error_type, message, **extra)
    assert parse_error_body(msgspec.json.decode(msgspec.json.encode(body))) == {
        "type": error_type, "message": message, **extra}


@PROPERTIES
@given(json_values | st.dictionaries(st.just("error"), json_values))
@example({"error": {"type": "T", "message": 1}})
@example({"error": {"type": ["T"], "message": "m"}})
def test_any_body_has_an_error_object_or_none(body: Any) -> None:
    error = parse_error_body(body)
    assert error is None or (isinstance(error["type"], str) and isinstance(error["message"], str))
    assert str(RemoteServiceError(ServiceResponse(status_code=500, body=body)))
