"""The service the hostile-peer suite attacks (tests/brubeckservice/test_hostile.py), in a process of its own
so that its memory and file descriptors can be read from /proc.

    python hostile_target.py ADDRESS [REMEMBERED]

It binds ADDRESS (`tcp://127.0.0.1:*` picks a free port), prints `ready <address bound>` on stdout once it
serves, and logs as any Brubeck app does (INFO and above, to stderr), but for its access lines: the suite
bounds what an attack makes it write, and the lines of the calls it serves are the legitimate callers'
(a line per call of a flood would also change its pace). `/echo` answers at once with the request's
RETURN_DATA. The passphrase is 'my_shared_secret'. SIGINT closes it (Brubeck.run).

REMEMBERED, when given, is how many sessions (REQ) and PINGs its replay guards remember, instead of 100,000
each: a test can then overflow them with a few thousand messages instead of 100,000.
"""

import logging
import sys

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse
from brubeckservice.signing import ReplayGuard, SeenMacs


class EchoHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200, "OK")
        self.add_to_payload("RETURN_DATA", self.message.get_argument("RETURN_DATA", "NO DATA"))
        return self.render()


connection = ServiceConnection(sys.argv[1], None, "my_shared_secret")
if len(sys.argv) > 2:
    remembered = int(sys.argv[2])
    connection.guard = ReplayGuard(connection.window_ms, max_sessions=remembered)
    connection.pings = SeenMacs(connection.window_ms, max_entries=remembered)
logging.getLogger("brubeckservice.access").setLevel(logging.WARNING)
app = Brubeck(msg_conn=connection, handler_tuples=[(r"^/echo$", EchoHandler)])
print("ready", connection.bound[0], flush=True)
app.run()
