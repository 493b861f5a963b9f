#!/usr/bin/env python3
"""The slow service of the demo: a Brubeck app that echoes RETURN_DATA back after taking its time.

It is written exactly as a 2013 brubeck-service user wrote it; only the set-up below `main()` is new.
`coro_sleep` is gevent's sleep, so while one request sleeps the service keeps taking others: two callers
waiting at once both get their answer after one delay, not two.

    DEMO_SERVICE_DELAY=2 .venv/bin/python demos/demo_service.py     # seconds per request (default 5)

`--dir DIR` names the directory its relative ipc:// addresses resolve in (default demos/var/; `demos/run`
gives each run one of its own). Ctrl-C or SIGTERM closes the socket (and removes its ipc file) before exiting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep

# The 2013 addresses are relative ('ipc://run/slow'), so they resolve against the working directory: we
# move into the runtime directory (beside Mongrel2's run/ and log/), by default demos/var/, whatever
# directory the script is started from. Not demos/ itself: demos/run is the launcher script, so a run/
# directory cannot live there.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", type=Path, default=RUNTIME_DIR,
                        help="where ipc://run/slow lives (default demos/var)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    runtime_dir = args.dir.resolve()
    (runtime_dir / "run").mkdir(parents=True, exist_ok=True)
    os.chdir(runtime_dir)
    connection = ServiceConnection('ipc://run/slow', 'ipc://run/slow_response', 'my_shared_secret')
    app = Brubeck(msg_conn=connection, handler_tuples=[(r'^/service/slow', SlowEchoHandler)])
    # (Under `brubeck-service run`, the address bound is the supervisor's choice: say which.)
    log.info("slow echo service ready at %s (in %s), %g s per request", connection.service_addr, runtime_dir, DELAY)
    app.run()
    log.info("stopped")


if __name__ == "__main__":
    main()
