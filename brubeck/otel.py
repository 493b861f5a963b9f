"""OpenTelemetry spans for web requests and service calls, when the `otel` extra is installed.

Three kinds of work get a span, named and described as the semantic conventions ask:

- a web request (`web_request`, SERVER): `http.request.method`, `url.path`, `client.address`, and
  `http.response.status_code` once the answer is known (an ERROR from 500 up);
- a service call, on the client (`service_call`, CLIENT), and a service request, on the worker
  (`service_request`, SERVER): `rpc.system` "brubeck-service", `rpc.service` (the service address),
  `rpc.method` ("METHOD path", as in the service's log lines), `server.address` (and `server.port`), and
  `rpc.response.status_code` from the reply (an ERROR from 400 up on the client, from 500 up on the worker).

`span()` underlies them. Its parent is the caller's span, as the `traceparent` received names it (a remote
parent), unless a span of the same trace is already current in this greenlet's OTel context (ours, or one
the handler opened itself): then the new span is its child, so that a handler's own spans nest. Without a
`trace` the span continues the current OTel context, or starts a trace. The object it yields carries the
span on in `.trace`: same trace id, the new span's id and flags, which is what the next hop must see as
its parent. An exception escaping the block is recorded and marks the span ERROR; `Cancelled` marks it
ERROR "cancelled" (nothing failed: whoever waited stopped waiting). For work that ends in another greenlet
(a call sent without waiting), `start_span()` starts a span without making it current; `.end(exc)` ends it.

Greenlets: the span is made current (`opentelemetry.context.attach`) in the greenlet that enters the block
and detached when the block ends, however it ends (an exception, `Cancelled`, `GreenletExit`). OTel keeps
its context in a contextvar and greenlet gives each greenlet a context of its own, so spans opened in
concurrent greenlets never see each other; a greenlet a handler spawns starts with no current span.

Cost, when tracing is off:
- without opentelemetry, nothing of it is imported, and `span()` returns a shared `nullcontext(None)`;
- with opentelemetry-api but no SDK provider set, the global provider is the API's default
  `ProxyTracerProvider` (or a `NoOpTracerProvider` someone set): that is the rule for "off". The global
  is read from `opentelemetry.trace._TRACER_PROVIDER` once `get_tracer_provider()` was asked (the first
  time, so that a provider `OTEL_PYTHON_TRACER_PROVIDER` names is loaded), as `get_tracer_provider()`
  itself looks os.environ up on each call until a provider is set (~1 us). The provider last seen is
  cached with its tracer (or None), so `span()` when off costs a variable read and two identity tests
  (~0.1 us over a bare `with`), and a provider set later (set-once) is seen at the next call. An SDK
  provider whose sampler drops a span still counts as "on": the span is made, not recorded, and its flags
  say so.

`use_tracer_provider(provider)` makes this module use a provider of your own instead of the global one (the
tests do, to read spans from an in-memory exporter without touching OTel's set-once global). It is
process-wide: meant for tests, and for a process that wants brubeck's spans on a provider it does not make
global.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import brubeck  # for __version__, read when a tracer is made (brubeck's own modules import this one)
from brubeck.errors import Cancelled
from brubeck.wire.tracecontext import TraceContext

# The otel extra comes with the test extra; were it missing, mypy would see Any here and still pass.
try:
    from opentelemetry import context as _context  # type: ignore[import-not-found, unused-ignore]
    from opentelemetry import trace as _trace  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # the `otel` extra is not installed: every function here is a no-op
    INSTALLED = False
else:
    INSTALLED = True

if TYPE_CHECKING:
    from contextvars import Token

__all__ = [
    "INSTALLED",
    "RPC_SYSTEM",
    "Span",
    "enabled",
    "server_attributes",
    "service_call",
    "service_request",
    "span",
    "start_span",
    "use_tracer_provider",
    "web_request",
]

#: What `span()` returns when tracing is off: shared, as `nullcontext` can be entered any number of times.
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext(None)
_KINDS = ("server", "client")
RPC_SYSTEM = "brubeck-service"

_override: _trace.TracerProvider | None = None
# The provider looked at last and its tracer (None: that provider records nothing).
_cache: tuple[object, _trace.Tracer | None] = (None, None)
# Whether get_tracer_provider() was asked once: it loads the provider OTEL_PYTHON_TRACER_PROVIDER names.
_asked = False


def _tracer() -> _trace.Tracer | None:
    global _cache, _asked  # noqa: PLW0603 - the one-entry cache described in the module docstring
    if not INSTALLED:
        return None
    provider: object = _override
    if provider is None:
        # get_tracer_provider() looks os.environ up on every call while no provider is set (~1 us, a
        # KeyError each time): once it was asked, its module's variable says as much for ~20 ns. Should a
        # later opentelemetry-api not have that variable, we ask get_tracer_provider() every time.
        provider = getattr(_trace, "_TRACER_PROVIDER", _trace)
        if provider is None and _asked:
            return None
        provider = _trace.get_tracer_provider()
        _asked = True
    cached_provider, tracer = _cache
    if provider is cached_provider:
        return tracer
    if isinstance(provider, _trace.ProxyTracerProvider | _trace.NoOpTracerProvider):
        tracer = None
    else:
        tracer = cast("_trace.TracerProvider", provider).get_tracer("brubeck", brubeck.__version__)
    _cache = (provider, tracer)
    return tracer


def enabled() -> bool:
    """Whether spans are made: opentelemetry is installed and a tracer provider other than the API's
    default (ProxyTracerProvider, NoOpTracerProvider) is in use."""
    return _tracer() is not None


@contextlib.contextmanager
def use_tracer_provider(provider: _trace.TracerProvider | None) -> Iterator[None]:
    """Use `provider` instead of the global one while the block runs (None: the global one again)."""
    global _override  # noqa: PLW0603 - the documented override
    before = _override
    _override = provider
    try:
        yield
    finally:
        _override = before


class Span:
    """A span being recorded: `with span(...)` starts it and makes it current in the greenlet while the
    block runs; `start_span(...)` starts one without making it current.

    `trace` is where the work now sits: the next hop's parent (put its `traceparent` on what you send)."""

    __slots__ = ("_attributes", "_error_from", "_kind", "_name", "_parent", "_span", "_status_key", "_token",
                 "_tracer", "trace")

    def __init__(self, tracer: _trace.Tracer, name: str, kind: str, parent: TraceContext | None,
                 attributes: Mapping[str, object] | None) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = _trace.SpanKind.SERVER if kind == "server" else _trace.SpanKind.CLIENT
        # Semantic conventions: a server's span fails from 500 up (a 4xx is the client's fault), a client's
        # from 400 up (its call did not succeed).
        self._error_from = 500 if kind == "server" else 400
        self._parent = parent
        self._attributes = {key: value for key, value in (attributes or {}).items() if value is not None}
        self._status_key = "rpc.response.status_code" if "rpc.system" in self._attributes \
            else "http.response.status_code"
        self._span: _trace.Span = _trace.INVALID_SPAN
        self._token: Token[_context.Context] | None = None
        self.trace: TraceContext  # set when the span starts

    def __enter__(self) -> Span:
        self._start()
        self._token = _context.attach(_trace.set_span_in_context(self._span))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.end(exc)
        finally:
            if self._token is not None:
                _context.detach(self._token)

    def _start(self) -> None:
        parent = self._parent_context()
        span = self._tracer.start_span(self._name, context=parent, kind=self._kind,
                                       attributes=self._attributes,  # type: ignore[arg-type, unused-ignore]
                                       record_exception=False, set_status_on_exception=False)
        self._span = span
        made = span.get_span_context()
        self.trace = TraceContext(f"{made.trace_id:032x}", f"{made.span_id:016x}", int(made.trace_flags),
                                  made.trace_state.to_header() if made.trace_state else "")

    def end(self, exc: BaseException | None = None) -> None:
        """End the span (`with` does, or call it for one from `start_span`), as failed when `exc` is given:
        recorded, and ERROR; `Cancelled` is ERROR "cancelled"."""
        span = self._span
        if isinstance(exc, Cancelled):
            if exc.args:
                span.set_attribute("brubeck.cancel.reason", str(exc.args[0]))
            span.set_status(_trace.Status(_trace.StatusCode.ERROR, "cancelled"))
        elif exc is not None:
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
            text = str(exc)
            span.set_status(_trace.Status(_trace.StatusCode.ERROR,
                                          f"{type(exc).__name__}: {text}" if text else type(exc).__name__))
        span.end()

    def _parent_context(self) -> _context.Context | None:
        """The OTel context to start the span in (None: the current one)."""
        given = self._parent
        if given is None:
            return None
        trace_id = int(given.trace_id, 16)
        current = _trace.get_current_span().get_span_context()
        if current.is_valid and current.trace_id == trace_id:
            return None  # a span of this trace is open in this greenlet: nest under it
        state = _trace.TraceState.from_header([given.state]) if given.state else None
        remote = _trace.SpanContext(trace_id, int(given.span_id, 16), is_remote=True,
                                    trace_flags=_trace.TraceFlags(given.flags & 0xFF), trace_state=state)
        return _trace.set_span_in_context(_trace.NonRecordingSpan(remote))

    def set_attribute(self, key: str, value: object) -> None:
        """Describe the span further (a value of None is left out)."""
        if value is not None:
            self._span.set_attribute(key, value)  # type: ignore[arg-type, unused-ignore]

    def set_status_code(self, status: int) -> None:
        """Record the answer's status (HTTP's, or the service reply's); it marks the span ERROR from 500 up
        on a server, from 400 up on a client."""
        if self._status_key == "http.response.status_code":
            self._span.set_attribute(self._status_key, status)
        else:
            self._span.set_attribute(self._status_key, str(status))  # a string, as the conventions say
        if status >= self._error_from:
            self._span.set_attribute("error.type", str(status))
            self._span.set_status(_trace.Status(_trace.StatusCode.ERROR))

    def record_exception(self, exc: BaseException) -> None:
        """Record an exception that did not escape the block (e.g. a handler's, answered with a 500). It
        does not mark the span: `set_status_code` does, from the status answered."""
        self._span.record_exception(exc)


def span(name: str, kind: str, trace: TraceContext | None,
         attributes: Mapping[str, object] | None = None) -> contextlib.AbstractContextManager[Span | None]:
    """A span named `name` around the block, of kind "server" or "client", whose parent is the span `trace`
    names (see the module docstring); the block gets the `Span`, or None when tracing is off.

    Attributes whose value is None are left out. A status code recorded with `set_status_code` goes to
    `rpc.response.status_code` when the attributes name an `rpc.system`, else `http.response.status_code`.
    """
    if kind not in _KINDS:
        raise ValueError(f"a span's kind is 'server' or 'client', not {kind!r}")
    tracer = _tracer()
    if tracer is None:
        return _OFF
    return Span(tracer, name, kind, trace, attributes)


def start_span(name: str, kind: str, trace: TraceContext | None,
               attributes: Mapping[str, object] | None = None) -> Span | None:
    """`span()` for work that ends elsewhere (a call sent without waiting, its reply handled in another
    greenlet): the span is started but not made current; `.end(exc)` ends it, from any greenlet. None
    when tracing is off."""
    if kind not in _KINDS:
        raise ValueError(f"a span's kind is 'server' or 'client', not {kind!r}")
    tracer = _tracer()
    if tracer is None:
        return None
    started = Span(tracer, name, kind, trace, attributes)
    started._start()
    return started


def web_request(trace: TraceContext | None, method: str, path: str, *, client_address: str | None = None,
                route: str | None = None, scheme: str | None = None) -> contextlib.AbstractContextManager[
                    Span | None]:
    """The SERVER span of a web request: `trace` is the context its `traceparent` named (None: it came
    without one). It is named "METHOD route" when the low-cardinality `route` is known, else "METHOD"."""
    if _tracer() is None:  # before building attributes: the hot path when off
        return _OFF
    return span(f"{method} {route}" if route else method, "server", trace, {
        "http.request.method": method, "url.path": path, "url.scheme": scheme, "http.route": route,
        "client.address": client_address or None})


def service_call(trace: TraceContext | None, service: str, path: str, method: str = "request") -> (
        contextlib.AbstractContextManager[Span | None]):
    """The CLIENT span of a call to the service at `service` (its address, as the client was given it)."""
    return _rpc_span("client", trace, service, path, method)


def start_service_call(trace: TraceContext | None, service: str, path: str, method: str = "request") -> (
        Span | None):
    """`service_call` for a call sent without waiting (`start_span`: `.end(exc)` when its answer comes)."""
    if _tracer() is None:
        return None
    name, attributes = _rpc_attributes(service, path, method)
    return start_span(name, "client", trace, attributes)


def service_request(trace: TraceContext | None, service: str, path: str, method: str = "request") -> (
        contextlib.AbstractContextManager[Span | None]):
    """The SERVER span of a worker serving a request; `service` is the address it took the request on."""
    return _rpc_span("server", trace, service, path, method)


def _rpc_span(kind: str, trace: TraceContext | None, service: str, path: str, method: str) -> (
        contextlib.AbstractContextManager[Span | None]):
    if _tracer() is None:  # before building attributes: the hot path when off
        return _OFF
    name, attributes = _rpc_attributes(service, path, method)
    return span(name, kind, trace, attributes)


def _rpc_attributes(service: str, path: str, method: str) -> tuple[str, dict[str, object]]:
    """A call's span name ("METHOD path") and its RPC attributes."""
    rpc_method = f"{method.upper()} {path}"
    attributes: dict[str, object] = {"rpc.system": RPC_SYSTEM, "rpc.service": service, "rpc.method": rpc_method}
    attributes.update(server_attributes(service))
    return rpc_method, attributes


def server_attributes(address: str) -> dict[str, object]:
    """`server.address` (and `server.port`, `network.transport`) of a ZeroMQ address: tcp://host:port,
    ipc://path (a Unix socket: the path is the address) or another transport's (the address as given)."""
    if address.startswith("tcp://"):
        parts = urlsplit(address)
        try:
            port = parts.port
        except ValueError:
            port = None
        found: dict[str, object] = {"server.address": parts.hostname or address, "network.transport": "tcp"}
        if port is not None:
            found["server.port"] = port
        return found
    if address.startswith("ipc://"):
        return {"server.address": address[len("ipc://"):], "network.transport": "unix"}
    return {"server.address": address}
