"""What every web transport shares: the handler that answers unrouted requests, and the body limit."""

from __future__ import annotations

from typing import Any

from brubeck.handlers import WebMessageHandler

#: Bodies larger than this are refused with 413 unless a connection is given another limit.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024


class WebConnection:
    """Base for transports that serve HTTP clients (Mongrel2, WSGI)."""

    base_handler: type[WebMessageHandler] = WebMessageHandler

    def __init__(self, max_body_size: int | None = DEFAULT_MAX_BODY_SIZE) -> None:
        self.max_body_size = max_body_size

    def too_large(self, size: int) -> bool:
        return self.max_body_size is not None and size > self.max_body_size

    def process_messages(self, application: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def reply(self, message: Any, response: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError
