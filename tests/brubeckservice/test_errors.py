"""The error classes: one root, split by who is at fault, each carrying the status a web client gets."""

from __future__ import annotations

import msgspec
import pytest

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.errors import BrubeckError
from brubeck.errors import ProtocolError as BrubeckProtocolError
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeckservice.errors import (
    AuthenticationError,
    ProtocolError,
    RemoteServiceError,
    RequestTooLarge,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
    build_error_body,
    parse_error_body,
)
from brubeckservice.models import ServiceResponse

STATUS = [(ServiceTimeout, 504), (ServiceUnavailable, 503), (AuthenticationError, 502), (RequestTooLarge, 413),
          (ProtocolError, 400), (ServiceError, 502)]


@pytest.mark.parametrize(("error", "status"), STATUS)
def test_every_service_error_is_a_brubeck_error_with_a_status(error: type[ServiceError], status: int) -> None:
    assert issubclass(error, ServiceError)
    assert issubclass(error, BrubeckError)
    assert error.status_code == status


def test_a_service_protocol_error_is_also_a_brubeck_protocol_error() -> None:
    assert issubclass(ProtocolError, BrubeckProtocolError)


def test_a_remote_error_takes_the_status_of_the_reply() -> None:
    response = ServiceResponse(status_code=404, status_msg="Not Found", path="/nope")
    error = RemoteServiceError(response)
    assert (error.status_code, error.response) == (404, response)
    assert str(error) == "404 Not Found from /nope"


class CallsAService(WebMessageHandler):
    def get(self) -> None:
        raise self.application.settings["error"]


@pytest.mark.parametrize(("error", "status"), [
    (ServiceTimeout("no reply"), 504),
    (ServiceUnavailable("no connection"), 503),
    (AuthenticationError("refused"), 502),
    (RemoteServiceError(ServiceResponse(status_code=404)), 404),
])
def test_a_web_handler_that_lets_one_escape_answers_with_its_status(error: ServiceError, status: int) -> None:
    app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/page", CallsAService)], error=error)
    response = app.handle(Request("wsgi", "1", "/page", {"METHOD": "GET", "PATH": "/page"}, b""))
    assert response.status_code == status


# -- the error body: one builder, one reader, checked both ways against the wire bytes ---------------------

ERROR_BODIES: list[tuple[dict[str, object], bytes]] = [
    (build_error_body("NotFound", "Not Found (request /nope)"),
     b'{"error":{"type":"NotFound","message":"Not Found (request /nope)"}}'),
    (build_error_body("MethodNotAllowed", "Method 'get' not supported", allow=["REQUEST"]),
     b'{"error":{"type":"MethodNotAllowed","message":"Method \'get\' not supported","allow":["REQUEST"]}}'),
]


@pytest.mark.parametrize(("body", "wire"), ERROR_BODIES)
def test_error_bodies_are_the_documented_json_both_ways(body: dict[str, object], wire: bytes) -> None:
    assert msgspec.json.encode(body) == wire
    decoded = msgspec.json.decode(wire)
    assert parse_error_body(decoded) == body["error"]


@pytest.mark.parametrize("body", [None, [], "error", {"error": "text"}, {"error": {"type": 1, "message": "m"}},
                                  {"other": {}}, {"error": {"type": "T"}}])
def test_a_body_without_a_well_formed_error_object_has_none(body: object) -> None:
    assert parse_error_body(body) is None


def test_remote_service_error_names_the_parsed_type_and_message() -> None:
    response = ServiceResponse(status_code=500, status_msg="KeyError: 'x'", path="/calc",
                               body=build_error_body("KeyError", "'x'"))
    assert str(RemoteServiceError(response)) == "500 KeyError: 'x' from /calc (KeyError: 'x')"
