#!/usr/bin/env python3
"""The slow service of the demo: a Brubeck app that echoes RETURN_DATA back after taking its time.

`SlowEchoHandler` is written exactly as a 2013 brubeck-service user wrote it; only the set-up below
`main()` is new. `coro_sleep` is gevent's sleep, so while one request sleeps the service keeps taking
others: two callers waiting at once both get their answer after one delay, not two.

Two handlers answer the browser themselves, through Mongrel2 (`forward_to_service`, docs/forwarding.md):
`ForwardedPageHandler` renders a whole page after the delay, `StreamedPageHandler` sends one in pieces as
it goes. The web app hands them the request and sends nothing. Over WSGI (no Mongrel2) the web app relays
what they answer instead; the pages say which way they came.

    DEMO_SERVICE_DELAY=2 .venv/bin/python demos/demo_service.py     # seconds per request (default 5)

`--dir DIR` names the directory its relative ipc:// addresses resolve in (default demos/var/; `demos/run`
gives each run one of its own). `--mongrel2 NAME RECV_SPEC SENDER` names the Mongrel2 handler it answers
browsers through (default: demos/mongrel2.conf's), `--no-mongrel2` says there is none. Ctrl-C or SIGTERM
closes the sockets (and removes the ipc file) before exiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from brubeck.request_handling import Brubeck
from brubeck.templating import load_jinja2_env
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep
from brubeckservice.errors import ForwardFailed
from brubeckservice.forwarding import Mongrel2Server

# The 2013 addresses are relative ('ipc://run/slow'), so they resolve against the working directory: we
# move into the runtime directory (beside Mongrel2's run/ and log/), by default demos/var/, whatever
# directory the script is started from. Not demos/ itself: demos/run is the launcher script, so a run/
# directory cannot live there.
RUNTIME_DIR = Path(__file__).resolve().parent / "var"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# demos/mongrel2.conf's server name and handler: replies go to its recv_spec and begin with its send_ident
# (its recv_ident is the same, so Mongrel2 takes only those). `demos/run` passes what it loaded.
MONGREL2_NAME = "brubeck-demo"
MONGREL2_RECV_SPEC = "ipc://run/replies"
MONGREL2_SENDER = "34f9ceee-cd52-4b7f-b197-88bf2f0ec378"

#: The streamed page: how many pieces, and the pause before each.
STREAM_PIECES = 5
STREAM_PAUSE = 0.25

log = logging.getLogger("demo.service")


def service_delay() -> float:
    """Seconds each request takes: DEMO_SERVICE_DELAY (tests shorten it), default 5."""
    text = os.environ.get("DEMO_SERVICE_DELAY", "5")
    try:
        delay = float(text)
    except ValueError:
        delay = -1.0
    if not 0 <= delay <= 3600:
        sys.exit(f"DEMO_SERVICE_DELAY must be a number of seconds between 0 and 3600, not {text!r}")
    return delay


DELAY = service_delay()


class SlowEchoHandler(ServiceMessageHandler):
    """Takes DELAY seconds, then sends back the RETURN_DATA it was given."""

    def request(self) -> ServiceResponse:
        data = self.message.get_argument("RETURN_DATA", "NO DATA")
        log.info("request for web connection %s: %r; answering in %g s", self.message.conn_id, data, DELAY)
        coro_sleep(DELAY)
        self.set_status(200, "Took a while, but I am back.")
        self.add_to_payload("RETURN_DATA", data)
        self.headers = {"METHOD": "response"}
        return self.render()


def clock() -> str:
    return time.strftime("%H:%M:%S")


def page(handler: ServiceMessageHandler, template: str, **context: object) -> str:
    env = handler.application.template_env
    if env is None:
        raise RuntimeError("the service renders pages: Brubeck(template_loader=...)")
    # The base template's footer and this page say which way the answer went.
    return env.get_template(template).render(forwarded=handler.forwarded, pid=os.getpid(), delay=DELAY,
                                             transport="", **context)


class ForwardedPageHandler(ServiceMessageHandler):
    """Takes DELAY seconds, then answers the browser a whole page itself (the web app sends nothing)."""

    def request(self) -> ServiceResponse:
        sent = self.message.get_argument("sent", "")
        coro_sleep(DELAY)
        self.set_status(200)
        self.set_body(page(self, "forwarded.html", sent=sent, answered=clock(), conn_id=self.message.conn_id))
        log.info("answered web connection %s %s", self.message.conn_id,
                 "myself, through Mongrel2" if self.forwarded else "through the web app (WSGI)")
        return self.render()


class StreamedPageHandler(ServiceMessageHandler):
    """Sends a page in pieces as it goes: the top at once, STREAM_PIECES lines STREAM_PAUSE s apart, then
    the bottom; the browser shows each as it comes (behind Mongrel2; over WSGI it gets them all at once)."""

    def request(self) -> ServiceResponse:
        self.headers["Content-Type"] = "text/html; charset=utf-8"
        top, bottom = page(self, "streamed.html", pieces=STREAM_PIECES).split("<!-- pieces -->")
        try:
            self.stream(top)
            for number in range(1, STREAM_PIECES + 1):
                coro_sleep(STREAM_PAUSE)
                self.stream(f'<li class="piece">Piece {number} of {STREAM_PIECES}, sent at {clock()}'
                            f'<script>arrived.push(performance.now())</script></li>\n')
            self.stream(bottom)
        except ForwardFailed as err:  # the browser cannot be answered any more: stop working
            log.warning("stopped streaming to web connection %s: %s", self.message.conn_id, err)
        log.info("streamed %d pieces to web connection %s", STREAM_PIECES, self.message.conn_id)
        return self.render()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=RUNTIME_DIR,
                        help="where ipc://run/slow lives (default demos/var)")
    parser.add_argument("--mongrel2", nargs=3, metavar=("NAME", "RECV_SPEC", "SENDER"),
                        default=[MONGREL2_NAME, MONGREL2_RECV_SPEC, MONGREL2_SENDER],
                        help="the Mongrel2 handler to answer browsers through (default: demos/mongrel2.conf's)")
    parser.add_argument("--no-mongrel2", action="store_true",
                        help="no Mongrel2 to answer browsers through (the web app serves HTTP itself)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    runtime_dir = args.dir.resolve()
    (runtime_dir / "run").mkdir(parents=True, exist_ok=True)
    os.chdir(runtime_dir)
    name, recv_spec, sender = args.mongrel2
    mongrel2 = None if args.no_mongrel2 else {name: Mongrel2Server(recv_spec, sender)}
    connection = ServiceConnection('ipc://run/slow', 'ipc://run/slow_response', 'my_shared_secret',
                                   mongrel2=mongrel2)
    app = Brubeck(msg_conn=connection, handler_tuples=[(r'^/service/slow', SlowEchoHandler),
                                                       (r'^/service/forwarded', ForwardedPageHandler),
                                                       (r'^/service/streamed', StreamedPageHandler)],
                  template_loader=load_jinja2_env(str(TEMPLATES_DIR)))
    # (Under `brubeck-service run`, the address bound is the supervisor's choice: say which.)
    log.info("slow echo service ready at %s (in %s), %g s per request; %s", connection.service_addr, runtime_dir,
             DELAY, "no Mongrel2 to answer browsers through" if mongrel2 is None else
             f"answers browsers through Mongrel2 server {name!r} at {recv_spec}")
    app.run()
    log.info("stopped")


if __name__ == "__main__":
    main()
