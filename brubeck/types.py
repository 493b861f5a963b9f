"""The seams between layers, named once: what a message, a connection and a route target look like."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from brubeck.application import Brubeck
    from brubeck.handlers import MessageHandler


@runtime_checkable
class Message(Protocol):
    """Anything a route can dispatch: a web `Request`, a service request, a service response."""

    path: str
    method: str


class Connection(Protocol):
    """A transport: it receives messages, hands each to the application, and sends replies back."""

    @property
    def base_handler(self) -> type[MessageHandler]:
        """The handler class the application uses to answer what no route handles (404/405/500).

        Read-only here so that a transport may narrow it (WebMessageHandler, ServiceMessageHandler).
        """

    def process_messages(self, application: Brubeck) -> None:
        """Serve until `close()`: each message is handled in its own greenlet."""

    def reply(self, message: Any, response: Any) -> None:
        """Send `response` to whoever sent `message` (also usable later, for deferred replies)."""

    def close(self) -> None:
        """Stop serving and release sockets."""


class FunctionRoute(Protocol):
    """A route target that is a plain function: `def f(application, message, *args, **kwargs)`."""

    def __call__(self, application: Brubeck, message: Any, *args: Any, **kwargs: Any) -> Any: ...
