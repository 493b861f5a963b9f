"""The Brubeck application: routes, settings, and the loop that serves one connection."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import gevent
from gevent.pool import Pool
from jinja2 import Environment

from brubeck.errors import BrubeckError, ConfigurationError
from brubeck.handlers import MessageHandler
from brubeck.routing import NoRoute, Router
from brubeck.types import Connection, HandlerClass, Message, RouteTarget

log = logging.getLogger("brubeck.application")

Target = TypeVar("Target", bound=RouteTarget)


class Brubeck:
    """A Brubeck application: give it a connection and routes, then `run()` it.

    `handler_tuples` is a list of `(regex, HandlerClass_or_function)`; routes match in order, anchored at
    the start of the path. `template_loader` is a callable returning a Jinja2 environment (see
    `brubeck.templating.load_jinja2_env`).
    """

    def __init__(self, msg_conn: Connection | None = None,
                 handler_tuples: Iterable[tuple[str, RouteTarget]] | None = None,
                 pool: Pool | None = None, no_handler: Callable[..., Any] | None = None,
                 base_handler: HandlerClass | None = None,
                 template_loader: Callable[[], Environment] | None = None,
                 log_level: int = logging.INFO, login_url: str | None = None, db_conn: Any = None,
                 cookie_secret: str | bytes | None = None, api_base_url: str = "/", **kwargs: Any) -> None:
        if msg_conn is None:
            raise ConfigurationError(
                "Brubeck needs a msg_conn: e.g. Mongrel2Connection('tcp://127.0.0.1:9999', "
                "'tcp://127.0.0.1:9998') or WSGIConnection(port=6767)")
        self.msg_conn = msg_conn
        self.router: Router[RouteTarget] = Router()
        for pattern, target in handler_tuples or ():
            self.add_route_rule(pattern, target)
        self.pool = pool
        self.no_handler = no_handler
        self.base_handler: HandlerClass = base_handler or msg_conn.base_handler
        self.template_env: Environment | None = template_loader() if template_loader else None
        self.login_url = login_url
        self.db_conn = db_conn
        self.cookie_secret = cookie_secret
        self.api_base_url = api_base_url
        self.settings = kwargs
        #: Per-application state of extensions (e.g. brubeckservice's registered services).
        self.extensions: dict[str, Any] = {}
        if not logging.getLogger().handlers:
            logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("brubeck").setLevel(log_level)

    # -- routes -------------------------------------------------------------------------------------

    def add_route_rule(self, pattern: str, kallable: RouteTarget, method: str | Sequence[str] | None = None) -> None:
        """Route `pattern` to a handler class or a function(application, message, ...)."""
        self.router.add(pattern, kallable, method)

    def add_route(self, url_pattern: str, method: str | Sequence[str] | None = None
                  ) -> Callable[[Target], Target]:
        """Decorator form: `@app.add_route('^/hello', method=['GET'])`."""

        def decorator(kallable: Target) -> Target:
            self.add_route_rule(url_pattern, kallable, method)
            return kallable

        return decorator

    # -- serving ------------------------------------------------------------------------------------

    def handle(self, message: Message, base_handler: HandlerClass | None = None) -> Any:
        """Route one message and run its handler; returns the response to send, or None for no reply.

        Never raises for a bad message or a failing handler: those become 404/405/500 responses, built by
        `base_handler` (default: the application's, which comes from its connection).
        """
        base = base_handler or self.base_handler
        try:
            match = self.router.match(message.path, message.method)
        except NoRoute as missing:
            return self._no_route(message, missing, base)
        target: Any = match.route.target
        if isinstance(target, type) and issubclass(target, MessageHandler):
            try:
                handler = target(self, message, *match.args, **match.kwargs)
            except Exception as err:
                return base(self, message).error(err)
            return handler()
        try:
            return target(self, message, *match.args, **match.kwargs)
        except BrubeckError as err:
            return base(self, message).answer_error(err)
        except Exception as err:
            return base(self, message).error(err)

    def _no_route(self, message: Message, missing: NoRoute, base: HandlerClass) -> Any:
        if self.no_handler is not None:
            return self.no_handler(self, message)
        handler = base(self, message)
        if missing.allowed:
            return handler.unsupported(sorted(missing.allowed))
        log.info("no route for %s %s", message.method, message.path)
        return handler.render_error(404)

    def run(self) -> None:
        """Serve messages from `msg_conn` until it is closed, or until SIGTERM or SIGINT closes it.

        Closing on a signal (rather than dying of it) releases the sockets: an ipc:// socket file is
        removed, and callers see the connection drop instead of waiting for their timeouts.
        """
        log.info("Brubeck serving on %r", self.msg_conn)
        handlers = []
        if threading.current_thread() is threading.main_thread():
            handlers = [gevent.signal_handler(sig, self._stop, sig) for sig in (signal.SIGTERM, signal.SIGINT)]
        try:
            self.msg_conn.process_messages(self)
        finally:
            for handler in handlers:
                handler.cancel()
            self.msg_conn.close()

    def _stop(self, signum: int) -> None:
        log.info("%s: closing %r", signal.Signals(signum).name, self.msg_conn)
        self.msg_conn.close()
