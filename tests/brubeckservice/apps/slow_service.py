"""A slow echo service, written the way brubeck-service 2013 users wrote theirs (original-api.md).

    python slow_service.py SERVICE_ADDR [SERVICE_RESPONSE_ADDR]

The passphrase comes from $BRUBECK_SERVICE_PASSPHRASE (default 'my_shared_secret'). Each request sleeps
for its SLEEP argument in seconds (default 0) with coro_sleep, so other requests are served meanwhile, then
sends back its RETURN_DATA.
"""

import os
import sys

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep


class SlowEchoServiceHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        print(f"request from conn_id {self.message.conn_id}", flush=True)
        coro_sleep(float(self.message.get_argument("SLEEP", "0")))
        self.set_status(200, "Took a while, but I am back.")
        self.add_to_payload("RETURN_DATA", self.message.get_argument("RETURN_DATA", "NO DATA"))
        self.headers = {"METHOD": "response"}
        return self.render()


service_addr = sys.argv[1]
service_response_addr = sys.argv[2] if len(sys.argv) > 2 else service_addr + "_response"
passphrase = os.environ.get("BRUBECK_SERVICE_PASSPHRASE", "my_shared_secret")

app = Brubeck(msg_conn=ServiceConnection(service_addr, service_response_addr, passphrase),
              handler_tuples=[(r"^/service/slow", SlowEchoServiceHandler)])
app.run()
