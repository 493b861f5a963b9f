"""Serving an application behind Mongrel2 over ZeroMQ: PULL requests, PUB replies, moved by gevent.

Mongrel2 binds both sockets; we connect. Each request is served in a worker greenlet of its own (at most
the size of the application's pool at once), so a slow handler never holds up the others. A frame that does not
parse is logged and, when its sender and connection id can be read, answered with 400.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import zmq
from gevent.event import Event

from brubeck.context import RequestContext, web_context
from brubeck.errors import Cancelled, ProtocolError
from brubeck.request import Request
from brubeck.response import HTTPResponse
from brubeck.throttle import LogThrottle
from brubeck.transports.base import DEFAULT_MAX_BODY_SIZE, WebConnection, http_bytes, serve_web
from brubeck.transports.channel import Channel, Pump, serve_with_workers
from brubeck.wire.http import head_only
from brubeck.wire.mongrel2 import MAX_REPLY_TARGETS, build_reply, header

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeck.mongrel2")


class Mongrel2Connection(WebConnection):
    """`Mongrel2Connection(pull_addr, pub_addr)`: Mongrel2's handler `send_spec` and `recv_spec`."""

    def __init__(self, pull_addr: str, pub_addr: str, *,
                 context: zmq.Context[zmq.Socket[bytes]] | None = None,
                 max_body_size: int | None = DEFAULT_MAX_BODY_SIZE) -> None:
        super().__init__(max_body_size)
        self.pull_addr, self.pub_addr = pull_addr, pub_addr
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self.in_sock = self.context.socket(zmq.PULL)
        self.out_sock = self.context.socket(zmq.PUB)
        for sock in (self.in_sock, self.out_sock):
            sock.setsockopt(zmq.LINGER, 1000)
        self.in_sock.connect(pull_addr)
        self.out_sock.connect(pub_addr)
        self._in = Channel(self.in_sock, max_frames=1)  # Mongrel2 sends one frame per message
        self._log = LogThrottle(log)  # what arrives is logged at a bounded rate (brubeck.throttle)
        self._out = Channel(self.out_sock)
        self._closed = False
        self._stopped = Event()
        self._pump: Pump[Request] | None = None
        #: The requests being served, by (sender, connection id): a disconnect notice cancels them.
        self._serving: dict[tuple[str, str], RequestContext] = {}

    def __repr__(self) -> str:
        return f"Mongrel2Connection({self.pull_addr!r}, {self.pub_addr!r})"

    # -- receiving ----------------------------------------------------------------------------------

    def process_messages(self, application: Application) -> None:
        """Serve until `close()`: each request runs in a worker greenlet of its own (see
        brubeck.transports.channel), at most the app's pool size at once."""
        self._pump = serve_with_workers(application, self._in, lambda frames: self.accept(application, frames[0]),
                                        lambda request: self.answer(application, request), log)
        self._stopped.wait()

    def accept(self, application: Application, raw: bytes) -> Request | None:
        """Parse one frame; return the request to handle, or None when there is nothing (more) to do:
        garbage (answered 400 when it names a connection), disconnect notices, upload starts, bodies over
        the limit (answered 413)."""
        try:
            request = Request.parse_msg(raw)
        except ProtocolError as err:
            self._log.log(logging.WARNING, "malformed", "malformed Mongrel2 message (%d bytes): %s", len(raw), err)
            self._reject(raw, 400)
            return None
        if request.is_disconnect():
            self._disconnected(request)
            return None
        if request.is_upload_start():
            log.debug("upload started for %r; waiting for upload-done", request)
            return None
        if self.too_large(len(request.body)):
            self._log.log(logging.WARNING, "too large", "refusing %d-byte body from %r", len(request.body), request)
            self.reply(request, application.base_handler(application, request).render_error(413))
            return None
        # Its context from its arrival: a budget counts the time it waits for a free worker, and a disconnect
        # notice finds it while it waits.
        self._serving[(request.sender, request.conn_id)] = web_context(request.headers, application.settings,
                                                                        header)
        return request

    def answer(self, application: Application, request: Request) -> None:
        """Run the request's handler in the request's context (brubeck.context: its trace and deadline) and
        send its reply, if it returned one. Never raises; a request whose browser went away meanwhile is
        cancelled (its sync service calls too) and answered nothing."""
        key = (request.sender, request.conn_id)
        ctx = self._serving.get(key) or web_context(request.headers, application.settings, header)
        try:
            if ctx.cancelled:
                log.info("dropped %s %s for connection %s before it started: %s (trace %s)", request.method,
                         request.path, request.conn_id, ctx.cancelled, ctx.trace_id)
                return
            response = serve_web(application, request, ctx)
            if response is not None:
                self.reply(request, response)
        except Cancelled as stopped:
            log.info("stopped %s %s for connection %s: %s (trace %s)", request.method, request.path,
                     request.conn_id, stopped, ctx.trace_id)
        except Exception:
            log.exception("failed to answer %r", request)
        finally:
            if self._serving.get(key) is ctx:
                del self._serving[key]

    def _disconnected(self, notice: Request) -> None:
        """Mongrel2 says a browser is gone: cancel what is being served for it, or waits to be. (Under full
        load the channel is paused and notices wait in ZeroMQ's queue with the requests, so a request that
        waits there is not known yet; and with several web apps on one handler, Mongrel2 pushes the notice
        to any one of them.)"""
        ctx = self._serving.get((notice.sender, notice.conn_id))
        if ctx is None or ctx.cancelled:
            return
        if not ctx.cancel("the browser disconnected"):
            ctx.cancelled = "the browser disconnected"  # still waiting for a worker: it will not start
        log.info("connection %s closed by the browser: cancelling its request (trace %s)", notice.conn_id,
                 ctx.trace_id)

    def _reject(self, raw: bytes, status_code: int) -> None:
        parts = raw.split(b" ", 2)
        if len(parts) >= 2 and parts[0] and parts[1].isdigit():
            body = HTTPResponse(f"{status_code} Bad Request\n", status_code, None,
                                [("Content-Type", "text/plain"), ("Connection", "close")])
            self.publish(parts[0], [parts[1].decode()], body)
            self.publish(parts[0], [parts[1].decode()], b"")

    # -- sending ------------------------------------------------------------------------------------

    def publish(self, sender: str | bytes, conn_ids: Iterable[str | int], data: bytes | str) -> None:
        """Send `data` to connections of one Mongrel2 server, in chunks of its target limit."""
        payload = data.encode("utf-8") if isinstance(data, str) else data
        ids = list(conn_ids)
        for start in range(0, len(ids), MAX_REPLY_TARGETS):
            # A PUB socket never blocks: at its high-water mark it drops, which Mongrel2 sees as no reply.
            # Sent with the other replies of this turn of the loop: one wake-up of libzmq's I/O thread.
            self._out.send_soon((build_reply(sender, ids[start:start + MAX_REPLY_TARGETS], payload),))

    def send(self, uuid: str | bytes, conn_id: str | int, msg: bytes | str) -> None:
        """Brubeck 0.4 name: send `msg` to one connection."""
        self.publish(uuid, [conn_id], msg)

    def reply_bulk(self, uuid: str | bytes, idents: Iterable[str | int], data: bytes | str) -> None:
        """Brubeck 0.4 name: send the same `data` to many connections."""
        self.publish(uuid, idents, data)

    def reply(self, message: Any, response: Any) -> None:
        """Answer `message`, then close its connection when the client asked for that (or is HTTP/1.0)."""
        data = http_bytes(response)
        self.publish(message.sender, [message.conn_id], head_only(data) if message.method == "HEAD" else data)
        if message.should_close():
            self.publish(message.sender, [message.conn_id], b"")

    def close_connection(self, message: Any) -> None:
        """Ask Mongrel2 to close the client connection `message` came from."""
        self.publish(message.sender, [message.conn_id], b"")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving.clear()
        self._stopped.set()
        self._log.close()
        if self._pump is not None:
            self._pump.close()
        self._in.close()
        self._out.close()
        if self._own_context:
            self.context.term()
