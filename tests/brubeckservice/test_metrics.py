"""brubeckservice.metrics: a real ServiceConnection and real ServiceClients over tcp on loopback, metrics served
by `serve_metrics` on a free port, scraped over HTTP and read with prometheus_client's parser. Each test records
into a registry of its own, disabled afterwards. Without prometheus_client, in a subprocess: everything imports,
nothing imports it, and enabling says which extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import zmq
from prometheus_client import CollectorRegistry

from brubeck import metrics as web_metrics
from brubeck.testing import free_port
from brubeckservice import client as client_module
from brubeckservice import metrics
from brubeckservice.client import ServiceClient
from brubeckservice.errors import ServiceTimeout, ServiceUnavailable
from brubeckservice.testing import ServicePair
from tests.brubeck.test_metrics import Scrape, scrape
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT, Gate, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def metrics_url() -> Iterator[str]:
    """Service metrics recorded into a fresh registry and served on a free port; yields the scrape URL."""
    registry = CollectorRegistry()
    assert metrics.enable(registry) is registry
    server = metrics.serve_metrics("127.0.0.1", 0, registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.stop(timeout=1)
        metrics.disable()


@pytest.fixture
def tcp_pair(gate: Gate) -> Iterator[ServicePair]:
    """The helpers' service on a free loopback tcp port (connections come and go there, as in production)."""
    with ServicePair(ROUTES, PASSPHRASE, gate=gate, address=f"tcp://127.0.0.1:{free_port()}") as pair:
        yield pair


def states(client: ServiceClient) -> list[str]:
    return [worker.state for worker in client.workers]


def workers(seen: Scrape, service: str) -> dict[str, float]:
    """brubeckservice_workers of `service`, by state."""
    return {dict(labels)["state"]: value for labels, value in
            seen.matching("brubeckservice_workers", service=service).items()}


def test_served_requests_and_calls_are_counted_by_status_and_outcome(tcp_pair: ServicePair, gate: Gate,
                                                                      metrics_url: str) -> None:
    client, service = tcp_pair.client, tcp_pair.address
    for _ in range(3):
        assert client.call("/echo").status_code == 200
    assert client.call("/fail").status_code == 500  # the handler raised: a 500 reply, returned
    assert client.call("/missing").status_code == 404  # no route
    with pytest.raises(ServiceTimeout):
        client.call("/block", timeout=0.3)  # the worker is told to stop (CANCEL): its handler is cancelled
    gate.next_arrival()
    wait_until(lambda: tcp_pair.connection.inflight == 0, "the timed-out request to be cancelled")
    seen = scrape(metrics_url)

    calls = "brubeckservice_calls_total"
    assert seen.value(calls, service=service, path="/echo", method="request", status="200", outcome="ok") == 3
    assert seen.value(calls, service=service, path="/fail", method="request", status="500", outcome="ok") == 1
    assert seen.value(calls, service=service, path="/missing", method="request", status="404", outcome="ok") == 1
    assert seen.value(calls, service=service, path="/block", method="request", status="none",
                      outcome="timeout") == 1
    assert sum(seen.matching(calls).values()) == 6
    call_count = "brubeckservice_call_duration_seconds_count"
    for path, made in (("/echo", 3), ("/fail", 1), ("/missing", 1), ("/block", 1)):
        assert seen.value(call_count, service=service, path=path, method="request") == made

    served = "brubeckservice_requests_total"
    assert seen.value(served, service=service, path="^/echo", method="request", status="200",
                      outcome="answered") == 3
    assert seen.value(served, service=service, path="^/fail", method="request", status="500",
                      outcome="answered") == 1
    assert seen.value(served, service=service, path="unmatched", method="request", status="404",
                      outcome="answered") == 1  # the route pattern, never the path asked for
    assert seen.value(served, service=service, path="^/block", method="request", status="none",
                      outcome="cancelled") == 1
    assert sum(seen.matching(served).values()) == 6
    served_count = "brubeckservice_request_duration_seconds_count"
    for path, ran in (("^/echo", 3), ("^/fail", 1), ("unmatched", 1), ("^/block", 1)):  # (each one ran)
        assert seen.value(served_count, service=service, path=path, method="request") == ran


def test_the_gauges_follow_the_clients_and_connections_of_this_process(tcp_pair: ServicePair, gate: Gate,
                                                                        metrics_url: str) -> None:
    first, second = tcp_pair.client, tcp_pair.new_client()  # two clients of one service: summed
    service, connection = tcp_pair.address, tcp_pair.connection
    wait_until(lambda: states(first) == states(second) == ["alive"], "both clients to reach the worker")
    seen = scrape(metrics_url)
    assert workers(seen, service) == {"connecting": 0, "alive": 2, "busy": 0, "draining": 0, "dead": 0,
                                      "refused": 0, "leaving": 0}  # every state, 0 or more
    assert seen.value("brubeckservice_calls_in_flight", service=service) == 0
    assert seen.value("brubeckservice_calls_queued", service=service) == 0
    assert seen.value("brubeckservice_serving_in_flight", service=service) == 0
    assert seen.value("brubeckservice_serving_queued", service=service) == 0
    assert seen.value("brubeckservice_serving_capacity", service=service) == connection.capacity
    assert seen.value("brubeckservice_draining", service=service) == 0

    held = gevent.spawn(first.call, "/block")
    gate.next_arrival()  # the call is held by the gate, in the handler
    seen = scrape(metrics_url)
    assert seen.value("brubeckservice_calls_in_flight", service=service) == 1
    assert seen.value("brubeckservice_serving_in_flight", service=service) == 1
    gate.release.set()
    assert held.get(timeout=WAIT).status_code == 200
    wait_until(lambda: connection.inflight == 0, "the held request to finish")
    seen = scrape(metrics_url)
    assert seen.value("brubeckservice_calls_in_flight", service=service) == 0
    assert seen.value("brubeckservice_serving_in_flight", service=service) == 0

    draining = gevent.spawn(connection.drain, WAIT)
    wait_until(lambda: states(first) == states(second) == ["draining"], "both clients to see the drain")
    seen = scrape(metrics_url)
    assert seen.value("brubeckservice_draining", service=service) == 1
    assert workers(seen, service)["draining"] == 2
    draining.get(timeout=WAIT)

    tcp_pair.serving.kill()
    connection.close()  # the worker is gone: its gauges too, and its clients see it dead
    wait_until(lambda: states(first) == states(second) == ["dead"], "both clients to lose the worker")
    seen = scrape(metrics_url)
    assert workers(seen, service)["dead"] == 2
    assert workers(seen, service)["alive"] == 0
    assert seen.value("brubeckservice_serving_capacity", service=service) is None
    assert seen.value("brubeckservice_draining", service=service) is None

    second.close(timeout=0)
    seen = scrape(metrics_url)
    assert workers(seen, service)["dead"] == 1  # a closed client is no longer counted


def test_calls_waiting_for_a_connection_are_queued_and_in_flight(metrics_url: str) -> None:
    service = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: calls wait for a connection
    failures: list[BaseException] = []
    client = ServiceClient(service, None, PASSPHRASE, connect_timeout=WAIT * 2)
    try:
        client.send("/echo", on_error=failures.append)
        seen = scrape(metrics_url)
        assert seen.value("brubeckservice_calls_queued", service=service) == 1
        assert seen.value("brubeckservice_calls_in_flight", service=service) == 1
        assert workers(seen, service)["connecting"] == 1
    finally:
        client.close(timeout=0)
    wait_until(lambda: bool(failures), "the queued call to fail as the client closes")
    assert isinstance(failures[0], ServiceUnavailable)
    seen = scrape(metrics_url)
    assert workers(seen, service) == {}  # a closed client is gone from the gauges
    assert seen.value("brubeckservice_calls_total", service=service, path="/echo", method="request", status="none",
                      outcome="unavailable") == 1


def run_python(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_without_prometheus_client_everything_imports_and_enabling_names_the_extra() -> None:
    out = run_python("""
        import sys
        sys.modules["prometheus_client"] = None  # as if the metrics extra were not installed
        import brubeck, brubeckservice, brubeck.metrics, brubeckservice.metrics
        from brubeck.errors import ConfigurationError
        from brubeck.testing import TestClient
        from brubeck.transports.wsgi import WSGIConnection
        for enable in (brubeck.metrics.enable, brubeckservice.metrics.enable,
                       lambda: brubeck.metrics.serve_metrics("127.0.0.1", 0)):
            try:
                enable()
            except ConfigurationError as error:
                print(error)
        app = brubeck.Brubeck(msg_conn=WSGIConnection(port=0))
        app.add_route_rule("^/metrics$", brubeck.metrics.MetricsHandler)
        print(TestClient(app).get("/metrics").status_code)
        print(sorted(name for name in sys.modules if name.startswith("prometheus")))
    """)
    hint = "metrics need prometheus_client: pip install 'brubeck-service[metrics]'"
    assert out == [hint, hint, hint, "500", "['prometheus_client']"]  # (the None we put there, nothing more)


def test_the_packages_import_no_prometheus_client_until_metrics_are_enabled() -> None:
    out = run_python("""
        import sys
        import brubeck, brubeckservice, brubeck.metrics, brubeckservice.metrics, brubeck.testing
        import brubeckservice.testing, brubeck.logs
        print("prometheus_client" in sys.modules)
        brubeckservice.metrics.enable()
        print("prometheus_client" in sys.modules)
    """)
    assert out == ["False", "True"]


def test_enabling_the_service_side_enables_the_web_side_into_the_same_registry() -> None:
    registry = CollectorRegistry()
    try:
        assert metrics.enable(registry) is registry
        assert web_metrics.enabled_registry() is registry
        names = {family.name for family in registry.collect()}
        assert {"brubeck_http_requests", "brubeckservice_calls", "brubeckservice_workers"} <= names
    finally:
        metrics.disable()
    assert not [family for family in registry.collect() if family.name.startswith("brubeck")]




def test_a_client_that_failed_to_build_is_not_listed_and_scrapes_go_on(metrics_url: str) -> None:
    with pytest.raises(zmq.ZMQError):  # (libzmq refuses the address once the pool connects)
        ServiceClient("tcp://127.0.0.1:notaport", None, PASSPHRASE)
    assert all(hasattr(live, "pool") for live in client_module.LIVE_CLIENTS)
    seen = scrape(metrics_url)  # (a half-built client listed made every scrape fail)
    assert seen.value("brubeckservice_workers", service="tcp://127.0.0.1:notaport", state="alive") is None
