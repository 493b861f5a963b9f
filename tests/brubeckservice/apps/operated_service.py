"""A service app for the operator commands' tests (tests/brubeckservice/test_cli_operate.py), run by
`brubeck-service run`.

    python operated_service.py

It binds $BRUBECK_SERVICE_BIND (else ipc://operated_service in the working directory), with the passphrase
$BRUBECK_SERVICE_PASSPHRASE (default 'my_shared_secret'), and with CURVE when $OPERATED_CURVE_DIR names a
directory holding server.key_secret and clients/ (the allowed clients' NAME.key files). Routes:
- `/echo` (methods request, get, post): answers with the method, arguments and headers it received, and
  this process's pid and $BRUBECK_WORKER_INDEX;
- `/text`: answers with a plain string body;
- `/fail`: raises, so the service answers 500 (and counts an error);
- `/cpu`: holds the CPU for SECONDS without yielding (its event loop, and so its PONGs, stop meanwhile).
"""

import os
import time

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse
from brubeckservice.curve import CurveServer


class EchoHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200, "OK")
        self.add_to_payload("method", self.message.method)
        self.add_to_payload("arguments", self.message.arguments)
        self.add_to_payload("headers", self.message.headers)
        self.add_to_payload("pid", os.getpid())
        self.add_to_payload("index", os.environ.get("BRUBECK_WORKER_INDEX", ""))
        return self.render()

    get = post = request


class TextHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        self.set_status(200, "OK")
        self.set_body("plain text, not JSON", "text/plain")
        return self.render()


class FailHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        raise RuntimeError("failing on purpose")


class CpuHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        until = time.monotonic() + float(self.message.get_argument("SECONDS", "0"))
        while time.monotonic() < until:
            pass
        self.set_status(200, "OK")
        return self.render()


if __name__ == "__main__":
    passphrase = os.environ.get("BRUBECK_SERVICE_PASSPHRASE", "my_shared_secret")
    keys = os.environ.get("OPERATED_CURVE_DIR")
    curve = CurveServer(f"{keys}/server.key_secret", clients=f"{keys}/clients") if keys else None
    app = Brubeck(msg_conn=ServiceConnection("ipc://operated_service", None, passphrase, curve=curve),
                  handler_tuples=[(r"^/echo$", EchoHandler), (r"^/text$", TextHandler), (r"^/fail$", FailHandler),
                                  (r"^/cpu$", CpuHandler)])
    app.run()
