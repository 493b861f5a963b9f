#!/usr/bin/env python3
"""The slow service of the demo: a Brubeck app that echoes RETURN_DATA back after taking its time.

It is written exactly as a 2013 brubeck-service user wrote it; only the set-up below `main()` is new.
`coro_sleep` is gevent's sleep, so while one request sleeps the service keeps taking others: two callers
waiting at once both get their answer after one delay, not two.

    DEMO_SERVICE_DELAY=2 .venv/bin/python demos/demo_service.py     # seconds per request (default 5)

Ctrl-C or SIGTERM closes the socket (and removes its ipc file) before exiting.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep

# The 2013 addresses are relative ('ipc://run/slow'), so they resolve against the working directory: we
# move into demos/var/ (beside Mongrel2's run/ and log/) whatever directory the script is started from.
# Not demos/ itself: demos/run is the launcher script, so a run/ directory cannot live there.
RUNTIME_DIR = Path(__file__).resolve().parent / "var"

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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    RUNTIME_DIR.mkdir(exist_ok=True)
    os.chdir(RUNTIME_DIR)
    app = Brubeck(msg_conn=ServiceConnection('ipc://run/slow', 'ipc://run/slow_response', 'my_shared_secret'),
                  handler_tuples=[(r'^/service/slow', SlowEchoHandler)])
    log.info("slow echo service ready at ipc://run/slow (in %s), %g s per request", RUNTIME_DIR, DELAY)
    app.run()
    log.info("stopped")


if __name__ == "__main__":
    main()
