"""An ordinary service app script, run by `brubeck-service run` in tests/brubeckservice/test_supervisor.py.

    python supervised_echo.py

It binds its own address (ipc://supervised_echo in the working directory) unless a supervisor names
another through $BRUBECK_SERVICE_BIND, which ServiceConnection honours. `/echo` answers with RETURN_DATA,
this process's pid and its $BRUBECK_WORKER_INDEX, after sleeping SLEEP seconds (default 0) with
coro_sleep, so a call can be in flight while the worker is told to stop. It prints a line as each call
arrives ("pid P received DATA"). The passphrase comes from
$BRUBECK_SERVICE_PASSPHRASE (default 'my_shared_secret').
"""

import os

from brubeck.request_handling import Brubeck
from brubeckservice.base import ServiceConnection, ServiceMessageHandler, ServiceResponse, coro_sleep


class WhoAmIHandler(ServiceMessageHandler):
    def request(self) -> ServiceResponse:
        data = self.message.get_argument("RETURN_DATA", "NO DATA")
        print(f"pid {os.getpid()} received {data}", flush=True)
        coro_sleep(float(self.message.get_argument("SLEEP", "0")))
        self.set_status(200, "OK")
        self.add_to_payload("RETURN_DATA", data)
        self.add_to_payload("pid", os.getpid())
        self.add_to_payload("index", os.environ.get("BRUBECK_WORKER_INDEX", ""))
        self.headers = {"METHOD": "response"}
        return self.render()


if __name__ == "__main__":
    passphrase = os.environ.get("BRUBECK_SERVICE_PASSPHRASE", "my_shared_secret")
    app = Brubeck(msg_conn=ServiceConnection("ipc://supervised_echo", None, passphrase),
                  handler_tuples=[(r"^/echo", WhoAmIHandler)])
    app.run()
