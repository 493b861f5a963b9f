"""Logging for the people who run it: access logs, a JSON-lines format, and process-wide set-up.

Access logs are one INFO line per exchange (brubeck.observe), each through a named logger, so they are
kept, silenced or sent elsewhere with the standard `logging` configuration:

    brubeck.access          a web request:  GET /hello 200 1320B 0.412ms 127.0.0.1 trace 4bf9...
    brubeckservice.access   a service request a worker ran:
                            tcp://127.0.0.1:5601 get /add 200 answered 0.281ms trace 4bf9...
    brubeckservice.calls    a service call a client made:
                            tcp://127.0.0.1:5601 <- tcp://127.0.0.1:5601 get /add 200 ok 0.733ms trace 4bf9...

(`logging.getLogger("brubeck.access").setLevel(logging.WARNING)` turns one off.) With `JsonLinesFormatter`
every record is one JSON object per line: `time` (UTC, ISO 8601, milliseconds), `level`, `logger`,
`message`, `trace_id` when the record was made while serving a request, `exc` for an exception, and for
an access line `kind` ("web", "served" or "call") with the exchange's fields (docs/operating.md lists
them). `configure_logging()` sets up the root logger; `Brubeck.run()` calls it when nothing else has
configured logging (the `BRUBECK_LOG_FORMAT` environment variable, `text` or `json`, picks the format
when the app does not).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from brubeck import observe
from brubeck.context import current as current_context
from brubeck.errors import ConfigurationError

INFO = logging.INFO
WEB_LOG = logging.getLogger("brubeck.access")
SERVED_LOG = logging.getLogger("brubeckservice.access")
CALLS_LOG = logging.getLogger("brubeckservice.calls")

#: The environment variable that picks the format when the app does not: "text" (default) or "json".
FORMAT_ENV = "BRUBECK_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}ms"


def _maybe(value: object) -> object:
    return "-" if value is None else value


_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _field(text: str) -> str:
    """A text line's field as one token: whitespace and control characters %-escaped, so that what a
    client sends (a path, an X-Forwarded-For) cannot forge fields or lines; "-" for nothing."""
    return _UNSAFE.sub(lambda found: f"%{ord(found.group()):02X}", text) if text else "-"


def log_web(exchange: observe.WebExchange) -> None:
    size = "-" if exchange.size is None else f"{exchange.size}B"
    WEB_LOG.info("%s %s %s %s %s %s trace %s", _field(exchange.method), _field(exchange.path),
                 _maybe(exchange.status), size, _ms(exchange.duration), _field(exchange.remote), exchange.trace_id,
                 extra={"exchange": exchange, "kind": "web"})


def log_served(served: observe.ServedRequest) -> None:
    SERVED_LOG.info("%s %s %s %s %s %s trace %s", served.service, _field(served.method), _field(served.path),
                    _maybe(served.status), served.outcome, _ms(served.duration), served.trace_id,
                    extra={"exchange": served, "kind": "served"})


def log_call(call: observe.CallMade) -> None:
    failure = f" ({_CONTROL.sub('?', call.error)})" if call.error else ""
    CALLS_LOG.info("%s <- %s %s %s %s %s %s trace %s%s", call.service, call.worker or "-", _field(call.method),
                   _field(call.path), _maybe(call.status), call.outcome, _ms(call.duration), call.trace_id, failure,
                   extra={"exchange": call, "kind": "call"})


def _at_info(logger: logging.Logger) -> Callable[[], bool]:
    def enabled() -> bool:
        return logger.isEnabledFor(INFO)

    return enabled


observe.watch("web", log_web, _at_info(WEB_LOG))
observe.watch("served", log_served, _at_info(SERVED_LOG))
observe.watch("call", log_call, _at_info(CALLS_LOG))


class JsonLinesFormatter(logging.Formatter):
    """Each record as one JSON object on one line (see the module's docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        item: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", None)
        if trace_id is None:
            ctx = current_context()  # (made while serving a request, in its greenlet)
            trace_id = ctx.trace_id if ctx is not None else None
        if trace_id not in (None, "-"):
            item["trace_id"] = trace_id
        exchange = getattr(record, "exchange", None)
        if exchange is not None and dataclasses.is_dataclass(exchange):
            item["kind"] = getattr(record, "kind", "")
            for field in dataclasses.fields(exchange):
                item[field.name] = getattr(exchange, field.name)
            if isinstance(item.get("duration"), float):
                item["duration_ms"] = round(item.pop("duration") * 1000, 3)
        if record.exc_info:
            item["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            item["exc"] = record.exc_text
        return json.dumps(item, ensure_ascii=False, default=str)


def log_format(given: str | None = None) -> str:
    """The format to use: `given`, else $BRUBECK_LOG_FORMAT, else "text"; ConfigurationError for another
    name."""
    name = (given or os.environ.get(FORMAT_ENV) or "text").strip().lower()
    if name not in FORMATS:
        raise ConfigurationError(f"log format {name!r}: pick one of {', '.join(FORMATS)} (from {FORMAT_ENV} or "
                                 "log_format=)")
    return name


def configure_logging(level: int = logging.INFO, *, format: str | None = None,
                      stream: IO[str] | None = None, force: bool = False) -> logging.Handler | None:
    """Send every log record at `level` or above to `stream` (default stderr), as text or JSON lines.

    Does nothing when the root logger has handlers already (someone configured logging), unless `force`
    (which replaces them); returns the handler it installed, or None."""
    root = logging.getLogger()
    if root.handlers and not force:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format(format) == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    for old in list(root.handlers) if force else ():
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
