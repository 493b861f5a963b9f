"""A service whose calls to /hold run until a call to /release comes: a call certainly in flight when a
test stops the process.

    python held_service.py SERVICE_ADDR

The passphrase comes from $BRUBECK_SERVICE_PASSPHRASE (default 'my_shared_secret'). It serves with
`app.run()`, so SIGTERM drains it and SIGINT closes it, as in production.
"""

import os
import sys

from gevent.event import Event

from brubeck.application import Brubeck
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.models import ServiceResponse
from brubeckservice.server import ServiceConnection


class HoldHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        released: Event = self.application.settings["released"]
        released.wait()
        self.set_status(200, "released")
        return self.render()


class ReleaseHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        released: Event = self.application.settings["released"]
        released.set()
        return self.render()


passphrase = os.environ.get("BRUBECK_SERVICE_PASSPHRASE", "my_shared_secret")
app = Brubeck(msg_conn=ServiceConnection(sys.argv[1], None, passphrase),
              handler_tuples=[(r"^/hold", HoldHandler), (r"^/release", ReleaseHandler)], released=Event())
app.run()
