"""The demo's forwarded and streamed pages: their configuration, and how they answer without Mongrel2.

In Chromium behind Mongrel2 they are tested in test_demo.py; here, that the service's default Mongrel2
handler is demos/mongrel2.conf's (so the three-terminal way of the README forwards too), and that over
WSGI, where the service cannot reach the browser, the web app relays the service's pages instead.
"""

from __future__ import annotations

import re

import requests

from tests.demos.conftest import StartDemo
from tests.demos.helpers import DEMOS


def test_the_services_default_handler_is_the_demo_configs() -> None:
    config = (DEMOS / "mongrel2.conf").read_text()
    service = (DEMOS / "demo_service.py").read_text()
    (recv_spec,) = re.findall(r"recv_spec='([^']*)'", config)
    (send_ident,) = re.findall(r"send_ident='([^']*)'", config)
    (name,) = re.findall(r"\bname='([^']*)',\n", config)  # (the Server's, not a Host's)
    assert f'MONGREL2_RECV_SPEC = "{recv_spec}"' in service
    assert f'MONGREL2_SENDER = "{send_ident}"' in service
    assert f'MONGREL2_NAME = "{name}"' in service
    assert f'MONGREL2_NAME = "{name}"' in (DEMOS / "run.py").read_text()


def test_over_wsgi_the_web_app_relays_the_services_pages(start_demo: StartDemo) -> None:
    demo = start_demo("--wsgi", delay=0.5)
    assert demo.wait_for_line(r"\[client\] .*served directly over WSGI", 1)
    forwarded = requests.get(demo.url + "service/forwarded", timeout=30)
    assert forwarded.status_code == 200 and "Relayed by the web app" in forwarded.text
    streamed = requests.get(demo.url + "service/streamed", timeout=30)
    assert streamed.status_code == 200 and streamed.text.count('<li class="piece">') == 5
    assert "That was all of it." in streamed.text
    assert demo.interrupt() == 0, demo.output()
