"""The seams between layers, named once (as starlette's `types.py` names `ASGIApp`).

Transports, handlers, extensions and the test client know an application only as `Application`; routes
and handlers know what they dispatch only as `Message`; the application knows a transport only as
`Connection`, and the handler classes it builds to answer only as `Responder`. Nothing here names a
concrete class, so each side can be replaced (a fake transport, a test client, another handler family).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from jinja2 import Environment

from brubeck.errors import BrubeckError


class Message(Protocol):
    """Anything a route can dispatch: a web `Request`, a `ServiceRequest`, a `ServiceResponse`."""

    @property
    def path(self) -> str: ...

    @property
    def method(self) -> str: ...


class Responder(Protocol):
    """A handler instance, as the application drives it: run it, or have it answer an error."""

    def __call__(self) -> object: ...

    def render_error(self, error_code: int, status_msg: str | None = None) -> object: ...

    def unsupported(self, allowed: Sequence[str] | None = None) -> object: ...

    def error(self, err: BaseException) -> object: ...

    def answer_error(self, err: BrubeckError) -> object: ...


#: A handler class: called as `HandlerClass(application, message, *url_args, **url_kwargs)`.
HandlerClass = Callable[..., Responder]


class Application(Protocol):
    """What transports, handlers and extensions use of a Brubeck application."""

    settings: dict[str, Any]
    #: Per-application state of extensions (e.g. brubeckservice's registered services).
    extensions: dict[str, Any]
    pool: Any  # a gevent Pool (gevent ships no types), or None
    template_env: Environment | None
    login_url: str | None
    cookie_secret: str | bytes | None
    db_conn: Any

    @property
    def msg_conn(self) -> Connection: ...

    @property
    def base_handler(self) -> HandlerClass: ...

    def handle(self, message: Message, base_handler: HandlerClass | None = None) -> object:
        """Route one message and run its handler; the response to send, or None for no reply."""


class Connection(Protocol):
    """A transport: it receives messages, hands each to the application, and sends replies back."""

    @property
    def base_handler(self) -> HandlerClass:
        """The handler class the application uses to answer what no route handles (404/405/500)."""

    def process_messages(self, application: Application) -> None:
        """Serve until `close()`: each message is handled in its own greenlet."""

    def reply(self, message: Any, response: Any) -> None:
        """Send `response` to whoever sent `message` (also usable later, for deferred replies)."""

    def close(self) -> None:
        """Stop serving and release sockets."""


#: What a route leads to: a handler class, or a function route `def f(application, message, *args,
#: **kwargs)` returning the response. Both are called with the application and the message first; a
#: function's own annotations are its business (it may name the concrete Brubeck and Request).
RouteTarget = Callable[..., object]
