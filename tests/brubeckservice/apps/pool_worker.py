"""A worker for the many-workers tests: `python pool_worker.py ADDRESS [CAPACITY]`.

Routes: `/echo` answers at once with the worker's pid; `/sleep` sleeps SECONDS cooperatively (other
requests go on); `/cpu` holds the CPU for SECONDS without yielding, as a CPU-bound handler does (its
event loop, and so its application heartbeats, stop meanwhile). Every answer carries `pid` and `address`.
The passphrase is 'my_shared_secret'. SIGTERM drains (Brubeck.run).
"""

import os
import sys
import time

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep


class WorkerHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        seconds = float(self.message.get_argument("SECONDS", "0"))
        if self.message.path == "/sleep":
            coro_sleep(seconds)
        elif self.message.path == "/cpu":
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                pass
        self.set_status(200, "done")
        self.add_to_payload("pid", os.getpid())
        self.add_to_payload("address", address)
        self.add_to_payload("tag", self.message.get_argument("TAG", ""))
        return self.render()


address = sys.argv[1]
capacity = int(sys.argv[2]) if len(sys.argv) > 2 else None
app = Brubeck(msg_conn=ServiceConnection(address, None, "my_shared_secret", capacity=capacity, drain_grace=10),
              handler_tuples=[(r"^/(?:echo|sleep|cpu)$", WorkerHandler)])
print("ready", flush=True)
app.run()
