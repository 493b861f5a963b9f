"""The demo's status page (brubeckservice.statuspage) in Chromium, behind the real Mongrel2 of `demos/run`.

It lists the demo's service from the start (the app registers it when it is built), shows its worker
alive, and, as calls are made, the worker's served count and its latency chart grow. The screenshot is
written to /tmp/demo-status.png, and to $ARTIFACTS_DIR when that is set.
"""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import Page
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import shot
from tests.demos.conftest import DELAY
from tests.demos.helpers import RunningDemo

pytestmark = [pytest.mark.browser, pytest.mark.mongrel2]

SERVICE = "ipc://run/slow"  # as demo_service_client.py registers it
SECTION = f'section.service[data-address="{SERVICE}"]'
WORKER = f"{SECTION} tr.worker"
CALLS = 3
#: Milliseconds to wait for what takes one service delay (and a heartbeat or two) to happen.
WAIT_MS = DELAY * 5 * 1000


def chart_points() -> str:
    """A page function: how many points the worker's latency line has."""
    return f"Number(document.querySelector('{SECTION} polyline')?.dataset.points ?? -1)"


def test_the_status_page_watches_the_demos_service(demo: RunningDemo, page: Page) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(f"{message.text} ({message.location['url']})")
            if message.type == "error" and not message.location["url"].endswith("/favicon.ico") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(demo.url)
    page.click("#status-link")
    page.wait_for_url("**/status")
    assert page.locator("h1").inner_text() == "Service status"
    # The service is listed before any page called it; its worker comes up, having served nothing yet.
    page.wait_for_function(f"() => document.querySelector('{WORKER} td.state')?.textContent === 'alive'",
                           timeout=WAIT_MS)
    row = page.locator(WORKER)
    assert row.locator(".badge").get_attribute("class") == "badge s-alive"
    page.wait_for_function(f"() => document.querySelector('{WORKER} td.served')?.textContent === '0'",
                           timeout=WAIT_MS)
    assert page.evaluate(f"() => {chart_points()}") == 0  # no round trip yet
    assert row.locator("td.version").inner_text() != "\u2013"

    # Calls handed off (answered at once); the worker serves them one delay later.
    for _ in range(CALLS):
        assert requests.get(demo.url + "service/async", timeout=10).status_code == 200
    page.wait_for_function(f"() => document.querySelector('{WORKER} td.served')?.textContent === '{CALLS}'",
                           timeout=WAIT_MS)
    page.wait_for_function(f"() => {chart_points()} >= 1", timeout=WAIT_MS)
    first = page.evaluate(f"() => {chart_points()}")
    # One point a poll (one a second) while the chart is not full.
    page.wait_for_function(f"() => {chart_points()} >= {first + 3}", timeout=10_000)
    p50 = float(row.locator("td.latency").inner_text().split(" ms")[0])
    assert p50 >= DELAY * 1000 * 0.95  # each call waited the service's delay (no upper bound: a busy machine)
    assert page.locator("[data-stat=replies] b").inner_text() == str(CALLS)
    assert page.locator("[data-stat=timeouts]").get_attribute("class") == "stat"  # none: not highlighted
    shot(page, "status")  # (and to $ARTIFACTS_DIR)

    # The data behind it, as any client may read it.
    data = requests.get(demo.url + "status?format=json", timeout=10).json()
    (service,) = data["services"]
    assert service["address"] == SERVICE and service["stats"]["replies"] == CALLS
    (worker,) = service["workers"]
    assert worker["state"] == "alive" and worker["served"] == CALLS and worker["errors"] == 0
    assert problems == []
    # The same calls, as Prometheus scrapes them from the web app (the demo installs the metrics extra).
    scraped = requests.get(demo.url + "metrics", timeout=10)
    assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(scraped.text) for sample in family.samples}
    calls = {labels: value for (name, labels), value in samples.items() if name == "brubeckservice_calls_total"}
    assert sum(calls.values()) == CALLS
    assert all(dict(labels)["outcome"] == "ok" and dict(labels)["status"] == "200" for labels in calls)
    handed_off = [value for (name, labels), value in samples.items() if name == "brubeck_http_requests_total"
                  and dict(labels)["route"] == "^/service/async$" and dict(labels)["status"] == "200"]
    assert handed_off == [CALLS]
    alive = [value for (name, labels), value in samples.items()
             if name == "brubeckservice_workers" and dict(labels) == {"service": SERVICE, "state": "alive"}]
    assert alive == [1]
    # Its polls stay out of the web app's log, and out of the launcher's echo of Mongrel2's access log.
    assert [line for line in demo.output().splitlines() if "/status" in line and
            line.startswith(("[client]", "[mongrel2]"))] == []
