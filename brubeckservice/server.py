"""`ServiceConnection`: the transport that makes a Brubeck app a service.

It binds a ROUTER at `service_addr`. Each message is checked (shape, signature, age, replay) before any of
it is trusted; each request then runs in a worker greenlet of its own through the app's routes (by path
and METHOD), and the handler's `ServiceResponse` goes back to the caller's connection under the request's
correlation id (waiting for room, up to the request's deadline, when the caller reads slowly). Bad input
never stops the loop: a malformed message is dropped (answered with ERR when it carries an id), a forged
one is refused with an unsigned ERR 401, and both are counted in `stats` and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import gevent
import zmq
from gevent.event import Event
from gevent.hub import get_hub
from greenlet import getcurrent

from brubeck.errors import ConfigurationError
from brubeck.transports.channel import Channel, Pump, serve_with_workers
from brubeckservice import envelope
from brubeckservice.addresses import (
    describe_process,
    ipc_inode,
    ipc_listener,
    prepare_ipc,
    remove_ipc,
    tcp_listener_pid,
)
from brubeckservice.clock import now_ms
from brubeckservice.envelope import DEFAULT_MAX_MESSAGE_SIZE
from brubeckservice.errors import (
    AddressInUse,
    AuthenticationError,
    ProtocolError,
    RequestExpired,
    build_error_body,
)
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceRequest, ServiceResponse
from brubeckservice.signing import ReplayGuard, Signer

if TYPE_CHECKING:
    from brubeck.types import Application

log = logging.getLogger("brubeckservice.server")


class ServiceConnection:
    """`ServiceConnection(service_addr, service_response_addr, passphrase)`: pass as a Brubeck `msg_conn`.

    `service_response_addr` is kept for compatibility with the 2013 API; protocol v1 answers on the
    request connection (docs/protocol.md), so it is not bound.
    """

    base_handler: type[ServiceMessageHandler] = ServiceMessageHandler

    def __init__(self, service_addr: str, service_response_addr: str | None = None, passphrase: str | bytes = "",
                 *, context: zmq.Context[zmq.Socket[bytes]] | None = None, window_ms: int = 30_000,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.service_addr = service_addr
        self.service_response_addr = service_response_addr
        self.signer = Signer(passphrase)
        self.guard = ReplayGuard(window_ms)
        self.window_ms = window_ms
        self.stats: Counter[str] = Counter()
        self.inflight = 0
        self._own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished caller is an error we log
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self.socket.setsockopt(zmq.SNDHWM, 10_000)  # replies queued per caller before it must read
        try:
            self._bind(service_addr)
        except BaseException:
            self.socket.close(linger=0)
            if self._own_context:
                self.context.term()
            raise
        self.channel = Channel(self.socket)
        self._ipc_inode = ipc_inode(service_addr)
        self._closed = False
        self._stopped = Event()
        self._pump: Pump[ServiceRequest] | None = None

    def __repr__(self) -> str:
        return f"ServiceConnection({self.service_addr!r})"

    def _bind(self, address: str) -> None:
        """Bind, unless a live process serves `address` already (`AddressInUse`); a stale ipc socket file
        left by a dead process is reclaimed."""
        if address.startswith("ipc://"):
            prepare_ipc(address)
            try:
                live, pid = ipc_listener(address)
            except FileExistsError as exc:
                raise ConfigurationError(f"cannot serve {address}: {exc}") from None
            if live:
                raise AddressInUse(address, pid, describe_process(pid))
            if ipc_inode(address) is not None:
                log.info("reclaiming %s: its socket file was left by a process that is gone", address)
        try:
            self.socket.bind(address)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE:
                pid = tcp_listener_pid(address) if address.startswith("tcp://") else None
                raise AddressInUse(address, pid, describe_process(pid)) from None
            raise ConfigurationError(f"cannot serve {address}: {exc}") from None

    # -- receiving ----------------------------------------------------------------------------------

    def process_messages(self, application: Application) -> None:
        """Serve until `close()`: each request runs in a worker greenlet of its own (see
        brubeck.transports.channel), at most the app's pool size at once."""
        self._pump = serve_with_workers(application, self.channel, self.accept,
                                        lambda request: self.answer(application, request), log)
        self._stopped.wait()

    def accept(self, frames: list[bytes]) -> ServiceRequest | None:
        """Check one received message; return the request to serve, or None when it was dealt with here."""
        try:
            routing, body = envelope.split_routing(frames)
            env = envelope.parse_envelope(body)
        except ProtocolError as err:
            self.stats["malformed"] += 1
            status = self._reject_malformed(frames, err)
            if status is None:
                log.warning("dropped malformed message on %s (no id to answer): %s", self.service_addr, err)
            else:
                log.warning("malformed message on %s, answered ERR %d: %s", self.service_addr, status, err)
            return None
        if env.kind == envelope.REQ:
            return self._open_request(routing, env)
        if env.kind == envelope.PING:
            self._pong(routing, env)
            return None
        self.stats["malformed"] += 1
        log.warning("refused unexpected %r message %r on %s, answered ERR 400", env.kind, env.msg_id,
                    self.service_addr)
        self._send(routing, envelope.build_error(env.msg_id, 400, f"a service does not accept {env.kind!r}",
                                                  now_ms()))
        return None

    def _open_request(self, routing: list[bytes], env: envelope.Envelope) -> ServiceRequest | None:
        now = now_ms()
        try:
            request = envelope.parse_request(env, self.signer, now, self.guard)
        except AuthenticationError as err:
            self.stats["forged"] += 1
            log.warning("refused request %r on %s, answered ERR 401: %s", env.msg_id, self.service_addr, err)
            self._send(routing, envelope.build_error(env.msg_id, 401, str(err), now))
            return None
        except RequestExpired as err:
            # Its caller has given up: no work, and no answer (docs/protocol.md, REQ).
            self.stats["expired"] += 1
            log.info("skipped request %r on %s, not answered: %s", env.msg_id, self.service_addr, err)
            return None
        except ProtocolError as err:
            # Correctly signed, so the caller holds the key: answer with a signed 400 it can trust.
            self.stats["malformed"] += 1
            log.warning("malformed request %r on %s, answered REP 400: %s", env.msg_id, self.service_addr, err)
            bad = ServiceResponse(status_code=400, status_msg="Bad Request",
                                  body=build_error_body("ProtocolError", str(err)))
            self._send(routing, envelope.build_reply(self.signer, env.msg_id, bad, now))
            return None
        request.sender = tuple(routing)
        return request

    def _reject_malformed(self, frames: list[bytes], err: ProtocolError) -> int | None:
        """Answer what looks like our protocol with a usable id with ERR, so the caller fails fast; return
        the status sent, or None when nothing was answered."""
        if len(frames) >= 7 and frames[-6][:3] == envelope.MARKER[:3]:
            msg_id = frames[-4]
            status = 400 if frames[-6] == envelope.MARKER else 505  # 505: another protocol version
            if 0 < len(msg_id) <= envelope.MAX_ID_SIZE:
                self._send(frames[:-6], envelope.build_error(msg_id, status, str(err), now_ms()))
                return status
        return None

    def _pong(self, routing: list[bytes], env: envelope.Envelope) -> None:
        now = now_ms()
        try:
            envelope.parse_control(env, self.signer, now, self.window_ms)
        except (AuthenticationError, ProtocolError) as err:
            self.stats["forged"] += 1
            log.warning("refused PING on %s: %s", self.service_addr, err)
            self._send(routing, envelope.build_error(env.msg_id, 401, str(err), now))
            return
        info = {"inflight": self.inflight, "served": self.stats["served"], "stats": dict(self.stats)}
        self._send(routing, envelope.build_pong(self.signer, env.msg_id, now, info))

    # -- serving ------------------------------------------------------------------------------------

    def answer(self, application: Application, request: ServiceRequest) -> None:
        """Run the app's handler for one request and send its reply (if it returned one)."""
        self.inflight += 1
        try:
            response = application.handle(request)
            self.stats["served"] += 1
            if response is not None:
                self.reply(request, response)
        except Exception:  # handle() answers handler errors itself; this is a bug in the transport
            self.stats["errors"] += 1
            log.exception("failed to serve %s %s", request.method, request.path)
        finally:
            self.inflight -= 1

    def reply(self, message: Any, response: Any) -> None:
        """Send `response` to the caller of `message` (a handler may call this later itself)."""
        if not isinstance(response, ServiceResponse):
            log.error("handler for %s returned %.60r, not a ServiceResponse (use self.render())",
                      message.path, response)
            response = ServiceResponse(status_code=500, status_msg="Handler returned no ServiceResponse",
                                       path=message.path,
                                       body=build_error_body("TypeError", "handler did not return render()"))
        now = now_ms()
        # A request without a deadline gets the replay window: its caller's view of "too late" anyway.
        deadline = message.deadline if message.deadline is not None else now + self.window_ms
        self._send(list(message.sender), envelope.build_reply(self.signer, message.msg_id, response, now), deadline)

    def _send(self, routing: list[bytes], frames: list[bytes], deadline: int | None = None) -> None:
        """Send to one caller. When its queue is full (it sends faster than it reads replies), a worker
        waits for room until the request's deadline (its caller has given up by then); the hub, which
        must not wait, drops. A caller that is gone (EHOSTUNREACH) is not waited for."""
        message = [*routing, *frames]
        pause = 0.001
        while True:
            try:
                self.channel.send(message)
                return
            except zmq.Again:
                if getcurrent() is get_hub() or deadline is None or now_ms() >= deadline:
                    err: str = "the caller's queue stayed full"
                    break
                gevent.sleep(pause)
                pause = min(pause * 2, 0.05)
            except zmq.ZMQError as exc:
                err = str(exc)
                break
        self.stats["undeliverable"] += 1
        log.warning("could not deliver on %s, dropped: %s", self.service_addr, err)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        if self._pump is not None:
            self._pump.close()
        self.channel.close(linger=0)
        remove_ipc(self.service_addr, self._ipc_inode)
        if self._own_context:
            self.context.term()
