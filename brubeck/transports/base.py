"""What every web transport shares: the handler that answers unrouted requests, and the body limit."""

from __future__ import annotations

import logging
from typing import Any

from brubeck.handlers import WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.types import Application

log = logging.getLogger("brubeck.transports")

#: Bodies larger than this are refused with 413 unless a connection is given another limit.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024


def http_bytes(response: Any) -> bytes:
    """What a web handler returned, as response bytes; anything else (e.g. a service handler's
    ServiceResponse reaching a web route) is logged and becomes a 500, so the client is still answered."""
    if isinstance(response, bytes):
        return response
    if isinstance(response, str):
        return response.encode("utf-8")
    log.error("handler returned %.80r, not an HTTP response (bytes or str); answering 500", response)
    return HTTPResponse("500 Internal Server Error\n", 500, None, [("Content-Type", "text/plain; charset=utf-8")])


class WebConnection:
    """Base for transports that serve HTTP clients (Mongrel2, WSGI)."""

    base_handler: type[WebMessageHandler] = WebMessageHandler

    def __init__(self, max_body_size: int | None = DEFAULT_MAX_BODY_SIZE) -> None:
        self.max_body_size = max_body_size

    def too_large(self, size: int) -> bool:
        return self.max_body_size is not None and size > self.max_body_size

    def process_messages(self, application: Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reply(self, message: Any, response: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
