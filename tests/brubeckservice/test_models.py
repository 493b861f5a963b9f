"""ServiceRequest and ServiceResponse: what handlers read and what callers get back."""

from __future__ import annotations

import time

import msgspec
import pytest

from brubeckservice.errors import RemoteServiceError
from brubeckservice.models import ServiceRequest, ServiceResponse


def test_a_request_defaults_to_the_request_method_and_no_arguments() -> None:
    before = int(time.time() * 1000)
    request = ServiceRequest(path="/service/slow")
    after = int(time.time() * 1000)
    assert (request.method, request.arguments, request.headers, request.conn_id) == ("request", {}, {}, "")
    assert request.deadline is None
    assert before <= request.timestamp <= after


def test_requests_do_not_share_their_mutable_defaults() -> None:
    first, second = ServiceRequest(path="/a"), ServiceRequest(path="/b")
    first.arguments["x"] = 1
    first.headers["y"] = "2"
    assert (second.arguments, second.headers) == ({}, {})


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"RETURN_DATA": "  hello  "}, "hello"),
    ({"RETURN_DATA": ["first", " last "]}, "last"),
    ({"RETURN_DATA": 42}, 42),
    ({"RETURN_DATA": {"nested": True}}, {"nested": True}),
    ({"RETURN_DATA": [1, 2]}, [1, 2]),
    ({}, "NO DATA"),
])
def test_get_argument_reads_like_a_web_argument(arguments: dict[str, object], expected: object) -> None:
    assert ServiceRequest(path="/", arguments=arguments).get_argument("RETURN_DATA", "NO DATA") == expected


def test_get_argument_can_keep_whitespace() -> None:
    assert ServiceRequest(path="/", arguments={"a": " x "}).get_argument("a", strip=False) == " x "


@pytest.mark.parametrize(("arguments", "expected"), [
    ({"tag": [" a ", "b"]}, ["a", "b"]),
    ({"tag": " a "}, ["a"]),
    ({"tag": 3}, [3]),
    ({}, []),
])
def test_get_arguments_always_gives_a_list(arguments: dict[str, object], expected: list[object]) -> None:
    assert ServiceRequest(path="/", arguments=arguments).get_arguments("tag") == expected


def test_a_request_with_a_field_of_the_wrong_type_does_not_decode() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int` - at `\$.path`"):
        msgspec.json.decode(b'{"path": 7}', type=ServiceRequest)


@pytest.mark.parametrize(("status", "ok"), [(200, True), (201, True), (207, True), (302, True), (399, True),
                                            (400, False), (404, False), (500, False), (199, False)])
def test_ok_means_a_2xx_or_3xx_status(status: int, ok: bool) -> None:
    assert ServiceResponse(status_code=status).ok is ok


def test_raise_for_status_returns_a_successful_response() -> None:
    response = ServiceResponse(status_code=200)
    assert response.raise_for_status() is response


def test_raise_for_status_raises_with_the_remote_error_as_data() -> None:
    response = ServiceResponse(status_code=500, status_msg="ValueError: boom", path="/service/slow",
                               body={"error": {"type": "ValueError", "message": "boom"}})
    with pytest.raises(RemoteServiceError) as raised:
        response.raise_for_status()
    assert raised.value.response is response
    assert raised.value.status_code == 500
    assert str(raised.value) == "500 ValueError: boom from /service/slow (ValueError: boom)"


def test_a_reply_reads_its_body_like_arguments() -> None:
    response = ServiceResponse(status_code=200, body={"RETURN_DATA": " hi ", "count": 2})
    assert response.get_argument("RETURN_DATA") == "hi"
    assert response.get_argument("count") == 2
    assert response.get_argument("missing", "default") == "default"
    assert response.arguments == {"RETURN_DATA": " hi ", "count": 2}


def test_a_reply_whose_body_is_not_an_object_has_no_arguments() -> None:
    response = ServiceResponse(status_code=200, body=["a", "b"])
    assert response.get_argument("a", "default") == "default"
    assert response.arguments == {}
