"""brubeck.metrics: a real app over WSGI on a free port, driven with `requests`, scraped over HTTP and read back
with prometheus_client's own parser. Each test records into a registry of its own, disabled afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gevent.pool import Pool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from brubeck import metrics, observe
from brubeck.application import Brubeck
from brubeck.errors import ConfigurationError
from brubeck.handlers import WebMessageHandler
from brubeck.metrics import MetricsHandler, serve_metrics
from brubeck.request import Request
from brubeck.response import HTTPResponse, render
from brubeck.transports.wsgi import WSGIConnection
from tests.brubeck.http_client import fetch

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scrape:
    """The samples of one scrape, by (sample name, sorted label pairs)."""

    samples: dict[tuple[str, Labels], float]

    def value(self, name: str, **labels: str) -> float | None:
        """The sample `name` with exactly `labels`, or None when there is none."""
        return self.samples.get((name, tuple(sorted(labels.items()))))

    def matching(self, name: str, **labels: str) -> dict[Labels, float]:
        """Every sample `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return {key: value for (sample, key), value in self.samples.items()
                if sample == name and wanted <= set(key)}


def parse(text: str) -> Scrape:
    samples: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Scrape(samples)


def scrape(url: str) -> Scrape:
    """GET `url` over HTTP (from a thread: the hub keeps serving) and parse what it serves."""
    response = fetch("GET", url)
    assert response.status_code == 200, response.text
    return parse(response.text)


class ItemHandler(WebMessageHandler):
    def get(self, item: str) -> HTTPResponse:
        self.set_body(f"item {item}\n")
        return self.render()


def hello(application: Brubeck, message: Request) -> HTTPResponse:
    return render("hello\n")


ITEMS = r"^/items/(\d+)$"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    fresh = CollectorRegistry()
    try:
        yield fresh
    finally:
        metrics.disable()


@pytest.fixture
def site(registry: CollectorRegistry) -> Iterator[str]:
    """An app with metrics enabled into `registry` and a /metrics route, over WSGI; yields its URL."""
    metrics.enable(registry)
    connection = WSGIConnection(port=0, host="127.0.0.1")
    app = Brubeck(msg_conn=connection, pool=Pool())
    app.add_route_rule(r"^/hello$", hello, method="GET")
    app.add_route_rule(ITEMS, ItemHandler)
    app.add_route_rule(r"^/metrics$", MetricsHandler)
    connection.start(app)
    try:
        yield f"http://127.0.0.1:{connection.port}"
    finally:
        connection.close()
        assert app.pool is not None
        app.pool.kill(timeout=5)


def test_requests_are_counted_by_route_pattern_method_and_status(site: str) -> None:
    made = [("GET", "/hello")] * 3 + [("GET", "/items/1"), ("GET", "/items/22"), ("GET", "/items/333")] \
        + [("GET", "/nope"), ("GET", "/nope/again")] + [("POST", "/hello")] * 2
    for method, path in made:
        fetch(method, site + path)
    response = fetch("GET", site + "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    seen = parse(response.text)

    total = "brubeck_http_requests_total"
    assert seen.value(total, method="GET", route="^/hello$", status="200") == 3
    assert seen.value(total, method="GET", route=ITEMS, status="200") == 3  # one series, whatever the item
    assert seen.value(total, method="GET", route="unmatched", status="404") == 2
    assert seen.value(total, method="POST", route="unmatched", status="405") == 2  # no route for POST
    assert sum(seen.matching(total).values()) == len(made)  # (the scrape itself is counted once answered)
    assert not any(dict(key)["route"].startswith("/") for key in seen.matching(total))  # never a raw path
    count = "brubeck_http_request_duration_seconds_count"
    assert seen.value(count, method="GET", route="^/hello$") == 3
    assert seen.value(count, method="GET", route=ITEMS) == 3
    assert seen.value(count, method="GET", route="unmatched") == 2
    assert seen.value(count, method="POST", route="unmatched") == 2
    assert seen.value("brubeck_http_request_duration_seconds_bucket", method="GET", route=ITEMS, le="+Inf") == 3

    again = scrape(site + "/metrics")
    assert again.value(total, method="GET", route="^/metrics$", status="200") == 1  # the first scrape


def test_a_method_outside_http_is_labelled_other(site: str) -> None:
    for method in ("BREW", "WHEN", "BREW"):  # a client may send any token: they share one series
        assert fetch(method, site + "/hello").status_code == 405
    seen = scrape(site + "/metrics")
    assert seen.value("brubeck_http_requests_total", method="other", route="unmatched", status="405") == 3
    assert not seen.matching("brubeck_http_requests_total", method="BREW")


def test_enable_is_idempotent_and_disable_unregisters_everything(registry: CollectorRegistry) -> None:
    watched = len(observe.WEB)
    assert metrics.enable(registry) is registry
    assert metrics.enable() is registry  # (None: the registry in use)
    assert metrics.enabled_registry() is registry
    assert len(observe.WEB) == watched + 1
    with pytest.raises(ConfigurationError, match="disable"):
        metrics.enable(CollectorRegistry())
    metrics.disable()
    assert len(observe.WEB) == watched
    assert metrics.enabled_registry() is None
    assert not [family for family in registry.collect() if family.name.startswith("brubeck")]
    assert metrics.enable(registry) is registry  # the same names register again


def test_serve_metrics_serves_the_registry_on_a_port_of_its_own(registry: CollectorRegistry) -> None:
    metrics.enable(registry)
    observe.report(observe.WEB, observe.WebExchange("GET", "/x", "^/x$", 200, 10, 0.002, "127.0.0.1", "0" * 32))
    server = serve_metrics("127.0.0.1", 0, registry)
    try:
        assert server.server_port > 0
        seen = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.stop(timeout=1)
    assert seen.value("brubeck_http_requests_total", method="GET", route="^/x$", status="200") == 1
    assert seen.value("brubeck_http_request_duration_seconds_count", method="GET", route="^/x$") == 1


def test_a_handler_answering_later_is_counted_with_status_none(registry: CollectorRegistry) -> None:
    metrics.enable(registry)
    observe.report(observe.WEB, observe.WebExchange("GET", "/later", "^/later$", None, None, 0.001, "", "0" * 32))
    seen = parse(generate_latest(registry).decode())
    assert seen.value("brubeck_http_requests_total", method="GET", route="^/later$", status="none") == 1

