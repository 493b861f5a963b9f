"""Deadlines, cancellation and traces across three real processes behind a real Mongrel2 (issue 12).

    browser --HTTP--> Mongrel2 --zmq--> web app --REQ--> service A --REQ--> service B

Every hop is `apps/hop.py` in its own process (a role each), logging to its own file with the request's
trace id on every line (brubeck.context.TraceFilter). The test process is the browser (a raw socket, or
`requests` from an OS thread) and, to see each service's load, a `ServiceClient` that pings A and B.

Nothing waits a fixed time: a test polls a log file, a PONG or the clock, always with a deadline. Every
process started is killed at teardown, and every socket closed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from gevent import socket as gsocket
from gevent.queue import Queue

from brubeck.testing import Mongrel2Server
from brubeckservice import envelope
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceTimeout, ServiceUnavailable
from brubeckservice.models import ServiceRequest
from brubeckservice.signing import Signer
from tests.brubeck.http_client import fetch, spawn_in_thread
from tests.brubeckservice.helpers import PASSPHRASE, assert_next_is_pong, wait_until

REPO = Path(__file__).resolve().parents[2]
HOP = Path(__file__).resolve().parent / "apps" / "hop.py"
START_TIMEOUT = 60.0  # three fresh Pythons importing gevent and zmq, on a loaded two-core machine
WAIT = 30.0  # the longest a test waits for something that should happen soon
BUDGET = 2.0  # the web app's request_budget, where a test sets one
NEXT_TIMEOUT = 30.0  # each hop's own timeout for its call to the next (apps/hop.py)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
SIGNER = Signer(PASSPHRASE)

# -- the processes -----------------------------------------------------------------------------------------

class Hops:
    """Starts hop processes (each logging to `<role>.log` in `workdir`) and kills every one at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.a_addr = f"ipc://{workdir}/a"
        self.b_addr = f"ipc://{workdir}/b"
        self.started: list[subprocess.Popen[bytes]] = []
        self.clients: list[ServiceClient] = []

    def log(self, role: str) -> Path:
        return self.workdir / f"{role}.log"

    def start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "BRUBECK_SERVICE_PASSPHRASE": PASSPHRASE}
        with (self.workdir / f"{role}.out").open("wb") as output:  # (tracebacks, if a hop dies)
            process = subprocess.Popen([sys.executable, str(HOP), role, "--log", str(self.log(role)), *args],
                                       cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def service_b(self, *args: str) -> ServiceClient:
        self.start("b", "--bind", self.b_addr, *args)
        return self.ready(self.b_addr)

    def service_a(self) -> ServiceClient:
        self.start("a", "--bind", self.a_addr, "--next", self.b_addr)
        return self.ready(self.a_addr)

    def web(self, mongrel2: Mongrel2Server, *args: str) -> None:
        self.start("web", "--pull", mongrel2.send_spec, "--pub", mongrel2.recv_spec, "--next", self.a_addr, *args)

    def ready(self, address: str) -> ServiceClient:
        """A client of the service at `address`, once the service answers a PING."""
        client = ServiceClient(address, None, PASSPHRASE, timeout=WAIT)
        self.clients.append(client)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client.ping(timeout=1.0)
                return client
            except (ServiceUnavailable, ServiceTimeout):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{address} did not answer within {START_TIMEOUT}s\n{self.output()}") from None
                gevent.sleep(0.05)  # (no connection yet fails at once: do not spin)

    def output(self) -> str:
        files = sorted([*self.workdir.glob("*.log"), *self.workdir.glob("*.out")])
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')}" for path in files)

    def close(self) -> None:
        for client in self.clients:
            client.close(timeout=0)
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=WAIT)


@pytest.fixture
def hops(short_tmp: Path) -> Iterator[Hops]:
    launched = Hops(short_tmp)
    try:
        yield launched
    finally:
        launched.close()
    assert all(process.returncode is not None for process in launched.started)


class Chain:
    """Mongrel2 -> web -> A -> B, all running, with clients that ping A and B."""

    def __init__(self, hops: Hops, mongrel2: Mongrel2Server, a: ServiceClient, b: ServiceClient) -> None:
        self.hops, self.mongrel2, self.a, self.b = hops, mongrel2, a, b
        self.url = mongrel2.url

    def get(self, path: str, headers: dict[str, str] | None = None,
            timeout: float = WAIT) -> tuple[int, dict[str, Any]]:
        """GET `path` through the whole chain: the status, and the JSON body (empty when it is not JSON)."""
        response = fetch("GET", self.url + path, headers=headers or {}, timeout=timeout)
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def wait_ready(self) -> None:
        """Until a request goes through every hop: Mongrel2 has the web app, the web app has A, A has B."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                status, _ = self.get("/report", timeout=5.0)
                if status == 200:
                    return
            except OSError:  # (requests' errors are OSErrors: Mongrel2 gave up waiting for the handler)
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the chain did not answer within {START_TIMEOUT}s\n{self.hops.output()}")
            gevent.sleep(0.1)


StartChain = Callable[..., Chain]


@pytest.fixture
def start_chain(hops: Hops, mongrel2_required: None) -> Iterator[StartChain]:
    """`start_chain(*web_args)`: a Mongrel2 and the three hops, the web app started with `web_args`."""
    servers: list[Mongrel2Server] = []

    def start(*web_args: str) -> Chain:
        mongrel2 = Mongrel2Server().start()
        servers.append(mongrel2)
        b = hops.service_b()
        a = hops.service_a()
        hops.web(mongrel2, *web_args)
        chain = Chain(hops, mongrel2, a, b)
        chain.wait_ready()
        return chain

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


# -- reading the logs --------------------------------------------------------------------------------------

def log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def wait_for_line(hops: Hops, role: str, pattern: str, timeout: float = WAIT) -> str:
    """The first line of `role`'s log matching the regex `pattern`, waiting for it at most `timeout` s."""
    compiled = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        for line in log_lines(hops.log(role)):
            if compiled.search(line):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in {role}.log within {timeout}s\n{hops.output()}")
        gevent.sleep(0.02)


def traced(hops: Hops, role: str, trace_id: str) -> list[str]:
    """The lines of `role`'s log written while serving a request of trace `trace_id`."""
    return [line for line in log_lines(hops.log(role)) if f" trace={trace_id} " in line]


def inflight(client: ServiceClient) -> int:
    count: int = client.ping(timeout=WAIT)["inflight"]
    return count


# -- 1. the budget reaches the last hop ----------------------------------------------------------------------

def test_the_last_hop_gets_what_is_left_of_the_web_budget(start_chain: StartChain) -> None:
    chain = start_chain("--budget", str(BUDGET))
    before = now_ms()
    status, seen = chain.get("/report")
    after = now_ms()
    assert status == 200, seen
    # B's deadline is the web request's (set between `before` and `after` from the 2 s budget), not
    # B's caller's own timeout (30 s); a hop may shift it by a rounding millisecond, never extend the budget.
    assert before + BUDGET * 1000 - 5 <= seen["deadline"] <= after + BUDGET * 1000 + 5
    assert 0 < seen["remaining"] <= seen["a_remaining"] <= seen["web_remaining"] <= BUDGET
    assert seen["remaining"] < NEXT_TIMEOUT


def test_a_trusted_budget_header_gives_the_whole_chain_the_smaller_budget(start_chain: StartChain) -> None:
    chain = start_chain("--budget", str(BUDGET), "--budget-header", "x-budget-ms")
    before = now_ms()
    status, seen = chain.get("/report", {"X-Budget-Ms": "800"})
    after = now_ms()
    assert status == 200, seen
    assert before + 800 - 5 <= seen["deadline"] <= after + 800 + 5
    assert 0 < seen["remaining"] <= seen["web_remaining"] <= 0.8

    before = now_ms()
    status, seen = chain.get("/report", {"X-Budget-Ms": "60000"})  # more than the app allows: the app wins
    after = now_ms()
    assert status == 200, seen
    assert before + BUDGET * 1000 - 5 <= seen["deadline"] <= after + BUDGET * 1000 + 5


# -- 2, 3. the last hop's work stops when nobody waits for it any more ----------------------------------------

def test_a_browser_that_disconnects_stops_the_work_at_every_hop(start_chain: StartChain) -> None:
    chain = start_chain()
    hops = chain.hops
    browser = gsocket.create_connection(("127.0.0.1", chain.mongrel2.http_port), timeout=WAIT)
    try:
        browser.sendall(f"GET /hold HTTP/1.1\r\nHost: localhost\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode())
        wait_for_line(hops, "b", rf" trace={TRACE_ID} .*hold started")
    finally:
        browser.close()
    wait_for_line(hops, "web", rf"closed by the browser: cancelling its request \(trace {TRACE_ID}\)")
    wait_for_line(hops, "web", rf"stopped GET /hold for connection \d+: the browser disconnected "
                               rf"\(trace {TRACE_ID}\)")
    wait_for_line(hops, "a", rf"stopped request .*/relay\), not answered: its caller cancelled it "
                             rf".*\(trace {TRACE_ID}\)")
    wait_for_line(hops, "b", rf" trace={TRACE_ID} .*hold cancelled: its caller cancelled it")
    wait_until(lambda: inflight(chain.b) == 0, "B's slot to be free", timeout=WAIT)
    wait_until(lambda: inflight(chain.a) == 0, "A's slot to be free", timeout=WAIT)
    assert not any("never cancelled" in line for line in log_lines(hops.log("b")))


def test_the_web_handlers_timeout_stops_the_work_at_every_hop(start_chain: StartChain) -> None:
    chain = start_chain()
    hops = chain.hops
    page = spawn_in_thread(fetch, "GET", chain.url + "/hold?timeout=3", headers={"traceparent": TRACEPARENT},
                           timeout=WAIT)
    wait_for_line(hops, "b", rf" trace={TRACE_ID} .*hold started")
    assert page.get(timeout=WAIT).status_code == 504
    # The web's call and A's call to B share one deadline: whichever hop sees it pass first cancels B.
    line = wait_for_line(hops, "b", rf" trace={TRACE_ID} .*hold cancelled: ")
    assert re.search(r"its caller cancelled it \((timed out|the caller stopped waiting)\)", line), line
    wait_until(lambda: inflight(chain.b) == 0, "B's slot to be free", timeout=WAIT)
    wait_until(lambda: inflight(chain.a) == 0, "A's slot to be free", timeout=WAIT)


# -- 4. one trace ----------------------------------------------------------------------------------------------

def test_a_given_trace_is_in_every_hops_log_and_passed_on_as_it_came(start_chain: StartChain) -> None:
    chain = start_chain()
    status, seen = chain.get("/report", {"traceparent": TRACEPARENT})
    assert status == 200, seen
    assert seen["web_trace_id"] == seen["a_trace_id"] == seen["trace_id"] == TRACE_ID
    # No tracer records spans in these processes, so none makes spans up: the browser's parent goes on to
    # every hop (W3C's pass-through; with the otel extra each hop is a span: tests/brubeckservice/test_tracing.py).
    assert {seen["web_span_id"], seen["a_span_id"], seen["span_id"]} == {PARENT_SPAN}
    assert any("calling A for /report" in line for line in traced(chain.hops, "web", TRACE_ID))
    assert any("relaying to /report" in line for line in traced(chain.hops, "a", TRACE_ID))
    assert any("report for /report" in line for line in traced(chain.hops, "b", TRACE_ID))


def test_a_trace_the_web_app_starts_is_the_one_every_hop_logs(start_chain: StartChain) -> None:
    chain = start_chain()
    status, seen = chain.get("/report")
    assert status == 200, seen
    trace_id = seen["web_trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != TRACE_ID
    assert seen["a_trace_id"] == seen["trace_id"] == trace_id
    assert any("calling A for /report" in line for line in traced(chain.hops, "web", trace_id))
    assert any("relaying to /report" in line for line in traced(chain.hops, "a", trace_id))
    assert any("report for /report" in line for line in traced(chain.hops, "b", trace_id))


# -- 5. no work past the deadline ----------------------------------------------------------------------------

def test_a_request_whose_deadline_passes_in_the_queue_is_never_started(hops: Hops) -> None:
    b = hops.service_b("--capacity", "1")
    errors: Any = Queue()
    holding = b.send("/hold", on_error=errors.put)
    wait_for_line(hops, "b", r"hold started")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = context.socket(zmq.DEALER)
    try:
        raw.connect(hops.b_addr)
        deadline = now_ms() + 2000
        late = ServiceRequest(path="/report", traceparent=TRACEPARENT)
        raw.send_multipart(envelope.build_request(SIGNER, b"late-1", late, now_ms(), "raw", 1, deadline))
        # Taken in (so it came before its deadline) and waiting behind the hold for B's one slot.
        wait_until(lambda: b.ping(timeout=WAIT)["queued"] == 1, "the request to queue at B", timeout=WAIT)
        wait_until(lambda: now_ms() > deadline, "its deadline to pass", timeout=WAIT)
        assert b.cancel(holding, "the test frees the slot")
        wait_for_line(hops, "b", rf" INFO .*skipped request b'late-1' \(request /report\), not answered: its "
                                 rf"caller's deadline passed .*\(trace {TRACE_ID}\)")
        assert_next_is_pong(raw, SIGNER)  # nothing was answered to it before
        pong = b.ping(timeout=WAIT)
        assert (pong["inflight"], pong["queued"], pong["stats"]["expired"], pong["served"]) == (0, 0, 1, 0)
        assert not any("report for" in line for line in log_lines(hops.log("b")))  # its handler never ran
    finally:
        raw.close(linger=0)
        context.term()
    assert "the test frees the slot" in str(errors.get(timeout=WAIT))
