#!/usr/bin/env python3
"""The web app of the demo: a Brubeck app behind Mongrel2 that calls the slow service (demo_service.py).

    /                 the index: what each link does, and the replies handled in the background so far
    /service/sync     calls the service and waits (only this request's greenlet waits), then shows what the
                      service brought back and how long the round trip took
    /service/async    hands the call off and answers at once; the reply is handled later by
                      ServiceResponseHandler, which logs it and lists it on the index
    /service/forwarded  hands the request to the service, which answers the browser itself through
                      Mongrel2 (`forward_to_service`): this app sends nothing
    /service/streamed   the same, the service sending its page in pieces as it goes (chunked)
    /metrics          Prometheus metrics of the pages and the calls (with the `metrics` extra)
    /status           the service's workers live: state, load, counters, latency (brubeckservice.statuspage;
                      its data at /status?format=json)

Behind Mongrel2 (demos/mongrel2.conf's handler) by default; `--wsgi` serves HTTP itself on port 6767 (or
`--port`), for machines without Mongrel2. `--dir DIR` names the directory the relative ipc:// addresses of
Mongrel2's handler and of the service resolve in (default demos/var/). `--forward-server NAME` is the name
the service knows demos/mongrel2.conf's server by (default brubeck-demo). `demos/run` starts everything, in a
directory of its own per port; see the README.

Every page it answers is one line of its access log (`brubeck.access`, docs/operating.md), with the status it
sent ("GET /no/such/page 404 ..."): Mongrel2's access log cannot say, since it logs 200 for every request
the moment it hands it to a handler. The status page's own requests (it polls once a second) are logged
only when they fail.

The handlers are written in the 2013 brubeck-service style (`Jinja2Rendering, ServiceClientMixin,
WebMessageHandler`); a service that times out or cannot be reached gets an error page, not a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import brubeckservice.metrics
from brubeck.connections import Mongrel2Connection, WSGIConnection
from brubeck.errors import ConfigurationError
from brubeck.metrics import MetricsHandler
from brubeck.request_handling import Brubeck, HTTPResponse, WebMessageHandler
from brubeck.templating import Jinja2Rendering, load_jinja2_env
from brubeckservice.base import (
    RemoteServiceError,
    ServiceClient,
    ServiceClientMixin,
    ServiceError,
    ServiceMessageHandler,
    ServiceResponse,
    ServiceTimeout,
    ServiceUnavailable,
)
from brubeckservice.mixin import register_service
from brubeckservice.statuspage import ServiceStatusHandler

DEMOS_DIR = Path(__file__).resolve().parent
# As in demo_service.py: the relative ipc:// addresses resolve in the runtime directory, by default
# demos/var/ (not demos/: demos/run is a script, so no run/ directory can live there).
RUNTIME_DIR = DEMOS_DIR / "var"
TEMPLATES_DIR = DEMOS_DIR / "templates"

# demos/mongrel2.conf's handler: Mongrel2 pushes requests on send_spec and subscribes to replies on
# recv_spec; we connect to both.
MONGREL2_SEND_SPEC = "ipc://run/requests"
MONGREL2_RECV_SPEC = "ipc://run/replies"

STATUS_PATH = "/status"

SERVICE_ADDR = "ipc://run/slow"
SERVICE_RESPONSE_ADDR = "ipc://run/slow_response"
PASSPHRASE = "my_shared_secret"  # noqa: S105 - the 2013 demo's; a real service keeps its secret elsewhere

#: How long a sync call waits for the service before the page says so (set DEMO_SERVICE_DELAY above it to
#: see the timeout page).
SERVICE_TIMEOUT = 30.0
#: How long a call waits for a connection to the service: a service that is down is reported quickly.
CONNECT_TIMEOUT = 2.0
#: Handed-off calls remembered while their reply is awaited, and background replies shown on the index.
MAX_PENDING = 100
MAX_SHOWN = 5

log = logging.getLogger("demo.client")


def service_delay() -> float:
    """The service's delay (same variable as demo_service.py), shown on the pages; 5 when unset or bad."""
    try:
        return float(os.environ.get("DEMO_SERVICE_DELAY", "5"))
    except ValueError:
        return 5.0


def clock() -> str:
    return time.strftime("%H:%M:%S")


@dataclass
class BackgroundReply:
    job: str
    sent: str
    handed_off_at: float
    returned: Any = None
    status: str = ""
    took: float = 0.0
    received: str = ""


@dataclass
class Handoffs:
    """The async calls of one app: those awaiting their reply, and the last few replies handled."""

    pending: dict[str, BackgroundReply] = field(default_factory=dict)
    done: deque[BackgroundReply] = field(default_factory=lambda: deque(maxlen=MAX_SHOWN))

    def add(self, job: str, sent: str) -> None:
        self.pending[job] = BackgroundReply(job, sent, time.monotonic())
        # A call whose reply never comes (timed out) is never finished: forget the oldest ones.
        while len(self.pending) > MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))

    def finish(self, reply: ServiceResponse) -> BackgroundReply | None:
        """Record the reply of a handed-off call; None when `reply` answers a sync call instead."""
        entry = self.pending.pop(reply.msg_id.decode(errors="replace"), None)
        if entry is not None:
            entry.returned = reply.get_argument("RETURN_DATA")
            entry.status = f"{reply.status_code} {reply.status_msg}"
            entry.took = time.monotonic() - entry.handed_off_at
            entry.received = clock()
            self.done.appendleft(entry)
        return entry


def handoffs(application: Any) -> Handoffs:
    found: Handoffs = application.settings["handoffs"]
    return found


def connect_service(app: Any) -> ServiceClient:
    """The app's client of the demo's service (made once, closed by the app's close())."""
    return register_service(app, SERVICE_ADDR, SERVICE_RESPONSE_ADDR, PASSPHRASE, timeout=SERVICE_TIMEOUT,
                            connect_timeout=CONNECT_TIMEOUT)


class DemoPage(Jinja2Rendering, ServiceClientMixin, WebMessageHandler):
    """What the demo's pages share: the service connection, and the error page for a failed call."""

    def connect_service(self) -> ServiceClient:
        # Idempotent: the app connected at start-up (build_app); every request gets that same client.
        return connect_service(self.application)

    def service_error(self, err: ServiceError) -> HTTPResponse:
        """The errors page for a failed call, with what went wrong in words (the status line stays short)."""
        if isinstance(err, ServiceTimeout):
            detail = (f"The slow service did not answer within {SERVICE_TIMEOUT:g} seconds, so the call was "
                      "given up. Is it stuck, or is its delay longer than that?")
        elif isinstance(err, ServiceUnavailable):
            detail = (f"The slow service cannot be reached at {SERVICE_ADDR} (in {Path.cwd()}). "
                      "Is demo_service.py running?")
        elif isinstance(err, RemoteServiceError):
            detail = f"The slow service answered with an error: {err}"
        else:
            detail = f"The call to the slow service failed: {err}"
        code = int(err.status_code)
        log.warning("%s on %s: %s", type(err).__name__, self.message.path, err)
        return self.render_template("errors.html", _status_code=code, error_code=code,
                                    status_msg=HTTPStatus(code).phrase, detail=detail, reason=str(err))


class IndexHandler(DemoPage):
    def get(self) -> HTTPResponse:
        return self.render_template("index.html", replies=list(handoffs(self.application).done))


class SyncHandler(DemoPage):
    """Call the service and wait: this request's greenlet blocks, the app keeps serving others."""

    def get(self) -> HTTPResponse:
        self.connect_service()
        sent = f"Hello from the web app, sent at {clock()}"
        service_req = self.create_service_request('/service/slow', 'request', {"RETURN_DATA": sent})
        started = time.monotonic()
        try:
            response, _handled = self.send_service_request(SERVICE_ADDR, service_req)
            response.raise_for_status()
        except ServiceError as err:
            return self.service_error(err)
        elapsed = time.monotonic() - started
        log.info("sync call answered in %.2f s: %d %s", elapsed, response.status_code, response.status_msg)
        return self.render_template("success.html", mode="sync", sent=sent,
                                    returned=response.get_argument("RETURN_DATA"),
                                    status=f"{response.status_code} {response.status_msg}", elapsed=elapsed)


class AsyncHandler(DemoPage):
    """Hand the call off and answer at once; ServiceResponseHandler gets the reply when it comes."""

    def get(self) -> HTTPResponse:
        self.connect_service()
        sent = f"Handed off by the web app at {clock()}"
        service_req = self.create_service_request('/service/slow', 'request', {"RETURN_DATA": sent})
        try:
            job = self.send_service_request_nowait(SERVICE_ADDR, service_req).decode()
        except ServiceError as err:
            return self.service_error(err)
        # Recorded before this greenlet yields, so the reply cannot be handled before we know the job.
        handoffs(self.application).add(job, sent)
        log.info("handed off job %s", job)
        return self.render_template("success.html", mode="async", sent=sent, job=job)


class ForwardedHandler(DemoPage):
    """Hand the request to the service, which answers the browser itself (through Mongrel2): this handler
    sends nothing. Should the service not answer (down, too slow, refusing), this app answers instead with
    its error page: the browser is never left waiting."""

    service_path = "/service/forwarded"

    def get(self) -> HTTPResponse | None:
        self.connect_service()
        service_req = self.create_service_request(self.service_path, 'request', {"sent": clock()})
        try:
            self.forward_to_service(SERVICE_ADDR, service_req)
        except ServiceError as err:  # known to be out of reach: said at once
            return self.service_error(err)
        log.info("GET %s -> handed to the service, which answers the browser itself", self.message.path)
        return None


class StreamedHandler(ForwardedHandler):
    """The same, for a page the service sends in pieces."""

    service_path = "/service/streamed"


class ServiceResponseHandler(ServiceMessageHandler):
    """Every reply from the service is routed here (path /service/slow, METHOD response), sync or not."""

    def response(self) -> ServiceResponse:
        reply: ServiceResponse = self.message
        job = reply.msg_id.decode(errors="replace")
        entry = handoffs(self.application).finish(reply)
        if entry is not None:
            log.info("background reply for job %s, %.2f s after the hand-off: %d (%s) RETURN_DATA=%r", job,
                     entry.took, self.status_code, self.status_msg, entry.returned)
        else:
            log.info("reply for job %s, awaited by /service/sync: %d (%s)", job, self.status_code, self.status_msg)
        return self.render()


def build_app(use_wsgi: bool, port: int, forward_server: str = "brubeck-demo") -> Brubeck:
    msg_conn: Mongrel2Connection | WSGIConnection
    if use_wsgi:
        msg_conn = WSGIConnection(port=port)
        transport = f"served directly over WSGI on port {port}"
    else:
        msg_conn = Mongrel2Connection(MONGREL2_SEND_SPEC, MONGREL2_RECV_SPEC)
        transport = "behind Mongrel2"
    app = Brubeck(msg_conn=msg_conn,
                  handler_tuples=[(r'^/$', IndexHandler),
                                  (r'^/service/sync$', SyncHandler),
                                  (r'^/service/async$', AsyncHandler),
                                  (r'^/service/forwarded$', ForwardedHandler),
                                  (r'^/service/streamed$', StreamedHandler),
                                  (rf'^{STATUS_PATH}$', ServiceStatusHandler)],
                  # Unrouted requests (404, 405) get the demo's error page too.
                  base_handler=DemoPage,
                  template_loader=load_jinja2_env(str(TEMPLATES_DIR)),
                  transport=transport, handoffs=Handoffs(),
                  # The Mongrel2 server, by the name the service knows it, that forwarded pages go through.
                  forward_server=forward_server,
                  # Ctrl-C: the web clients are gone; app.close() gives replies on their way a moment, not 5 s.
                  service_close_timeout=1)
    # What every page says about the set-up, error pages the framework renders included.
    if app.template_env is not None:
        app.template_env.globals.update(transport=transport, delay=service_delay())
    # Only for replies (METHOD response): a browser asking for /service/slow gets a 405 page instead of
    # reaching a handler that can only answer the service.
    app.add_route_rule(r'^/service/slow', ServiceResponseHandler, method='response')
    connect_service(app)  # now, not at the first call: the status page lists the service from the start
    expose_metrics(app)
    return app


def expose_metrics(app: Brubeck) -> None:
    """Prometheus metrics of this app's pages and of its calls to the service, at /metrics (docs/metrics.md),
    when the `metrics` extra is installed (demos/run installs it)."""
    try:
        brubeckservice.metrics.enable()
    except ConfigurationError as missing:
        log.warning("no /metrics: %s", missing)
        return
    app.add_route_rule(r'^/metrics$', MetricsHandler, method='GET')


class QuietStatusPolls(logging.Filter):
    """Leaves the status page's answered requests (a poll a second) out of the access log; not its errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exchange = getattr(record, "exchange", None)
        return not (getattr(exchange, "path", None) == STATUS_PATH and getattr(exchange, "status", None) == 200)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wsgi", action="store_true", help="serve HTTP directly instead of behind Mongrel2")
    parser.add_argument("--port", type=int, default=6767, help="the HTTP port with --wsgi (default 6767)")
    parser.add_argument("--dir", type=Path, default=RUNTIME_DIR,
                        help="where the ipc:// sockets live (default demos/var)")
    parser.add_argument("--forward-server", default="brubeck-demo",
                        help="the name the service knows this app's Mongrel2 server by (default brubeck-demo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("brubeck.access").addFilter(QuietStatusPolls())
    runtime_dir = args.dir.resolve()
    (runtime_dir / "run").mkdir(parents=True, exist_ok=True)
    os.chdir(runtime_dir)
    app = build_app(args.wsgi, args.port, args.forward_server)
    log.info("web app %s, calling the service at %s", app.settings["transport"], SERVICE_ADDR)
    try:
        app.run()
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            sys.exit(f"cannot serve on port {args.port}: it is already in use")
        if err.errno == errno.EACCES:
            sys.exit(f"cannot serve on port {args.port}: permission denied (ports below 1024 need root)")
        raise
    log.info("stopped")


if __name__ == "__main__":
    main()
