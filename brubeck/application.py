"""The Brubeck application: routes, settings, and the loop that serves one connection.

Stopping: `close()` closes the connection and then runs the close hooks extensions registered with
`on_close()` (newest first, so what was set up last is taken down first). `run()` ends with it, whether
serving ended by itself or by a signal. SIGINT closes at once. SIGTERM (a supervisor's "please stop")
first drains, when the connection can (`msg_conn.drain()`, a `ServiceConnection`: its callers are told,
its calls in flight answered), then closes; a second SIGTERM, or SIGINT, during the drain closes at once
(a connection's `drain()` must return once it is closed).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import gevent
from gevent.event import Event
from gevent.hub import get_hub
from gevent.pool import Pool
from greenlet import getcurrent
from jinja2 import Environment

from brubeck.context import current as current_context
from brubeck.errors import BrubeckError, ConfigurationError
from brubeck.handlers import MessageHandler
from brubeck.logs import configure_logging
from brubeck.logs import log_format as brubeck_log_format
from brubeck.routing import NoRoute, Router
from brubeck.types import Connection, HandlerClass, Message, RouteTarget

log = logging.getLogger("brubeck.application")

Target = TypeVar("Target", bound=RouteTarget)


class Brubeck:
    """A Brubeck application: give it a connection and routes, then `run()` it.

    `handler_tuples` is a list of `(regex, HandlerClass_or_function)`; routes match in order, anchored at
    the start of the path. `template_loader` is a callable returning a Jinja2 environment (see
    `brubeck.templating.load_jinja2_env`).

    Logging: `run()` sets up the process's logging (brubeck.logs.configure_logging) at `log_level`, as
    `log_format` ("text" or "json"; default: $BRUBECK_LOG_FORMAT, else text), unless something configured
    it before; the constructor changes nothing, so two apps in one process keep whatever was set.
    """

    def __init__(self, msg_conn: Connection | None = None,
                 handler_tuples: Iterable[tuple[str, RouteTarget]] | None = None,
                 pool: Pool | None = None, no_handler: Callable[..., Any] | None = None,
                 base_handler: HandlerClass | None = None,
                 template_loader: Callable[[], Environment] | None = None,
                 log_level: int = logging.INFO, login_url: str | None = None, db_conn: Any = None,
                 cookie_secret: str | bytes | None = None, api_base_url: str = "/",
                 log_format: str | None = None, **kwargs: Any) -> None:
        log_format = brubeck_log_format(log_format)  # (a wrong name fails here, not at run())
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
        self._close_hooks: list[Callable[[], object]] = []
        self._closed = False
        self._close_done = Event()
        self._closer: object = None  # the greenlet running close()
        self._drainer: gevent.Greenlet[[], None] | None = None
        # Logging is the process's, not one app's: `run()` sets it up, and only when nothing else has.
        self.log_level = log_level
        self.log_format = log_format

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
        ctx = current_context()
        if ctx is not None and not ctx.route:  # (a service's reply routed while serving keeps the request's)
            ctx.route = match.route.pattern.pattern
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
        """Serve messages from `msg_conn` until it is closed, or until SIGTERM or SIGINT closes it; then
        `close()`.

        Closing on a signal (rather than dying of it) releases the sockets: an ipc:// socket file is
        removed, and callers see the connection drop instead of waiting for their timeouts. SIGTERM drains
        first when the connection has a `drain()` method (see the module's docstring).
        """
        configure_logging(self.log_level, format=self.log_format)  # (when nothing else configured logging)
        log.info("Brubeck serving on %r", self.msg_conn)
        handlers = []
        if threading.current_thread() is threading.main_thread():
            handlers = [gevent.signal_handler(signal.SIGTERM, self._terminate),
                        gevent.signal_handler(signal.SIGINT, self._stop, signal.SIGINT)]
        try:
            self.msg_conn.process_messages(self)
        finally:
            for handler in handlers:
                handler.cancel()
            self.close()
            if self._drainer is not None:
                self._drainer.join()  # a drain returns once its connection is closed

    def _terminate(self) -> None:
        drain: Callable[[], None] | None = getattr(self.msg_conn, "drain", None)
        if drain is None or self._drainer is not None or self._closed:
            self._stop(signal.SIGTERM)
            return
        log.info("SIGTERM: draining %r, then closing (SIGTERM again or SIGINT to close at once)", self.msg_conn)
        # The drain waits for calls to finish: in a greenlet of its own, never in the signal's callback.
        self._drainer = gevent.spawn(self._drain_then_close, drain)

    def _drain_then_close(self, drain: Callable[[], None]) -> None:
        try:
            drain()
        except Exception:
            log.exception("draining %r failed; closing", self.msg_conn)
        finally:
            self.close()

    def _stop(self, signum: int) -> None:
        log.info("%s: closing %r", signal.Signals(signum).name, self.msg_conn)
        self.close()

    # -- closing ------------------------------------------------------------------------------------

    def on_close(self, callback: Callable[[], object]) -> Callable[[], object]:
        """Have `close()` call `callback()` after closing the connection (hooks run newest first).

        For extensions that open resources of their own (brubeckservice closes its service clients this
        way). Returns `callback`, so it can decorate a function. On an application already closed, it is
        called at once.
        """
        if self._closed:
            self._run_hook(callback)
        else:
            self._close_hooks.append(callback)
        return callback

    def close(self) -> None:
        """Close `msg_conn` (serving stops), then run the `on_close` hooks, newest first. Safe to call twice;
        a hook that fails is logged and the others still run. While another greenlet is closing (a signal's),
        this waits until it is done, so `run()` does not return with hooks half run."""
        if self._closed:
            current = getcurrent()
            # (a hook closing the app again must not wait for itself, and the hub cannot wait)
            if current is not self._closer and current is not get_hub():
                self._close_done.wait()
            return
        self._closed = True
        self._closer = getcurrent()
        try:
            self.msg_conn.close()
        finally:
            hooks, self._close_hooks = self._close_hooks, []
            for hook in reversed(hooks):
                self._run_hook(hook)
            self._close_done.set()

    @staticmethod
    def _run_hook(hook: Callable[[], object]) -> None:
        try:
            hook()
        except Exception:
            log.exception("close hook %r failed", hook)
