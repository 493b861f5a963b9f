"""Access logs and logging set-up (brubeck.logs): one line per web request, parsed back in both formats, over
real HTTP (WSGI and a real Mongrel2); `Brubeck()` leaves the process's logging alone, `run()` sets it up."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import gevent
import pytest
from gevent.pool import Pool

from brubeck import logs, observe
from brubeck.application import Brubeck
from brubeck.context import current as current_context
from brubeck.errors import ConfigurationError
from brubeck.logs import JsonLinesFormatter
from brubeck.transports.wsgi import WSGIConnection
from tests.brubeck.http_client import fetch
from tests.brubeck.sample_app import Running

#: The text access line: METHOD PATH STATUS SIZE DURATION REMOTE trace TRACE_ID
WEB_LINE = re.compile(r"(?P<method>\S+) (?P<path>\S+) (?P<status>\d{3}|-) (?P<size>\d+B|-) "
                      r"(?P<ms>\d+\.\d{3})ms (?P<remote>\S+) trace (?P<trace>[0-9a-f]{32})")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Lines:
    """What a logger wrote through a handler of its own, one string per record."""

    def __init__(self, logger: logging.Logger, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.logger = logger
        self.level = logger.level

    def __enter__(self) -> Lines:
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)

    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


@pytest.fixture
def text_lines() -> Iterator[Lines]:
    with Lines(logs.WEB_LOG, logging.Formatter("%(message)s")) as lines:
        yield lines


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    with Lines(logs.WEB_LOG, JsonLinesFormatter()) as lines:
        yield lines


def test_each_web_request_is_one_text_line_that_parses_back(over_wsgi: Running, text_lines: Lines) -> None:
    hello = fetch("GET", over_wsgi.url + "/hello?name=x", headers={"traceparent": TRACEPARENT})
    missing = fetch("GET", over_wsgi.url + "/nowhere")
    refused = fetch("POST", over_wsgi.url + "/get-only")
    assert (hello.status_code, missing.status_code, refused.status_code) == (200, 404, 405)
    parsed = [WEB_LINE.fullmatch(line) for line in text_lines.lines()]
    assert all(parsed), text_lines.lines()
    fields = [match.groupdict() for match in parsed if match]
    assert [(f["method"], f["path"], f["status"]) for f in fields] == [
        ("GET", "/hello", "200"), ("GET", "/nowhere", "404"), ("POST", "/get-only", "405")]
    first = fields[0]
    assert first["trace"] == TRACE_ID  # the trace the request came with
    assert first["remote"] == "127.0.0.1"
    # The size is the whole response, head and body: more than the body the client read.
    assert int(first["size"][:-1]) > len(hello.content) > 0
    assert fields[1]["trace"] != fields[2]["trace"]  # a request without a traceparent starts its own


def test_the_json_format_gives_every_field(over_wsgi: Running, json_lines: Lines) -> None:
    fetch("GET", over_wsgi.url + "/hello", headers={"traceparent": TRACEPARENT})
    fetch("GET", over_wsgi.url + "/nowhere")
    first, second = (json.loads(line) for line in json_lines.lines())
    assert first["kind"] == "web" and first["logger"] == "brubeck.access" and first["level"] == "INFO"
    assert (first["method"], first["path"], first["route"], first["status"]) == ("GET", "/hello", "^/hello$", 200)
    assert first["trace_id"] == TRACE_ID and first["remote"] == "127.0.0.1"
    assert first["size"] > 0 and first["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first["message"].startswith("GET /hello 200 ")
    assert (second["route"], second["status"]) == ("", 404)  # no route matched


def test_a_deferred_answer_is_logged_without_a_status(over_wsgi: Running, json_lines: Lines) -> None:
    fetch("GET", over_wsgi.url + "/deferred")  # the handler answers later, by itself
    (line,) = (json.loads(line) for line in json_lines.lines() if '"/deferred"' in line)
    assert (line["status"], line["size"]) == (None, None)


@pytest.mark.mongrel2
def test_behind_mongrel2_the_remote_address_is_the_browsers(behind_mongrel2: Running, text_lines: Lines) -> None:
    assert fetch("GET", behind_mongrel2.url + "/hello").status_code == 200
    matches = [WEB_LINE.fullmatch(line) for line in text_lines.lines() if " /hello " in line]
    assert matches and matches[-1] is not None
    assert matches[-1]["remote"] == "127.0.0.1" and matches[-1]["status"] == "200"


def test_silencing_the_access_logger_silences_the_lines(over_wsgi: Running, text_lines: Lines) -> None:
    logs.WEB_LOG.setLevel(logging.WARNING)
    fetch("GET", over_wsgi.url + "/hello")
    assert text_lines.lines() == []


# -- logging set-up ------------------------------------------------------------------------------------


def run_fresh(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh Python process (whose logging nobody configured: pytest's own handlers sit on the
    root logger here)."""
    environ = {key: value for key, value in os.environ.items() if key != logs.FORMAT_ENV}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env={**environ, **env}, check=False)


def test_building_apps_changes_no_process_wide_logging() -> None:
    done = run_fresh("""
        import logging
        from brubeck.application import Brubeck
        from brubeck.transports.wsgi import WSGIConnection
        Brubeck(msg_conn=WSGIConnection(port=0), log_level=logging.DEBUG)
        Brubeck(msg_conn=WSGIConnection(port=0), log_level=logging.ERROR, log_format="json")
        root = logging.getLogger()
        print(len(root.handlers), root.level, logging.getLogger("brubeck").level)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", str(logging.WARNING), "0"]  # Python's defaults, untouched


def test_run_sets_up_logging_as_the_app_asks_when_nobody_did() -> None:
    done = run_fresh("""
        import logging, gevent
        from brubeck.application import Brubeck
        from brubeck.transports.wsgi import WSGIConnection
        app = Brubeck(msg_conn=WSGIConnection(port=0, host="127.0.0.1"), log_format="json")
        gevent.spawn_later(0.2, app.close)
        app.run()
        logging.getLogger("brubeck.test").info("after run")
    """)
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in done.stderr.splitlines()]
    assert items[0]["logger"] == "brubeck.application"
    assert items[-1]["message"] == "after run" and items[-1]["level"] == "INFO"


def test_run_keeps_logging_that_was_configured_before() -> None:
    done = run_fresh("""
        import logging, sys, gevent
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="mine: %(message)s")
        from brubeck.application import Brubeck
        from brubeck.transports.wsgi import WSGIConnection
        app = Brubeck(msg_conn=WSGIConnection(port=0, host="127.0.0.1"), log_level=logging.DEBUG, log_format="json")
        gevent.spawn_later(0.2, app.close)
        app.run()
        logging.getLogger("brubeck.test").warning("still mine")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["mine: still mine"] and done.stderr == ""


def test_configure_logging_sets_up_the_root_once_unless_forced() -> None:
    done = run_fresh("""
        import io, logging
        from brubeck.logs import configure_logging
        stream, other = io.StringIO(), io.StringIO()
        root = logging.getLogger()
        installed = configure_logging(logging.INFO, format="json", stream=stream)
        assert installed is not None and root.handlers == [installed]
        assert configure_logging(logging.DEBUG, stream=io.StringIO()) is None  # configured: left alone
        logging.getLogger("brubeck.test").info("hello %s", "there")
        replaced = configure_logging(logging.WARNING, stream=other, force=True)
        assert root.handlers == [replaced] and root.level == logging.WARNING
        logging.getLogger("brubeck.test").warning("plain")
        print(stream.getvalue(), end="")
        print(other.getvalue(), end="")
    """)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert json.loads(first)["message"] == "hello there"
    assert re.fullmatch(r"\S+ \S+ WARNING brubeck.test: plain", second)


def test_the_environment_picks_the_format_when_the_app_does_not() -> None:
    done = run_fresh("""
        import logging
        from brubeck.logs import configure_logging
        configure_logging()
        try:
            raise ValueError("kept")
        except ValueError:
            logging.getLogger("brubeck.test").exception("it failed")
    """, BRUBECK_LOG_FORMAT="JSON")
    assert done.returncode == 0, done.stderr
    item = json.loads(done.stderr)
    assert item["message"] == "it failed" and "ValueError: kept" in item["exc"]


def test_an_unknown_format_is_refused_when_the_app_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="log format 'yaml'"):
        Brubeck(msg_conn=WSGIConnection(port=0), log_format="yaml")
    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    with pytest.raises(ConfigurationError, match="BRUBECK_LOG_FORMAT"):
        Brubeck(msg_conn=WSGIConnection(port=0))


def test_a_response_that_is_no_http_is_logged_as_the_500_it_went_as(over_wsgi: Running, json_lines: Lines) -> None:
    assert fetch("GET", over_wsgi.url + "/not-http").status_code == 500
    (line,) = (json.loads(line) for line in json_lines.lines())
    assert (line["route"], line["status"], line["size"]) == ("^/not-http$", 500, None)


def test_a_request_cancelled_while_served_is_logged_unanswered(text_lines: Lines) -> None:
    def gives_up(application: Brubeck, message: object) -> bytes:
        ctx = current_context()
        assert ctx is not None
        ctx.cancel("the browser left")
        gevent.sleep(0)  # (raises Cancelled here, where it waits)
        raise AssertionError("not cancelled")

    connection = WSGIConnection(port=0, host="127.0.0.1")
    app = Brubeck(msg_conn=connection, handler_tuples=[(r"^/gives-up$", gives_up)], pool=Pool())
    connection.start(app)
    try:
        # Its handler answered nothing; over WSGI the transport answers 503 itself (and logs it on its line).
        assert fetch("GET", f"http://127.0.0.1:{connection.port}/gives-up", timeout=5).status_code == 503
    finally:
        app.close()
    parsed = [WEB_LINE.fullmatch(line) for line in text_lines.lines()]
    assert len(parsed) == 1 and parsed[0] is not None
    assert (parsed[0]["path"], parsed[0]["status"], parsed[0]["size"]) == ("/gives-up", "-", "-")


def test_what_a_client_sends_cannot_forge_fields(over_wsgi: Running, text_lines: Lines) -> None:
    forged = "6.6.6.6 trace 00000000000000000000000000000000"
    fetch("GET", over_wsgi.url + "/hello", headers={"X-Forwarded-For": forged})
    (line,) = text_lines.lines()
    match = WEB_LINE.fullmatch(line)
    assert match is not None and match["remote"] == forged.replace(" ", "%20")
    assert match["trace"] != "0" * 32


def test_an_observer_whose_check_raises_costs_no_request(over_wsgi: Running,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("check bug")

    stop = observe.watch("web", lambda record: None, broken)
    try:
        with caplog.at_level(logging.ERROR, "brubeck.observe"):
            assert fetch("GET", over_wsgi.url + "/hello").status_code == 200
    finally:
        stop()
    assert any("check bug" in (record.exc_text or "") for record in caplog.records if record.name == "brubeck.observe")


def test_a_silenced_access_logger_gets_no_record_built(over_wsgi: Running) -> None:
    logs.WEB_LOG.setLevel(logging.WARNING)
    try:
        assert not observe.wanted(observe.WEB)  # (the metrics tests enable and disable their own)
    finally:
        logs.WEB_LOG.setLevel(logging.NOTSET)
