"""Two Brubeck apps in two OS processes, over real ipc:// and tcp:// sockets, driven by real HTTP.

The service is `apps/slow_service.py`, written exactly as original-api.md shows, run as a subprocess. The
calling app runs here: a WSGIConnection on a free port whose pages use ServiceClientMixin, and whose
ServiceResponseHandler hands each reply to the test through a queue. HTTP requests are made with
`requests` from gevent's thread pool, so this process keeps serving while a request waits.

Nothing waits a fixed time: readiness is polled (ping in a loop, with a deadline) and every wait has a
timeout. Every process started is killed in teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests
from gevent.queue import Queue
from gevent.threadpool import ThreadPool

from brubeck.connections import WSGIConnection
from brubeck.request_handling import Brubeck, WebMessageHandler
from brubeck.response import HTTPResponse
from brubeck.testing import free_port
from brubeckservice.base import ServiceClientMixin, ServiceMessageHandler, ServiceResponse
from brubeckservice.client import ServiceClient
from brubeckservice.errors import AuthenticationError, ServiceError, ServiceTimeout, ServiceUnavailable
from brubeckservice.mixin import registry

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "apps"
PASSPHRASE = "my_shared_secret"
START_TIMEOUT = 20.0  # a fresh Python importing gevent and zmq, on a loaded machine
WAIT = 10.0


# -- the service, in its own process --------------------------------------------------------------------

class Processes:
    """Starts the test's subprocesses (output to files in `log_dir`) and kills every one at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, script: str, *args: str, passphrase: str = PASSPHRASE) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "BRUBECK_SERVICE_PASSPHRASE": passphrase}
        log = (self.log_dir / f"{script}-{len(self.started)}.log").open("wb")
        process = subprocess.Popen([sys.executable, str(APPS / script), *args], cwd=self.log_dir, env=env,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.started.append(process)
        return process

    def service(self, address: str, passphrase: str = PASSPHRASE) -> subprocess.Popen[bytes]:
        return self.start("slow_service.py", address, address + "_response", passphrase=passphrase)

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.log_dir.glob("*.log")))

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=WAIT)


@pytest.fixture
def processes(short_tmp: Path) -> Iterator[Processes]:
    launched = Processes(short_tmp)
    yield launched
    launched.kill_all()
    assert all(process.returncode is not None for process in launched.started)


@pytest.fixture(params=["ipc", "tcp"])
def address(request: pytest.FixtureRequest, short_tmp: Path) -> str:
    if request.param == "ipc":
        return f"ipc://{short_tmp}/run/slow"
    return f"tcp://127.0.0.1:{free_port()}"


def wait_ready(client: ServiceClient, processes: Processes, timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Ping until the service answers; its PONG."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.ping(timeout=0.5)
        except (ServiceUnavailable, ServiceTimeout):
            if time.monotonic() > deadline:
                raise AssertionError(f"the service did not answer within {timeout}s\n{processes.output()}") from None


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        gevent.sleep(0.01)


@pytest.fixture
def client(address: str) -> Iterator[ServiceClient]:
    with ServiceClient(address, None, PASSPHRASE, timeout=WAIT) as service_client:
        yield service_client


# -- the calling web app, in this process (original-api.md, client side) ----------------------------------

class ServiceResponseHandler(ServiceMessageHandler):
    def response(self) -> ServiceResponse:
        self.application.settings["replies"].put(self.message)
        return self.render()


class SyncPage(ServiceClientMixin, WebMessageHandler):
    def get(self) -> HTTPResponse:
        settings = self.application.settings
        service_addr, service_response_addr = settings["service_addr"], settings["service_response_addr"]
        self.register_service(service_addr, service_response_addr, PASSPHRASE)
        service_req = self.create_service_request("/service/slow", "request", {
            "RETURN_DATA": self.get_argument("data", "NO DATA"), "SLEEP": self.get_argument("sleep", "0")})
        (response, handler_response) = self.send_service_request(service_addr, service_req)
        self.set_body(f"<h1>{response.status_code} {response.status_msg}</h1>"
                      f"<p>RETURN_DATA: {response.body['RETURN_DATA']}</p>"
                      f"<p>handled: {handler_response.status_code}</p>")
        return self.render()


class AsyncPage(ServiceClientMixin, WebMessageHandler):
    def get(self) -> HTTPResponse:
        settings = self.application.settings
        service_addr, service_response_addr = settings["service_addr"], settings["service_response_addr"]
        self.register_service(service_addr, service_response_addr, PASSPHRASE)
        service_req = self.create_service_request("/service/slow", "request", {
            "RETURN_DATA": self.get_argument("data", "NO DATA"), "SLEEP": self.get_argument("sleep", "0")})
        self.send_service_request_nowait(service_addr, service_req)
        self.set_body("<h1>Request sent</h1>")
        return self.render()


def http_get(url: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False  # straight to 127.0.0.1, whatever proxy the environment names
        return session.get(url, timeout=60)


class WebApp:
    """The calling app, serving HTTP on a free port; `replies` receives what its response handler got."""

    def __init__(self, service_addr: str, service_timeout: float = WAIT) -> None:
        self.replies: Any = Queue()
        self.connection = WSGIConnection(port=free_port())
        self.app = Brubeck(msg_conn=self.connection,
                           handler_tuples=[(r"^/service/sync", SyncPage), (r"^/service/async", AsyncPage),
                                           (r"^/service/slow", ServiceResponseHandler)],
                           replies=self.replies, service_addr=service_addr,
                           service_response_addr=service_addr + "_response", service_timeout=service_timeout)
        self.connection.start(self.app)
        self.url = f"http://127.0.0.1:{self.connection.port}"
        self.threads = ThreadPool(50)

    def get(self, path: str) -> requests.Response:
        """GET from another thread (requests blocks it, not this process's gevent loop)."""
        response: requests.Response = self.threads.spawn(http_get, self.url + path).get()
        return response

    def service_client(self) -> ServiceClient:
        return registry(self.app)[self.app.settings["service_addr"]]

    def close(self) -> None:
        self.app.close()  # its connection, then the service clients it registered
        self.connection.close()
        self.threads.kill()


@pytest.fixture
def web(address: str) -> Iterator[WebApp]:
    app = WebApp(address)
    yield app
    app.close()


# -- the original API, end to end ------------------------------------------------------------------------

def test_a_sync_page_shows_what_the_service_returned(address: str, processes: Processes, client: ServiceClient,
                                                     web: WebApp) -> None:
    processes.service(address)
    wait_ready(client, processes)
    page = web.get("/service/sync?data=hello+from+the+web")
    assert page.status_code == 200, page.text
    assert "<h1>200 Took a while, but I am back.</h1>" in page.text
    assert "<p>RETURN_DATA: hello from the web</p>" in page.text
    assert "<p>handled: 200</p>" in page.text
    reply = web.replies.get(timeout=WAIT)  # the response handler ran, once
    assert reply.body == {"RETURN_DATA": "hello from the web"}
    web.service_client().ping()
    assert web.replies.empty()


def test_an_async_page_answers_at_once_and_the_reply_reaches_the_response_handler(
        address: str, processes: Processes, client: ServiceClient, web: WebApp) -> None:
    processes.service(address)
    wait_ready(client, processes)
    page = web.get("/service/async?data=later&sleep=1")
    assert (page.status_code, page.text) == (200, "<h1>Request sent</h1>")
    assert web.replies.empty()  # the page was sent while the service was still sleeping
    reply = web.replies.get(timeout=WAIT)
    assert (reply.status_code, reply.status_msg) == (200, "Took a while, but I am back.")
    assert reply.body == {"RETURN_DATA": "later"}
    web.service_client().ping()
    assert web.replies.empty()


def test_fifty_sync_pages_wait_for_a_one_second_service_in_parallel(
        address: str, processes: Processes, client: ServiceClient, web: WebApp) -> None:
    processes.service(address)
    wait_ready(client, processes)
    started = time.monotonic()
    pages = [web.threads.spawn(http_get, f"{web.url}/service/sync?data=page+{n}&sleep=1") for n in range(50)]
    texts = [page.get().text for page in pages]
    elapsed = time.monotonic() - started
    assert all(f"<p>RETURN_DATA: page {n}</p>" in text for n, text in enumerate(texts))
    assert elapsed < 5, f"50 calls of 1 s took {elapsed:.1f}s: they were not served in parallel"


# -- when the service is not there, or goes away --------------------------------------------------------------

def test_no_service_fails_within_the_timeout(address: str) -> None:
    with ServiceClient(address, None, PASSPHRASE, timeout=1.0) as lonely:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="no connection to the service"):
            lonely.call("/service/slow")
        assert time.monotonic() - started < 3
        assert lonely.pending == 0


def test_a_page_calling_no_service_answers_503_within_the_timeout(address: str) -> None:
    web = WebApp(address, service_timeout=1.0)
    try:
        started = time.monotonic()
        page = web.get("/service/sync")
        assert page.status_code == 503
        assert time.monotonic() - started < 5
    finally:
        web.close()


def test_a_killed_service_fails_the_call_in_flight_and_a_restarted_one_serves(
        address: str, processes: Processes, client: ServiceClient) -> None:
    service = processes.service(address)
    wait_ready(client, processes)
    call = gevent.spawn(client.call, "/service/slow", arguments={"RETURN_DATA": "lost", "SLEEP": 60}, timeout=60)
    wait_for(lambda: client.ping()["inflight"] == 1, "the call to reach the service")
    started = time.monotonic()
    service.send_signal(signal.SIGKILL)
    with pytest.raises(ServiceUnavailable, match="lost while /service/slow was in flight"):
        call.get(timeout=WAIT)
    assert time.monotonic() - started < 5  # the connection dropped: no waiting for the 60 s timeout
    assert client.pending == 0
    service.wait(timeout=WAIT)

    processes.service(address)  # the same address, a new process
    wait_ready(client, processes)
    response = client.call("/service/slow", arguments={"RETURN_DATA": "back again"})
    assert (response.status_code, response.body) == (200, {"RETURN_DATA": "back again"})


def test_an_interrupted_service_fails_the_call_in_flight(address: str, processes: Processes,
                                                        client: ServiceClient) -> None:
    service = processes.service(address)
    wait_ready(client, processes)
    call = gevent.spawn(client.call, "/service/slow", arguments={"SLEEP": 60}, timeout=60)
    wait_for(lambda: client.ping()["inflight"] == 1, "the call to reach the service")
    service.send_signal(signal.SIGINT)  # the app closes its socket on the way out, without draining
    with pytest.raises(ServiceUnavailable):
        call.get(timeout=WAIT)
    assert service.wait(timeout=WAIT) == 0
    assert client.pending == 0


def test_a_terminated_service_answers_the_call_in_flight_then_exits(address: str, processes: Processes,
                                                                   client: ServiceClient) -> None:
    service = processes.service(address)
    wait_ready(client, processes)
    call = gevent.spawn(client.call, "/service/slow", arguments={"SLEEP": 1, "RETURN_DATA": "finished"})
    wait_for(lambda: client.ping()["inflight"] == 1, "the call to reach the service")
    service.terminate()  # SIGTERM: the app drains (docs/protocol.md, DRAIN)
    assert call.get(timeout=WAIT).body["RETURN_DATA"] == "finished"
    assert service.wait(timeout=WAIT) == 0
    assert client.stats["drains"] == 1 and client.stats["lost"] == 0


# -- what crosses process boundaries -------------------------------------------------------------------------

def test_a_wrong_secret_is_refused_across_processes(address: str, processes: Processes) -> None:
    processes.service(address, passphrase="the service's own secret")
    with ServiceClient(address, None, PASSPHRASE, timeout=WAIT) as stranger:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # until the service is up, the call fails for want of a connection instead
            try:
                stranger.call("/service/slow", timeout=0.5)
            except AuthenticationError as refused:
                assert "refused our signature" in str(refused)
                break
            except (ServiceUnavailable, ServiceTimeout):
                assert time.monotonic() < deadline, processes.output()
            else:
                raise AssertionError("a call signed with the wrong secret was served")
        with pytest.raises(AuthenticationError):
            stranger.ping()
        assert stranger.pending == 0


def test_garbage_from_another_process_does_not_stop_real_calls(address: str, processes: Processes,
                                                              client: ServiceClient) -> None:
    processes.service(address)
    wait_ready(client, processes)
    rounds = 50
    garbage = processes.start("garbage_sender.py", address, str(rounds))
    served = 0
    while garbage.poll() is None or served < 20:
        response = client.call("/service/slow", arguments={"RETURN_DATA": f"call {served}"})
        assert response.body == {"RETURN_DATA": f"call {served}"}
        served += 1
    assert garbage.returncode == 0, processes.output()
    stats = client.ping()["stats"]
    assert (stats["malformed"], stats["forged"], stats["served"]) == (5 * rounds, rounds, served)


def test_errors_from_the_service_process_arrive_as_data(address: str, processes: Processes,
                                                        client: ServiceClient) -> None:
    processes.service(address)
    wait_ready(client, processes)
    response = client.call("/service/slow", arguments={"SLEEP": "not a number"})
    assert (response.status_code, response.status_msg) == (500, "ValueError: could not convert string to float: "
                                                                 "'not a number'")
    assert response.body["error"]["type"] == "ValueError"
    with pytest.raises(ServiceError, match="404 Not Found from /elsewhere"):
        client.call("/elsewhere").raise_for_status()
