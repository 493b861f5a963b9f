"""One hop of a three-process chain: a web app behind Mongrel2 -> service A -> service B (test_hops.py).

    python hop.py web --log FILE --pull SEND_SPEC --pub RECV_SPEC --next A_ADDR [--budget S] [--budget-header H]
    python hop.py a   --log FILE --bind A_ADDR --next B_ADDR
    python hop.py b   --log FILE --bind B_ADDR [--capacity N]

Each process logs to FILE at INFO, every line carrying the trace id of the request it is about
(brubeck.context.TraceFilter on the file handler). The passphrase comes from $BRUBECK_SERVICE_PASSPHRASE
(default 'my_shared_secret').

- web: GET /report and GET /hold call A's /relay (timeout: the `timeout` query argument, else 30 s) and
  answer with A's status and body, plus what the web handler saw (`web_*`), as JSON.
- A: /relay calls B at the path its `to` argument names (timeout 30 s) and answers with B's status and
  body, plus what A saw (`a_*`).
- B: /report answers with what it sees of the request (`remaining`, `deadline`, `trace_id`, `span_id`);
  /hold logs "hold started", then waits ten minutes (a cancel ends it: "hold cancelled: <reason>").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Any

import gevent

from brubeck.application import Brubeck
from brubeck.context import TraceFilter
from brubeck.errors import Cancelled
from brubeck.handlers import WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.transports.mongrel2 import Mongrel2Connection
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceResponse
from brubeckservice.server import ServiceConnection

#: What test_hops.py parses: the trace id field is `trace=<32 hex digits>`, or `trace=-` outside a request.
LOG_FORMAT = "%(asctime)s %(levelname)s trace=%(trace_id)s span=%(span_id)s %(name)s: %(message)s"
#: Each hop's own timeout for its call to the next: larger than any budget the tests give the web app.
NEXT_TIMEOUT = 30.0
HOLD_SECONDS = 600.0

PASSPHRASE = os.environ.get("BRUBECK_SERVICE_PASSPHRASE", "my_shared_secret")
log = logging.getLogger("hop")


def span_id(handler: WebMessageHandler | ServiceMessageHandler) -> str:
    ctx = handler.request_context
    return "" if ctx is None else ctx.trace.span_id


# -- B: the last hop ------------------------------------------------------------------------------------

class Report(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        log.info("report for %s", self.message.path)
        self.add_to_payload("remaining", self.time_remaining())
        self.add_to_payload("deadline", self.message.deadline)
        self.add_to_payload("trace_id", self.trace_id)
        self.add_to_payload("span_id", span_id(self))
        self.set_status(200)  # (a service handler's status is 500 until it says otherwise)
        return self.render()


class Hold(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        log.info("hold started")
        try:
            gevent.sleep(HOLD_SECONDS)
        except Cancelled as stopped:
            log.info("hold cancelled: %s", stopped)
            raise
        log.info("hold ended, never cancelled")
        self.set_status(200)
        return self.render()


# -- A: the middle hop ----------------------------------------------------------------------------------

class Relay(ServiceClientMixin, ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        client = self.register_service(self.application.settings["next"], None, PASSPHRASE, timeout=NEXT_TIMEOUT)
        to = str(self.message.get_argument("to", "/report"))
        remaining = self.time_remaining()
        log.info("relaying to %s with %s s left", to, remaining)
        reply = client.call(to)
        for key, value in (reply.body if isinstance(reply.body, dict) else {}).items():
            self.add_to_payload(key, value)
        self.add_to_payload("a_remaining", remaining)
        self.add_to_payload("a_trace_id", self.trace_id)
        self.add_to_payload("a_span_id", span_id(self))
        self.set_status(reply.status_code, reply.status_msg)
        return self.render()


# -- the web app: the first hop ---------------------------------------------------------------------------

class Chain(ServiceClientMixin, WebMessageHandler):
    def get(self) -> HTTPResponse:
        client = self.register_service(self.application.settings["next"], None, PASSPHRASE, timeout=NEXT_TIMEOUT)
        remaining = self.time_remaining()
        path = str(self.message.path)
        log.info("calling A for %s with %s s left", path, remaining)
        reply = client.call("/relay", arguments={"to": path}, timeout=float(self.get_argument("timeout", "30")))
        body = dict(reply.body) if isinstance(reply.body, dict) else {}
        body.update(web_remaining=remaining, web_trace_id=self.trace_id, web_span_id=span_id(self))
        self.set_body(json.dumps(body), headers={"Content-Type": "application/json"}, status_code=reply.status_code)
        return self.render()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["web", "a", "b"])
    parser.add_argument("--log", required=True)
    parser.add_argument("--bind", help="the service's address (a, b)")
    parser.add_argument("--next", help="the next hop's service address (web, a)")
    parser.add_argument("--pull", help="Mongrel2's send_spec (web)")
    parser.add_argument("--pub", help="Mongrel2's recv_spec (web)")
    parser.add_argument("--budget", type=float, help="the web app's request_budget setting, seconds")
    parser.add_argument("--budget-header", help="the web app's budget_header setting")
    parser.add_argument("--capacity", type=int, help="B's capacity")
    args = parser.parse_args()

    handler = logging.FileHandler(args.log)
    handler.addFilter(TraceFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    app: Brubeck
    if args.role == "web":
        settings: dict[str, Any] = {"next": args.next}
        if args.budget is not None:
            settings["request_budget"] = args.budget
        if args.budget_header:
            settings["budget_header"] = args.budget_header
        app = Brubeck(msg_conn=Mongrel2Connection(args.pull, args.pub),
                      handler_tuples=[(r"^/report$", Chain), (r"^/hold$", Chain)], **settings)
    elif args.role == "a":
        app = Brubeck(msg_conn=ServiceConnection(args.bind, None, PASSPHRASE),
                      handler_tuples=[(r"^/relay$", Relay)], next=args.next)
    else:
        app = Brubeck(msg_conn=ServiceConnection(args.bind, None, PASSPHRASE, capacity=args.capacity),
                      handler_tuples=[(r"^/report$", Report), (r"^/hold$", Hold)])
    app.run()


if __name__ == "__main__":
    main()
