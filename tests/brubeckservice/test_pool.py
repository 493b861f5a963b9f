"""Many workers, as real processes: spread by capacity, dead told from busy, drained, saturated.

Each worker is `apps/pool_worker.py` in a process of its own on an ipc:// address; the client is a real
`ServiceClient` in this process. Times are measured and bounded generously (a detection is checked to
beat the call's own timeout by far), never asserted as performance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent.queue import Queue

from brubeckservice.client import ServiceClient
from brubeckservice.errors import ServiceTimeout, ServiceUnavailable
from brubeckservice.models import ServiceResponse
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, read_line, wait_until

APP = Path(__file__).parent / "apps" / "pool_worker.py"
LONG = 30.0  # a call timeout no test should ever reach: failing fast means well before it


START_TIMEOUT = 30.0  # a fresh Python importing gevent and zmq, on a loaded machine
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}


def worker_argv(address: str, capacity: int | None) -> list[str]:
    return [sys.executable, str(APP), address, *([str(capacity)] if capacity is not None else [])]


class WorkerProcess:
    """`apps/pool_worker.py ADDRESS [CAPACITY]`, once it said it is ready."""

    def __init__(self, address: str, capacity: int | None) -> None:
        self.address = address
        self.process = subprocess.Popen(worker_argv(address, capacity), stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=ENV)
        assert read_line(self.process, START_TIMEOUT) == "ready"

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=WAIT)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class Fleet:
    """Worker processes started by a test, all stopped at its end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers: list[WorkerProcess] = []

    def start(self, capacity: int | None = None, address: str | None = None) -> WorkerProcess:
        """A worker on `address`, by default an ipc:// socket of its own in the test's directory."""
        worker = WorkerProcess(address or f"ipc://{self.directory}/w{len(self.workers)}", capacity)
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    workers = Fleet(tmp_path)
    yield workers
    workers.close()


def client_of(*workers: WorkerProcess, **options: Any) -> ServiceClient:
    """A client of `workers`, once each is alive and has reported its capacity (before that, a client assumes
    1 for a worker)."""
    client = ServiceClient([w.address for w in workers], None, PASSPHRASE, timeout=LONG, **options)
    wait_until(lambda: all(w.state == "alive" and "capacity" in w.reported for w in client.endpoints),
               "every worker alive and reporting")
    return client


def states(client: ServiceClient) -> dict[str, str]:
    return {info.address: info.state for info in client.workers}


def start_calls(client: ServiceClient, path: str, count: int, **arguments: Any) -> list[gevent.Greenlet]:
    return [gevent.spawn(client.call, path, arguments={k: str(v) for k, v in arguments.items()})
            for _ in range(count)]


def served_by(responses: list[ServiceResponse]) -> Counter[int]:
    return Counter(r.body["pid"] for r in responses)


# -- spread by capacity ----------------------------------------------------------------------------------

def test_calls_spread_by_free_capacity_and_never_exceed_it(fleet: Fleet) -> None:
    workers = [fleet.start(capacity=2) for _ in range(3)]
    client = client_of(*workers)
    try:
        calls = start_calls(client, "/sleep", 7, SECONDS=0.6)
        wait_until(lambda: client.queued == 1, "the seventh call to wait in the client")
        assert [info.inflight for info in client.workers] == [2, 2, 2]
        gevent.joinall(calls, timeout=WAIT, raise_error=True)
        responses = [c.value for c in calls]
        assert all(r.ok for r in responses)
        assert sorted(served_by(responses).values()) == [2, 2, 3]
    finally:
        client.close()


def test_an_idle_worker_gets_the_next_call_before_a_busy_one(fleet: Fleet) -> None:
    first, second = fleet.start(capacity=4), fleet.start(capacity=4)
    client = client_of(first, second)
    try:
        slow = start_calls(client, "/sleep", 1, SECONDS=2)
        wait_until(lambda: client.pending == 1 and client.queued == 0, "the slow call to be in flight")
        busy_pid = next(w.pid for w, info in zip((first, second), client.workers, strict=True) if info.inflight)
        for _ in range(5):  # one at a time: each finds one worker idle and the other with a call
            assert client.call("/echo").body["pid"] != busy_pid
        gevent.joinall(slow, timeout=WAIT, raise_error=True)
    finally:
        client.close()


# -- dead, busy, back --------------------------------------------------------------------------------

def test_a_killed_worker_fails_its_calls_at_once_and_idempotent_ones_run_elsewhere(fleet: Fleet) -> None:
    doomed, survivor = fleet.start(capacity=10), fleet.start(capacity=10)
    client = client_of(doomed, survivor)
    try:
        plain = start_calls(client, "/sleep", 6, SECONDS=3)
        safe = [gevent.spawn(client.call, "/sleep", arguments={"SECONDS": "0.2"}, idempotent=True)
                for _ in range(6)]
        wait_until(lambda: [info.inflight for info in client.workers] == [6, 6], "calls on both workers")
        started = time.monotonic()
        doomed.signal(signal.SIGKILL)
        gevent.joinall(plain + safe, timeout=WAIT)
        elapsed = time.monotonic() - started
        failed = [c for c in plain if isinstance(c.exception, ServiceUnavailable)]
        assert len(failed) == 3 and all("lost while /sleep was in flight" in str(c.exception) for c in failed)
        assert all(c.successful() and c.value.ok for c in plain if c not in failed)
        assert all(c.successful() and c.value.body["pid"] == survivor.pid for c in safe)
        assert elapsed < LONG / 3
        assert client.stats["resent"] == 3
        assert states(client)[doomed.address] == "dead"
        assert {client.call("/echo").body["pid"] for _ in range(5)} == {survivor.pid}
    finally:
        client.close()


def test_a_stopped_worker_is_found_dead_within_the_heartbeats_and_used_again_when_it_continues(
        fleet: Fleet) -> None:
    frozen, other = fleet.start(capacity=10), fleet.start(capacity=10)
    client = client_of(frozen, other)
    try:
        calls = start_calls(client, "/sleep", 4, SECONDS=0.5)
        wait_until(lambda: [info.inflight for info in client.workers] == [2, 2], "calls on both workers")
        started = time.monotonic()
        frozen.signal(signal.SIGSTOP)
        gevent.joinall(calls, timeout=WAIT)
        detected = time.monotonic() - started
        lost = [c for c in calls if isinstance(c.exception, ServiceUnavailable)]
        assert len(lost) == 2, [c.exception for c in calls]
        assert detected < LONG / 3, detected  # heartbeats: about 1.5 s, never the 30 s call timeout
        wait_until(lambda: states(client)[frozen.address] == "dead", "the stopped worker to be dead")
        assert {client.call("/echo").body["pid"] for _ in range(10)} == {other.pid}
        frozen.signal(signal.SIGCONT)
        # Back: alive once its handshake is done, with its full room once its first report comes.
        wait_until(lambda: any(i.address == frozen.address and i.state == "alive" and i.capacity == 10
                               for i in client.workers), "the worker to come back", timeout=15)
        parallel = start_calls(client, "/sleep", 8, SECONDS=0.3)
        gevent.joinall(parallel, timeout=WAIT, raise_error=True)
        assert frozen.pid in served_by([c.value for c in parallel])  # traffic returns to it
        print(f"SIGSTOP detected after {detected:.2f}s")
    finally:
        client.close()


def test_a_worker_busy_on_its_cpu_is_not_declared_dead(fleet: Fleet) -> None:
    hog, other = fleet.start(capacity=1), fleet.start(capacity=1)
    client = client_of(hog, other)
    try:
        cpu = gevent.spawn(client.call, "/cpu", arguments={"SECONDS": "5"})
        wait_until(lambda: any(info.inflight for info in client.workers), "the CPU-bound call in flight")
        busy = next(info.address for info in client.workers if info.inflight)
        wait_until(lambda: states(client)[busy] == "busy", "the worker to be seen busy")
        # Meanwhile the other worker serves everyone else, one at a time (its capacity).
        for _ in range(5):
            assert client.call("/echo").body["address"] != busy
        response = cpu.get(timeout=15)
        assert response.ok
        assert client.stats["lost"] == 0
        wait_until(lambda: states(client)[busy] == "alive", "the worker to be alive again")
    finally:
        client.close()


# -- saturation ---------------------------------------------------------------------------------------

def test_when_every_worker_and_the_queue_are_full_calls_fail_at_once(fleet: Fleet) -> None:
    only = fleet.start(capacity=1)
    client = client_of(only, max_queued=5)
    try:
        errors: Queue = Queue()
        client.send("/sleep", arguments={"SECONDS": "1"}, on_error=errors.put)
        for _ in range(5):
            client.send("/echo", on_error=errors.put)
        assert (client.pending, client.queued) == (6, 5)
        started = time.monotonic()
        refused = 0
        for _ in range(100):
            with pytest.raises(ServiceUnavailable, match="at capacity and 5 calls are queued"):
                client.call("/echo")
            refused += 1
        assert time.monotonic() - started < WAIT
        assert (client.pending, client.queued, refused) == (6, 5, 100)  # bounded: nothing piles up
        wait_until(lambda: client.pending == 0, "the queued calls to be served")
        assert errors.qsize() == 0
    finally:
        client.close()


def test_a_queued_call_that_never_finds_room_times_out_saying_so(fleet: Fleet) -> None:
    only = fleet.start(capacity=1)
    client = client_of(only)
    try:
        hog = start_calls(client, "/sleep", 1, SECONDS=1.5)
        wait_until(lambda: client.pending == 1, "the first call in flight")
        with pytest.raises(ServiceTimeout, match="waited its whole timeout in this client's queue"):
            client.call("/echo", timeout=0.3)
        gevent.joinall(hog, timeout=WAIT, raise_error=True)
    finally:
        client.close()


# -- drain -------------------------------------------------------------------------------------------

def test_sigterm_drains_a_worker_without_losing_a_call(fleet: Fleet) -> None:
    leaving, staying = fleet.start(capacity=8), fleet.start(capacity=8)
    client = client_of(leaving, staying)
    results: list[gevent.Greenlet] = []
    stop = False

    def load() -> None:
        while not stop:
            results.append(gevent.spawn(client.call, "/sleep", arguments={"SECONDS": "0.2"}))
            gevent.sleep(0.01)

    try:
        loader = gevent.spawn(load)
        wait_until(lambda: all(info.inflight for info in client.workers), "calls on both workers")
        leaving.signal(signal.SIGTERM)
        wait_until(lambda: states(client)[leaving.address] in ("draining", "dead"), "the drain notice")
        wait_until(lambda: leaving.process.poll() is not None, "the drained worker to exit", timeout=15)
        assert leaving.process.returncode == 0
        wait_until(lambda: states(client)[leaving.address] == "dead", "the drained worker to be gone")
        stop = True
        loader.join(timeout=WAIT)
        gevent.joinall(results, timeout=WAIT)
        failures = [c.exception for c in results if not c.successful()]
        assert failures == []
        pids = served_by([c.value for c in results])
        assert pids[leaving.pid] > 0 and pids[staying.pid] > 0
        assert client.stats["lost"] == 0 and client.stats["drains"] == 1
    finally:
        stop = True
        client.close()


# -- hosts cut off ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["down", "loss"])
def test_a_host_cut_off_mid_load_fails_over_fast_and_traffic_returns(netns_hosts: Any, how: str) -> None:
    far, near = netns_hosts(2)
    processes = [host.popen(worker_argv("tcp://0.0.0.0:7000", 8), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=ENV) for host in (far, near)]
    for process in processes:
        assert read_line(process, START_TIMEOUT) == "ready"
    far_address, near_address = f"tcp://{far.address}:7000", f"tcp://{near.address}:7000"
    client = ServiceClient([far_address, near_address], None, PASSPHRASE, timeout=LONG)
    try:
        wait_until(lambda: all(w.state == "alive" and "capacity" in w.reported for w in client.endpoints),
                   "both alive and reporting")
        calls = start_calls(client, "/sleep", 8, SECONDS=1)
        wait_until(lambda: [i.inflight for i in client.workers] == [4, 4], "calls on both hosts")
        started = time.monotonic()
        far.cut(how)
        gevent.joinall(calls, timeout=WAIT)
        detected = time.monotonic() - started
        lost = [c for c in calls if isinstance(c.exception, ServiceUnavailable)]
        assert len(lost) == 4 and all(c.successful() for c in calls if c not in lost)
        assert detected < LONG / 3, detected
        assert states(client)[far_address] == "dead"
        # Meanwhile, calls go to the host still reachable, without waiting for the cut one.
        assert {client.call("/echo").body["pid"] for _ in range(10)} == {processes[1].pid}
        assert client.workers[0].inflight == 0
        far.restore()
        wait_until(lambda: any(i.address == far_address and i.state == "alive" and i.capacity == 8
                               for i in client.workers), "the host to come back", timeout=15)
        parallel = start_calls(client, "/sleep", 12, SECONDS=0.3)
        gevent.joinall(parallel, timeout=WAIT, raise_error=True)
        assert processes[0].pid in served_by([c.value for c in parallel])  # traffic returns to it
        print(f"cut ({how}) detected after {detected:.2f}s")
    finally:
        client.close()


# -- membership by DNS ----------------------------------------------------------------------------------

def test_workers_join_and_leave_by_dns_alone_under_load(dnsmasq_required: None, fleet: Fleet) -> None:
    from brubeck.testing import DnsServer, free_port
    from brubeckservice.discovery import Resolver

    port = free_port()
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # loopback answers every 127/8 address
    workers = [fleet.start(capacity=4, address=f"tcp://{host}:{port}") for host in hosts]
    with DnsServer(a={"workers.test": hosts[:2]}) as dns:
        resolver = Resolver(dns.nameservers, dns.port, timeout=1.0)
        client = ServiceClient(f"tcp://workers.test:{port}", None, PASSPHRASE, timeout=LONG,
                               resolver=resolver, resolve_interval=0.3)
        served: Counter[int] = Counter()
        failures: list[BaseException] = []
        stop = False

        def load() -> None:
            while not stop:
                try:
                    served[client.call("/sleep", arguments={"SECONDS": "0.02"}).body["pid"]] += 1
                except Exception as exc:  # counted: the test fails on any
                    failures.append(exc)

        try:
            wait_until(lambda: {i.address for i in client.workers if i.state == "alive"}
                       == {w.address for w in workers[:2]}, "the two workers in DNS")
            loaders = [gevent.spawn(load) for _ in range(6)]
            wait_until(lambda: len(served) == 2, "calls on both")
            dns.set_records(a={"workers.test": hosts})  # a third worker joins
            wait_until(lambda: served[workers[2].pid] > 0, "calls on the worker that joined")
            assert {i.source for i in client.workers} == {f"dns tcp://workers.test:{port}"}
            dns.set_records(a={"workers.test": hosts[1:]})  # the first one leaves
            wait_until(lambda: workers[0].address not in {i.address for i in client.workers},
                       "the worker that left to be closed")
            before, total = served[workers[0].pid], sum(served.values())
            wait_until(lambda: sum(served.values()) >= total + 100, "100 more calls")
            assert served[workers[0].pid] == before  # none went to the worker that left
            stop = True
            gevent.joinall(loaders, timeout=WAIT)
            assert failures == []
        finally:
            stop = True
            client.close()
