"""The worker of the many-workers benchmarks (bench/workers.py), an ordinary service app script:

    python bench/worker_app.py ADDRESS [--capacity N]
    python -m brubeckservice run bench/worker_app.py --workers N --bind ADDR -- [--capacity N]

Under the supervisor each worker binds the address it is given in $BRUBECK_SERVICE_BIND (ServiceConnection
honours it) and ADDRESS may be left out. It needs the repository on PYTHONPATH (bench.payload), prints
`READY` once its socket is bound and serves until SIGTERM, which drains it (Brubeck.run). Routes:

    /echo   the arguments back, and this process's pid (`pid`)
    /cpu    holds the CPU for `ms` milliseconds of this thread's CPU time, computing, never yielding: what a
            CPU-bound handler does. CPU time, not wall time, so a worker that shares its core with another
            takes longer in wall time, as real work would (a wall-clock loop would hide the sharing)
    /sleep  sleeps `seconds` cooperatively, other requests going on meanwhile
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from bench.payload import PASSPHRASE, READY

#: The address bound when neither ADDRESS nor $BRUBECK_SERVICE_BIND names one.
DEFAULT_ADDRESS = "ipc://bench-worker.sock"


def spin(ms: float) -> int:
    """Compute for `ms` milliseconds of this thread's CPU time (the clock is read every ~50 us of work)."""
    until = time.thread_time() + ms / 1000
    total = 0
    while time.thread_time() < until:
        for i in range(1000):
            total += i * i
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/worker_app.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", nargs="?", default=DEFAULT_ADDRESS)
    parser.add_argument("--capacity", type=int, default=None, help="requests run at once (1: CPU-bound)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from brubeck.application import Brubeck
    from brubeckservice import ServiceConnection, ServiceMessageHandler, ServiceResponse
    from brubeckservice.base import coro_sleep

    pid = os.getpid()

    class EchoHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            for key, value in self.message.arguments.items():
                self.add_to_payload(key, value)
            self.add_to_payload("pid", pid)
            self.set_status(200)
            return self.render()

    class CpuHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            spin(float(self.message.arguments.get("ms", 20)))
            self.add_to_payload("pid", pid)
            self.set_status(200)
            return self.render()

    class SleepHandler(ServiceMessageHandler):
        def request(self) -> ServiceResponse:
            coro_sleep(float(self.message.arguments.get("seconds", 0)))
            self.add_to_payload("pid", pid)
            self.set_status(200)
            return self.render()

    connection = ServiceConnection(args.address, None, PASSPHRASE, capacity=args.capacity)
    app = Brubeck(msg_conn=connection, log_level=logging.WARNING,
                  handler_tuples=[("^/echo$", EchoHandler), ("^/cpu$", CpuHandler), ("^/sleep$", SleepHandler)])
    print(READY, flush=True)
    app.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
