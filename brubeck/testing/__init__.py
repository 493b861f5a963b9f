"""A test kit for Brubeck apps, yours and ours.

- `TestClient(app)` (client.py): call an application in-process, as a transport would, without sockets:
  `client.get("/hello?name=x")`, `client.post("/form", data={...})`, cookies kept between requests.
- `Mongrel2Server` (mongrel2.py): a real Mongrel2 in a working directory, on free ports or from your own
  config file, for integration tests.
- `DnsServer` (dns.py): a real DNS server (Debian's dnsmasq) on a free loopback port, serving the A, AAAA
  and SRV records a test sets and rewrites, for service discovery tests.
- `free_port`, `port_in_use`, `process_alive` (ports.py): what to ask of the host before starting servers.
"""

from brubeck.testing.client import NoResponse, TestClient, TestResponse
from brubeck.testing.dns import DnsServer, DnsServerError, dnsmasq_available
from brubeck.testing.mongrel2 import Mongrel2Error, Mongrel2Server, mongrel2_available
from brubeck.testing.ports import free_port, port_in_use, process_alive

__all__ = [
    "DnsServer",
    "DnsServerError",
    "Mongrel2Error",
    "Mongrel2Server",
    "NoResponse",
    "TestClient",
    "TestResponse",
    "dnsmasq_available",
    "free_port",
    "mongrel2_available",
    "port_in_use",
    "process_alive",
]
