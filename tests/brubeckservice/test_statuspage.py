"""brubeckservice/statuspage.py: the status page's JSON over a real web app with real service clients, and
its HTML, which shows data from the network as text only (in Chromium too, with hostile data)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.testing import TestClient
from brubeck.testing.client import TestResponse
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.statuspage import CONTENT_SECURITY_POLICY, ServiceStatusHandler
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, wait_until

WORKER_FIELDS = {"address", "state", "reason", "inflight", "capacity", "load", "last_heard", "latency_p50_ms",
                 "latency_p99_ms", "source", "served", "errors", "served_p50_ms", "served_p99_ms", "uptime",
                 "version"}


class Registrar(ServiceClientMixin):
    """Registers services in an app as its handlers do (`register_service`), outside any request."""

    def __init__(self, application: Brubeck) -> None:
        self.application = application


@pytest.fixture
def web_app() -> Iterator[Brubeck]:
    app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/status$", ServiceStatusHandler)])
    yield app
    app.close()  # (closes the clients registered in it)


def status(client: TestClient) -> dict[str, Any]:
    response = client.get("/status?format=json")
    assert response.status_code == 200
    assert response.header("Content-Type") == "application/json"
    assert response.header("Cache-Control") == "no-store"
    found: dict[str, Any] = response.json()
    return found


def only_worker(client: TestClient) -> dict[str, Any]:
    (service,) = status(client)["services"]
    (worker,) = service["workers"]
    found: dict[str, Any] = worker
    return found


def inline(page_html: str, tag: str) -> str:
    (found,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page_html, re.DOTALL)
    return str(found)


def test_no_services_registered(web_app: Brubeck) -> None:
    client = TestClient(web_app)
    data = status(client)
    assert data["services"] == []
    assert abs(data["timestamp"] - time.time()) < 5
    html = client.get("/status")
    assert html.status_code == 200
    assert html.header("Content-Type") == "text/html; charset=utf-8"
    assert "No services registered." in html.text


def test_json_for_format_json_or_an_accept_header_naming_json_only(web_app: Brubeck) -> None:
    client = TestClient(web_app)
    assert client.get("/status", headers={"Accept": "application/json"}).json()["services"] == []
    navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,application/json;q=0.8,*/*;q=0.7"
    assert client.get("/status", headers={"Accept": navigation}).text.startswith("<!doctype html>")
    assert client.head("/status?format=json").header("Content-Type") == "application/json"


def test_a_worker_is_alive_once_it_answered_and_dead_once_the_service_is_closed(web_app: Brubeck,
                                                                              short_tmp: Path) -> None:
    service = ServicePair(ROUTES, PASSPHRASE, address=f"ipc://{short_tmp}/svc")
    try:
        registered = Registrar(web_app).register_service(service.address, None, PASSPHRASE, heartbeat=0.1)
        client = TestClient(web_app)
        assert registered.call("/echo", arguments={"RETURN_DATA": "hi"}).body["RETURN_DATA"] == "hi"
        # `served` comes with the worker's next PONG (a heartbeat away).
        wait_until(lambda: only_worker(client)["served"] == 1, "the worker to report the call it served")

        (entry,) = status(client)["services"]
        assert entry["address"] == service.address
        assert (entry["pending"], entry["queued"], entry["available"]) == (0, 0, True)
        assert entry["stats"]["replies"] == 1 and entry["stats"]["sent"] == 1
        assert not {"timeouts", "unavailable", "forged", "late"} & set(entry["stats"])
        worker = only_worker(client)
        assert set(worker) == WORKER_FIELDS
        assert (worker["address"], worker["state"], worker["source"]) == (service.address, "alive", "configured")
        assert (worker["inflight"], worker["errors"]) == (0, 0)
        assert worker["capacity"] >= 1 and worker["load"] == 0
        assert 0 < worker["latency_p50_ms"] <= worker["latency_p99_ms"]
        assert worker["served_p50_ms"] is not None and worker["uptime"] > 0
        assert isinstance(worker["version"], str) and worker["version"]
        assert 0 <= worker["last_heard"] < 5
    finally:
        service.close()
    wait_until(lambda: only_worker(client)["state"] == "dead", "the worker to be dead once the service closed")
    worker = only_worker(client)
    assert worker["reason"]
    assert status(client)["services"][0]["stats"]["replies"] == 1


def test_data_from_the_network_never_becomes_markup(web_app: Brubeck, short_tmp: Path) -> None:
    hostile = f"ipc://{short_tmp}/<script>alert(1)</script><img src=x onerror=alert(2)>"
    Registrar(web_app).register_service(hostile, None, PASSPHRASE)
    client = TestClient(web_app)
    assert only_worker(client)["address"] == hostile  # JSON (served as such, nosniff): data stays data
    page_html = client.get("/status")
    assert "alert(" not in page_html.text and short_tmp.name not in page_html.text  # the page holds no data
    script = inline(page_html.text, "script")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("):
        assert sink not in script
    # Only the page's own script and style may run, by hash.
    policy = page_html.header("Content-Security-Policy")
    assert policy == CONTENT_SECURITY_POLICY
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        digest = base64.b64encode(hashlib.sha256(inline(page_html.text, tag).encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}'" in policy


def test_settings_and_title_are_escaped() -> None:
    class Custom(ServiceStatusHandler):
        poll_interval = 0.25
        history = 30
        title = "<b>Ops</b> & co"

    app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/status$", Custom)])
    text = TestClient(app).get("/status").text
    assert '<body data-interval="250" data-history="30">' in text
    assert "<title>&lt;b&gt;Ops&lt;/b&gt; &amp; co</title>" in text and "<b>Ops" not in text


# -- in Chromium, with hostile JSON -------------------------------------------------------------------


def fulfil(route: Route, response: TestResponse) -> None:
    route.fulfill(status=response.status_code, headers=dict(response.headers), body=response.body)


@pytest.mark.browser
def test_chromium_shows_hostile_text_as_text(web_app: Brubeck, page: Page) -> None:
    hostile = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>"
    data = {"timestamp": time.time(), "services": [{
        "address": "tcp://evil:1" + hostile, "pending": 1, "queued": 0, "available": True,
        "stats": {"timeouts": 2, "replies": 5, hostile: 1},
        "workers": [{"address": "tcp://evil:1" + hostile, "state": hostile, "reason": hostile, "inflight": 1,
                     "capacity": 4, "load": 1, "last_heard": 0.1, "latency_p50_ms": 12.5, "latency_p99_ms": 20.0,
                     "source": "configured", "served": 7, "errors": 1, "served_p50_ms": 10.0,
                     "served_p99_ms": 15.0, "uptime": 42.0, "version": hostile}]}]}
    client = TestClient(web_app)

    def serve(route: Route) -> None:
        if "format=json" in route.request.url:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(data))
        else:
            fulfil(route, client.get("/status"))

    page.route("http://status.test/**", serve)
    problems: list[str] = []  # (a CSP violation is reported as a console error)
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" and not message.location["url"].endswith("/favicon.ico") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("http://status.test/status")
    page.wait_for_function("() => Number(document.body.dataset.polls) >= 2", timeout=10_000)
    row = page.locator("tr.worker")
    assert row.locator("td.reason").inner_text() == hostile
    assert row.locator("td.version").inner_text() == hostile
    assert row.locator("td.state .badge").inner_text() == hostile
    assert row.locator("td.state .badge").get_attribute("class") == "badge s-unknown"
    assert page.locator("section.service").get_attribute("data-address") == "tcp://evil:1" + hostile
    assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.locator("[data-stat=timeouts]").get_attribute("class") == "stat bad"
    assert int(page.locator("polyline").get_attribute("data-points") or 0) >= 2
    assert problems == []


@pytest.mark.browser
def test_chromium_says_when_no_service_is_registered(web_app: Brubeck, page: Page) -> None:
    client = TestClient(web_app)
    page.route("http://status.test/**",
               lambda route: fulfil(route, client.get(route.request.url.removeprefix("http://status.test"))))
    page.goto("http://status.test/status")
    page.wait_for_function("() => Number(document.body.dataset.polls) >= 1", timeout=10_000)
    assert page.locator("#services").inner_text() == "No services registered."
    assert page.locator("#problem").is_hidden()
