"""Prometheus metrics of web requests, with the `metrics` extra (prometheus_client).

    brubeck.metrics.enable()                            # at start-up: record from now on
    app.add_route_rule("^/metrics$", MetricsHandler)    # a web app: Prometheus scrapes this route
    server = serve_metrics("0.0.0.0", 9100)             # a process without web routes: a port of its own

Recording rides on brubeck.observe: `enable()` watches the "web" point and counts each exchange into
`brubeck_http_requests_total{method,route,status}` and `brubeck_http_request_duration_seconds{method,route}`
(docs/metrics.md lists every metric). Labels stay bounded whatever clients send: `route` is the pattern of
the route that served the request (`unmatched` when none did, a 404 or 405), never the path asked for;
`method` is one of HTTP's methods or `other`; `status` the status answered (`none` for a handler that
answers later). brubeckservice.metrics adds the service side as a second part of the same recording.

Recording is process-wide, as the observers it hangs on and Prometheus' default registry are: one registry
at a time (default `prometheus_client.REGISTRY`), which `MetricsHandler` and `serve_metrics` serve unless
given another. Without prometheus_client this module still imports (nothing here imports it before
`enable()`, `serve_metrics()` or a scrape), and those say which extra to install.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from gevent.pywsgi import WSGIServer

from brubeck import observe
from brubeck.errors import ConfigurationError
from brubeck.handlers import HTTP_METHODS, WebMessageHandler
from brubeck.response import HTTPResponse

if TYPE_CHECKING:
    from types import ModuleType

    from prometheus_client import CollectorRegistry

__all__ = [
    "INSTALL_HINT",
    "MetricsHandler",
    "Setup",
    "disable",
    "enable",
    "enable_part",
    "enabled_registry",
    "serve_metrics",
    "status_label",
]

log = logging.getLogger("brubeck.metrics")

INSTALL_HINT = "pip install 'brubeck-service[metrics]'"
#: What a part's set-up gets (the registry) and returns: the functions that undo it, run by `disable()`.
Setup = Callable[["CollectorRegistry"], list[Callable[[], object]]]

_METHODS = frozenset(method.upper() for method in HTTP_METHODS)
_registry: CollectorRegistry | None = None  # the registry being recorded into; None: not recording
_undo: dict[str, list[Callable[[], object]]] = {}  # each part enabled ("web", "service"): how to undo it


def _prometheus() -> ModuleType:
    """prometheus_client, or ConfigurationError saying which extra brings it."""
    try:
        import prometheus_client  # noqa: PLC0415 - only once metrics are asked for
    except ImportError:
        raise ConfigurationError(f"metrics need prometheus_client: {INSTALL_HINT}") from None
    return prometheus_client


def status_label(status: int | None) -> str:
    """A status as a label value: its digits, or "none" when nothing was answered."""
    return "none" if status is None else str(status)


def enabled_registry() -> CollectorRegistry | None:
    """The registry metrics are recorded into, or None before `enable()`."""
    return _registry


def _served_registry(registry: CollectorRegistry | None, prometheus: ModuleType | None = None) -> CollectorRegistry:
    """`registry`, else the one being recorded into, else prometheus_client.REGISTRY."""
    if registry is not None:
        return registry
    if _registry is not None:
        return _registry
    default: CollectorRegistry = (prometheus or _prometheus()).REGISTRY
    return default


def enable_part(name: str, setup: Setup, registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Record the part `name` into `registry` (None: the one in use, else prometheus_client.REGISTRY):
    `setup(registry)` registers its metrics and watches, once; calling again changes nothing. For the
    packages that add metrics of their own (brubeckservice.metrics); returns the registry.

    ConfigurationError without prometheus_client, or when recording into another registry already."""
    global _registry  # noqa: PLW0603 - the process-wide recording (see the module docstring)
    prometheus = _prometheus()
    wanted: CollectorRegistry = _served_registry(registry, prometheus)
    if _registry is not None and wanted is not _registry:
        raise ConfigurationError(f"metrics are recorded into {_registry!r} already: disable() them first to "
                                 f"record into {wanted!r}")
    if name not in _undo:
        _undo[name] = setup(wanted)
    _registry = wanted  # (once a part is set up: a set-up that failed leaves nothing recorded)
    return wanted


def enable(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Record web request metrics from now on, into `registry` (default prometheus_client.REGISTRY); safe
    to call again. Returns the registry. ConfigurationError without the `metrics` extra."""
    return enable_part("web", _record_web, registry)


def disable() -> None:
    """Stop recording every part (web, service) and unregister its metrics: `enable()` starts afresh."""
    global _registry  # noqa: PLW0603 - the process-wide recording
    for name in reversed(list(_undo)):
        for undo in reversed(_undo.pop(name)):
            undo()
    _registry = None


def _record_web(registry: CollectorRegistry) -> list[Callable[[], object]]:
    from prometheus_client import Counter, Histogram  # noqa: PLC0415 - the extra, once enabled

    requests = Counter("brubeck_http_requests", "Web requests answered, by method, route pattern and status.",
                       ("method", "route", "status"), registry=registry)
    durations = Histogram("brubeck_http_request_duration_seconds",
                          "Seconds from a web request reaching its handler to its response being built.",
                          ("method", "route"), registry=registry)

    def count(exchange: observe.WebExchange) -> None:
        method = exchange.method if exchange.method in _METHODS else "other"
        route = exchange.route or "unmatched"
        requests.labels(method, route, status_label(exchange.status)).inc()
        durations.labels(method, route).observe(exchange.duration)

    stop = observe.watch("web", count)
    return [partial(registry.unregister, requests), partial(registry.unregister, durations), stop]


class MetricsHandler(WebMessageHandler):
    """Serves the metrics in Prometheus' text format: `app.add_route_rule("^/metrics$", MetricsHandler)`.

    It serves `registry` (a class attribute: subclass to set one), else the registry `enable()` records
    into, else prometheus_client.REGISTRY. Routing it records nothing: call `brubeck.metrics.enable()` (or
    `brubeckservice.metrics.enable()`) at start-up. Without prometheus_client a scrape gets a 500 (logged,
    with the extra to install)."""

    registry: ClassVar[CollectorRegistry | None] = None

    def get(self) -> HTTPResponse:
        prometheus = _prometheus()  # (without it: ConfigurationError, a 500 whose log line names the extra)
        body = prometheus.generate_latest(_served_registry(self.registry))
        self.set_body(body, {"Content-Type": prometheus.CONTENT_TYPE_LATEST})
        return self.render()


def serve_metrics(host: str, port: int, registry: CollectorRegistry | None = None) -> WSGIServer:
    """Serve the metrics over HTTP on `host`:`port` (0: a free port) for a process without web routes (a
    service): a started gevent.pywsgi.WSGIServer running prometheus_client's WSGI app (every path serves
    them). Its `server_port` is the port bound; `stop()` it when done (e.g. `app.on_close(server.stop)`).

    It serves `registry`, else the one `enable()` records into, else prometheus_client.REGISTRY; serving
    them records nothing: call `enable()` too."""
    served = _served_registry(registry, _prometheus())
    from prometheus_client import make_wsgi_app  # noqa: PLC0415 - the extra, once asked for

    server = WSGIServer((host, port), make_wsgi_app(served), log=None, error_log=log)
    server.start()
    log.info("serving metrics on http://%s:%d/metrics", host, server.server_port)
    return server
