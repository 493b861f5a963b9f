"""Prometheus metrics of services, with the `metrics` extra (prometheus_client): the service side of
brubeck.metrics.

    brubeckservice.metrics.enable()                    # web and service metrics, from now on
    server = serve_metrics("0.0.0.0", 9100)            # a service process: scraped on a port of its own

Two kinds (docs/metrics.md lists every metric):

- exchanges, counted as they end (brubeck.observe): the requests a worker served,
  `brubeckservice_requests_total` and `brubeckservice_request_duration_seconds`, and the calls a client
  made, `brubeckservice_calls_total` and `brubeckservice_call_duration_seconds`;
- the state of the clients and service connections open in this process (`client.LIVE_CLIENTS`,
  `server.LIVE_CONNECTIONS`), read at each scrape by `LiveCollector`: workers by state, calls in flight
  and queued, requests being served and queued, capacity, draining.

Labels: `service` is an address as configured (a client's addresses joined with commas); a worker's `path`
is the pattern of the route that served the request (`unmatched` when none did), bounded by its routes; a
client's `path` is the path as called, which the calling code chooses: a caller that puts ids in its paths
makes a series per id. `method` is the service method named in the request (callers are authenticated:
they sign with the shared passphrase).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, cast

from brubeck import observe
from brubeck.metrics import disable, enable_part, serve_metrics, status_label
from brubeck.metrics import enable as enable_web
from brubeckservice import client, server
from brubeckservice.pool import ALIVE, BUSY, CONNECTING, DEAD, DRAINING, LEAVING, REFUSED

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

log = logging.getLogger("brubeckservice.metrics")

__all__ = ["WORKER_STATES", "LiveCollector", "disable", "enable", "serve_metrics"]

#: Every state a worker can be in (docs/protocol.md §8): `brubeckservice_workers` has each, 0 or more.
WORKER_STATES = (CONNECTING, ALIVE, BUSY, DRAINING, DEAD, REFUSED, LEAVING)


def enable(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Record web and service metrics from now on, into `registry` (default prometheus_client.REGISTRY);
    safe to call again. Returns the registry. ConfigurationError without the `metrics` extra."""
    chosen = enable_web(registry)
    return enable_part("service", _record_service, chosen)


def _record_service(registry: CollectorRegistry) -> list[Callable[[], object]]:
    from prometheus_client import Counter, Histogram  # noqa: PLC0415 - the extra, once enabled
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

    requests = Counter("brubeckservice_requests", "Service requests a worker of this process ran or dropped.",
                       ("service", "path", "method", "status", "outcome"), registry=registry)
    request_durations = Histogram("brubeckservice_request_duration_seconds",
                                  "Seconds a worker's handler ran for a service request.",
                                  ("service", "path", "method"), registry=registry)
    calls = Counter("brubeckservice_calls", "Service calls a client of this process made, by how they ended.",
                    ("service", "path", "method", "status", "outcome"), registry=registry)
    call_durations = Histogram("brubeckservice_call_duration_seconds",
                               "Seconds from a service call being made to its reply or failure.",
                               ("service", "path", "method"), registry=registry)
    live = LiveCollector(GaugeMetricFamily)
    registry.register(cast("Collector", live))  # (a Collector by its methods: see LiveCollector)

    def count_served(served: observe.ServedRequest) -> None:
        path = served.route or "unmatched"
        requests.labels(served.service, path, served.method, status_label(served.status), served.outcome).inc()
        if _ran(served):
            request_durations.labels(served.service, path, served.method).observe(served.duration)

    def count_call(call: observe.CallMade) -> None:
        calls.labels(call.service, call.path, call.method, status_label(call.status), call.outcome).inc()
        call_durations.labels(call.service, call.path, call.method).observe(call.duration)

    undo: list[Callable[[], object]] = [observe.watch("served", count_served), observe.watch("call", count_call)]
    undo += [partial(registry.unregister, metric) for metric in (requests, request_durations, calls, call_durations)]
    undo.append(partial(registry.unregister, cast("Collector", live)))
    return undo


def _ran(served: observe.ServedRequest) -> bool:
    """Whether the handler ran: a request that expired, or was cancelled, before its turn is reported with
    a duration of 0.0, which is no handler's time (it is counted, not timed)."""
    return served.outcome != "expired" and not (served.outcome == "cancelled" and served.duration == 0.0)


class LiveCollector:
    """The gauges of the clients and service connections open in this process, read at each scrape.

    A prometheus_client Collector by its methods (`collect`, `describe`), not by inheritance, so that this
    module imports without prometheus_client; the gauge family class is handed in by `enable()`. Several
    clients of one service (or connections on one address) are summed into that service's series; closed
    ones are gone from the next scrape."""

    def __init__(self, gauge: type[GaugeMetricFamily]) -> None:
        self._gauge = gauge

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        workers, in_flight, queued, serving, waiting, capacity, draining = families
        states: dict[str, Tally[str]] = {}
        pending: Tally[str] = Tally()
        held: Tally[str] = Tally()
        for live in list(client.LIVE_CLIENTS):
            try:
                seen = [worker.state for worker in live.workers]
                in_flight_here, queued_here = live.pending, live.queued
            except Exception:  # one broken client must not cost every scrape
                log.exception("metrics: cannot read %r; left out of this scrape", live)
                continue
            tally = states.setdefault(live.service, Tally())
            tally.update(seen)
            pending[live.service] += in_flight_here
            held[live.service] += queued_here
        for service, tally in states.items():
            for state in WORKER_STATES:
                workers.add_metric([service, state], tally[state])
            in_flight.add_metric([service], pending[service])
            queued.add_metric([service], held[service])
        sums: dict[str, list[int]] = {}
        for connection in list(server.LIVE_CONNECTIONS):
            row = sums.setdefault(connection.bound[0] if connection.bound else connection.service_addr, [0, 0, 0, 0])
            row[0] += connection.inflight
            row[1] += connection.queued
            row[2] += connection.capacity
            row[3] = max(row[3], int(connection.draining))
        for service, (running, queue, room, drains) in sums.items():
            serving.add_metric([service], running)
            waiting.add_metric([service], queue)
            capacity.add_metric([service], room)
            draining.add_metric([service], drains)
        return iter(families)

    def _families(self) -> list[GaugeMetricFamily]:
        gauge = self._gauge
        return [
            gauge("brubeckservice_workers", "Workers of each service this process calls, by state.",
                  labels=["service", "state"]),
            gauge("brubeckservice_calls_in_flight", "Calls made and not yet ended (queued ones included).",
                  labels=["service"]),
            gauge("brubeckservice_calls_queued", "Calls waiting in a client for a worker with room.",
                  labels=["service"]),
            gauge("brubeckservice_serving_in_flight", "Requests a service connection is running now.",
                  labels=["service"]),
            gauge("brubeckservice_serving_queued", "Requests accepted that wait for a free slot.",
                  labels=["service"]),
            gauge("brubeckservice_serving_capacity", "Requests a service connection runs at once.",
                  labels=["service"]),
            gauge("brubeckservice_draining", "1 while a service connection drains, else 0.", labels=["service"]),
        ]
