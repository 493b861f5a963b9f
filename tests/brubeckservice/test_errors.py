"""The error classes: one root, split by who is at fault, each carrying the status a web client gets."""

from __future__ import annotations

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
