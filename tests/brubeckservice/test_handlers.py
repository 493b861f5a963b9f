"""ServiceMessageHandler: what a service handler's render() sends, and how a reply looks on the client."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from brubeck.application import Brubeck
from brubeck.errors import HTTPError
from brubeckservice.handlers import SERVICE_METHODS, ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection
from tests.brubeckservice.helpers import PASSPHRASE, EchoHandler, FailingHandler


@pytest.fixture
def app() -> Iterator[Brubeck]:
    connection = ServiceConnection(f"inproc://handlers-{uuid.uuid4().hex}", None, PASSPHRASE)
    yield Brubeck(msg_conn=connection)
    connection.close()


def request(method: str = "request", path: str = "/service/slow", **arguments: Any) -> ServiceRequest:
    return ServiceRequest(path=path, method=method, arguments=arguments, conn_id="7", msg_id=b"id-1")


def without_timestamp(response: ServiceResponse) -> dict[str, Any]:
    fields = {name: getattr(response, name) for name in response.__struct_fields__}
    del fields["timestamp"]
    return fields


# -- the service side: render ------------------------------------------------------------------------------

def test_render_sends_status_payload_path_and_the_method_to_route_the_reply_to(app: Brubeck) -> None:
    response = EchoHandler(app, request(RETURN_DATA="hello"))()
    assert without_timestamp(response) == {
        "status_code": 200, "status_msg": "Took a while, but I am back.",
        "body": {"RETURN_DATA": "hello", "conn_id": "7"}, "path": "/service/slow", "method": "response",
        "headers": {}, "conn_id": "7", "msg_id": b"id-1",
    }


class CustomHeaders(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200)
        self.headers = {"METHOD": "done", "X-Count": 3}
        return self.render()


def test_the_method_header_names_the_reply_route_and_other_headers_travel_as_text(app: Brubeck) -> None:
    response = CustomHeaders(app, request())()
    assert (response.method, response.headers) == ("done", {"X-Count": "3"})


class Lazy(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        return self.render()


def test_without_a_method_header_the_reply_goes_to_response(app: Brubeck) -> None:
    assert Lazy(app, request()).render().method == "response"


def test_a_handler_that_sets_no_status_answers_500(app: Brubeck) -> None:
    response = Lazy(app, request())()
    assert (response.status_code, response.status_msg) == (500, "Internal Server Error")


def test_render_can_set_the_status(app: Brubeck) -> None:
    response = Lazy(app, request()).render(201)
    assert (response.status_code, response.status_msg) == (201, "Created")


class AllMethods(ServiceMessageHandler):
    def _answer(self, name: str) -> ServiceResponse:
        self.set_status(200)
        self.add_to_payload("ran", name)
        return self.render()

    def get(self) -> ServiceResponse:
        return self._answer("get")

    def post(self) -> ServiceResponse:
        return self._answer("post")

    def put(self) -> ServiceResponse:
        return self._answer("put")

    def delete(self) -> ServiceResponse:
        return self._answer("delete")

    def options(self) -> ServiceResponse:
        return self._answer("options")

    def connect(self) -> ServiceResponse:
        return self._answer("connect")

    def response(self) -> ServiceResponse:
        return self._answer("response")

    def request(self) -> ServiceResponse:
        return self._answer("request")


@pytest.mark.parametrize("method", [*SERVICE_METHODS, "REQUEST", "Post"])
def test_the_method_picks_the_handler_function(app: Brubeck, method: str) -> None:
    assert AllMethods(app, request(method))().body == {"ran": method.lower()}


# -- the service side: errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("handler", "allowed"), [
    (EchoHandler, ["REQUEST"]),
    (AllMethods, ["GET", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "RESPONSE", "REQUEST"]),
])
def test_an_unknown_method_is_405_with_the_allowed_methods(app: Brubeck, handler: type[ServiceMessageHandler],
                                                          allowed: list[str]) -> None:
    response = handler(app, request("frobnicate"))()
    assert (response.status_code, response.status_msg) == (405, "Method 'frobnicate' not supported")
    assert response.body == {"error": {"type": "MethodNotAllowed", "message": "Method 'frobnicate' not supported",
                                       "allow": allowed}}


def test_a_service_method_the_handler_does_not_define_is_405(app: Brubeck) -> None:
    response = EchoHandler(app, request("get"))()
    assert response.status_code == 405
    assert response.body["error"]["allow"] == ["REQUEST"]


def test_an_exception_in_the_handler_is_500_naming_its_type_and_message(
        app: Brubeck, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="brubeckservice.handlers"):
        response = FailingHandler(app, request())()
    assert (response.status_code, response.status_msg) == (500, "ValueError: the handler broke")
    assert response.body == {"error": {"type": "ValueError", "message": "the handler broke"}}
    assert response.path == "/service/slow"
    [record] = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is ValueError


class Verbose(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        raise RuntimeError("x" * 500)


def test_a_long_error_message_is_cut_in_the_status_but_whole_in_the_body(app: Brubeck) -> None:
    response = Verbose(app, request())()
    assert len(response.status_msg) == 200
    assert response.body["error"]["message"] == "x" * 500


class Refuses(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        raise HTTPError(403, "Not yours")


def test_an_http_error_in_the_handler_answers_with_its_status(app: Brubeck) -> None:
    response = Refuses(app, request())()
    assert (response.status_code, response.status_msg) == (403, "Not yours")
    assert response.body == {"error": {"type": "Forbidden", "message": "Not yours (request /service/slow)"}}


def test_render_error_names_the_status_as_the_error_type(app: Brubeck) -> None:
    response = Lazy(app, request(path="/nope")).render_error(404)
    assert (response.status_code, response.status_msg) == (404, "Not Found")
    assert response.body == {"error": {"type": "NotFound", "message": "Not Found (request /nope)"}}


# -- the client side: a reply routed through the client app's handlers -------------------------------------

class ServiceResponseHandler(ServiceMessageHandler):
    def response(self) -> ServiceResponse:
        return self.render()


REPLY = ServiceResponse(status_code=200, status_msg="Took a while, but I am back.", body={"RETURN_DATA": "hello"},
                        path="/service/slow", conn_id="7", msg_id=b"id-1")


def test_a_reply_handler_starts_with_the_replys_status_and_payload(app: Brubeck) -> None:
    handler = ServiceResponseHandler(app, REPLY)
    assert (handler.status_code, handler.status_msg) == (200, "Took a while, but I am back.")
    assert handler.get_argument("RETURN_DATA") == "hello"
    handler.add_to_payload("seen", True)
    assert REPLY.body == {"RETURN_DATA": "hello"}  # the handler's payload is its own copy


def test_a_reply_handler_renders_the_reply_back(app: Brubeck) -> None:
    rendered = ServiceResponseHandler(app, REPLY)()
    assert (rendered.status_code, rendered.status_msg, rendered.body) == (
        200, "Took a while, but I am back.", {"RETURN_DATA": "hello"})
    assert (rendered.path, rendered.conn_id, rendered.msg_id) == ("/service/slow", "7", b"id-1")


def test_a_reply_whose_body_is_not_an_object_starts_with_an_empty_payload(app: Brubeck) -> None:
    reply = ServiceResponse(status_code=207, status_msg="Multi-Status", body=[1, 2], path="/service/slow")
    rendered = ServiceResponseHandler(app, reply)()
    assert (rendered.status_code, rendered.body) == (207, {})
