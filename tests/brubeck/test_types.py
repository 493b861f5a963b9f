"""The seams: the concrete classes are what the protocols say (checked by mypy --strict over this file),
and the parts typed against the protocols work with them."""

from __future__ import annotations

from pathlib import Path

from brubeck.application import Brubeck
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeck.transports.wsgi import WSGIConnection
from brubeck.types import Application, Connection, HandlerClass, Message, RouteTarget
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.server import ServiceConnection
from tests.brubeck.inmemory import make_request


def test_the_concrete_classes_fill_the_seams(tmp_path: Path) -> None:
    connection: Connection = WSGIConnection(port=0)
    app: Application = Brubeck(msg_conn=connection, handler_tuples=[])
    handler: HandlerClass = WebMessageHandler
    target: RouteTarget = handler
    messages: list[Message] = [make_request("GET", "/"), ServiceRequest(path="/s"),
                               ServiceResponse(status_code=200, path="/r")]
    service: Connection = ServiceConnection(f"ipc://{tmp_path}/s", None, "secret")
    try:
        assert app.msg_conn is connection
        assert isinstance(messages[0], Request)
        assert [m.path for m in messages] == ["/", "/s", "/r"]
        assert app.base_handler is connection.base_handler and target is WebMessageHandler
    finally:
        service.close()
