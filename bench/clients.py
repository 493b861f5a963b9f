"""The client side of the RPC benchmarks, one process per measurement: `python -m bench.clients IMPL MODE ADDR`.

IMPL is what calls: `plain` (a blocking pyzmq DEALER with msgspec.json, no gevent: the floor), `raw` (the
same over zmq.green, with greenlets), `service` (brubeckservice's `ServiceClient`) or `zerorpc`. MODE is
the loop:

    sync        one caller, sequential calls: calls/s, p50/p99 latency (`--heartbeat S`: the
                ServiceClient's heartbeat, for benchmark 10)
    concurrent  `--concurrency` greenlets calling in a loop: calls/s, p50/p99 latency (`plain`: one thread,
                one DEALER keeping `--concurrency` calls in flight, a new one sent per reply)
    pipeline    one greenlet sends `--calls` requests without waiting, replies are counted as they come
                (`ServiceClient.send` with an on_reply callback; raw: a DEALER and a receiving greenlet)
    inflight    `--calls` calls held by the server, then released: RSS per in-flight call
                (`--nowait`: `ServiceClient.send` instead of a greenlet per `call`)
    soak        warm up, then `--calls` calls with `--concurrency` in flight: RSS before/after, growth %

`plain` has the sync and concurrent modes only. This module imports gevent and zmq.green (without monkey
patching), but the plain client never touches either: its sockets are `zmq`'s, blocking in libzmq.

The result is one JSON object on the last line of stdout. Latencies are in microseconds, RSS in bytes.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import msgspec
import zmq as plain_zmq
import zmq.green as zmq
from gevent.event import AsyncResult, Event

from bench.payload import ECHO_PATH, HOLD_PATH, PASSPHRASE, PAYLOAD, RAW_HOLD, RAW_RELEASE, RELEASE_PATH
from bench.servers import HELD_PATH, RAW_QUERY
from bench.stats import percentile

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: How long any one wait of a client may take before it gives up and reports a failure.
DEADLINE = 600.0


def rss() -> int:
    """This process's resident set size in bytes (after a full collection, so garbage does not count)."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


class Caller(Protocol):
    """One implementation of 'call the echo service with PAYLOAD and get the arguments back'."""

    def call(self) -> Any: ...

    def close(self) -> None: ...


# -- plain pyzmq (no gevent) ----------------------------------------------------------------------------


class PlainClient:
    """The floor of cases 1 and 2: a blocking pyzmq DEALER, msgspec.json both ways, an id per call.

    No gevent and no zmq.green: a call is send_multipart then recv_multipart, waiting in libzmq. A reply
    that does not come within DEADLINE fails the call (RCVTIMEO) instead of hanging the run.
    """

    def __init__(self, address: str) -> None:
        self.context = plain_zmq.Context()
        self.socket = self.context.socket(plain_zmq.DEALER)
        self.socket.setsockopt(plain_zmq.LINGER, 0)
        self.socket.setsockopt(plain_zmq.RCVTIMEO, int(DEADLINE * 1000))
        self.socket.connect(address)
        self._counter = 0

    def next_id(self) -> bytes:
        self._counter += 1
        return b"c%x" % self._counter

    def call(self) -> Any:
        """One round trip: send [id, PAYLOAD as JSON], wait for the reply, check its id, decode its body."""
        msg_id = self.next_id()
        self.socket.send_multipart([msg_id, _encode(PAYLOAD)])
        try:
            reply_id, body = self.socket.recv_multipart()
        except plain_zmq.Again:
            raise RuntimeError(f"no reply to plain call {msg_id!r} in {DEADLINE:g}s") from None
        if reply_id != msg_id:
            raise RuntimeError(f"plain reply {reply_id!r} for call {msg_id!r}")
        return _decode(body)

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()


def run_pipelined(address: str, calls: int, warmup: int, concurrency: int) -> dict[str, float]:
    """Case 2's floor: one thread, one blocking DEALER keeping `concurrency` calls in flight.

    What 100 concurrent callers cost at the least: no greenlet, no waiter per call, only a table of send
    times to match each reply to its call. Latency is from encoding a call to having decoded its reply, as
    for the other clients' calls.
    """
    client = PlainClient(address)
    _check_echo(client.call())
    _keep_in_flight(client, warmup, concurrency, None)
    latencies: array[int] = array("q")
    cpu = time.process_time()
    seconds = _keep_in_flight(client, calls, concurrency, latencies)
    figures = _latency_figures(calls, seconds, time.process_time() - cpu, latencies)
    figures["concurrency"] = concurrency
    client.close()
    return figures


def _keep_in_flight(client: PlainClient, calls: int, concurrency: int, latencies: array[int] | None) -> float:
    """Make `calls` calls, `concurrency` outstanding at a time (a new one sent for each reply received);
    returns the seconds from the first send to the last reply."""
    send = client.socket.send_multipart
    recv = client.socket.recv_multipart
    next_id = client.next_id
    clock = time.perf_counter_ns
    sent_at: dict[bytes, int] = {}
    started = clock()
    sent = min(concurrency, calls)
    for _ in range(sent):
        msg_id = next_id()
        sent_at[msg_id] = clock()
        send([msg_id, _encode(PAYLOAD)])
    for _ in range(calls):
        try:
            reply_id, body = recv()
        except plain_zmq.Again:
            raise RuntimeError(f"replies stopped coming: {len(sent_at)} in flight for {DEADLINE:g}s") from None
        _decode(body)
        done = clock()
        begun = sent_at.pop(reply_id, None)
        if begun is None:
            raise RuntimeError(f"plain reply {reply_id!r} matches no call in flight")
        if latencies is not None:
            latencies.append(done - begun)
        if sent < calls:
            sent += 1
            msg_id = next_id()
            sent_at[msg_id] = clock()
            send([msg_id, _encode(PAYLOAD)])
    return (clock() - started) / 1e9


# -- raw zmq.green ------------------------------------------------------------------------------------------


class RawClient:
    """The floor: a DEALER, msgspec.json both ways, ids to match replies, nothing else.

    `call_direct` is the sequential round trip (send, then receive on the same greenlet); `call` goes
    through a receiving greenlet and a table of waiters, which any client with many callers needs.
    """

    def __init__(self, address: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self._counter = 0
        self._waiters: dict[bytes, AsyncResult] = {}
        self._listener: gevent.Greenlet[Any, Any] | None = None

    def _next_id(self, prefix: bytes = b"c") -> bytes:
        self._counter += 1
        return b"%s%x" % (prefix, self._counter)

    def call_direct(self) -> Any:
        msg_id = self._next_id()
        self.socket.send_multipart([msg_id, _encode(PAYLOAD)])
        reply_id, body = self.socket.recv_multipart()
        if reply_id != msg_id:
            raise RuntimeError(f"raw reply {reply_id!r} for call {msg_id!r}")
        return _decode(body)

    def listen(self) -> None:
        if self._listener is None:
            self._listener = gevent.spawn(self._listen)

    def _listen(self) -> None:
        recv = self.socket.recv_multipart
        while True:
            msg_id, body = recv()
            waiter = self._waiters.pop(msg_id, None)
            if waiter is not None:
                waiter.set(_decode(body))

    def call(self, prefix: bytes = b"c") -> Any:
        msg_id = self._next_id(prefix)
        waiter: AsyncResult = AsyncResult()
        self._waiters[msg_id] = waiter
        frames = [msg_id, _encode(PAYLOAD)]
        # zmq.green lets one greenlet at a time wait in a blocking send; many callers wait in poll instead
        # (as ServiceClient does), for when more calls are queued than the socket's send HWM.
        while True:
            try:
                self.socket.send_multipart(frames, flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                self.socket.poll(1000, zmq.POLLOUT)
        return waiter.get(timeout=DEADLINE)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.kill(block=False)
        self.socket.close(linger=0)
        self.context.term()


class ServiceCaller:
    def __init__(self, address: str, heartbeat: float | None = None) -> None:
        from brubeckservice import ServiceClient
        from brubeckservice.pool import DEFAULT_HEARTBEAT

        self.client = ServiceClient(address, passphrase=PASSPHRASE, timeout=DEADLINE,
                                    heartbeat=DEFAULT_HEARTBEAT if heartbeat is None else heartbeat)

    def call(self) -> Any:
        response = self.client.call(ECHO_PATH, "request", PAYLOAD)
        if response.status_code != 200:
            raise RuntimeError(f"service answered {response.status_code} {response.status_msg}")
        return response.body

    def close(self) -> None:
        self.client.close()


class ZerorpcCaller:
    def __init__(self, address: str) -> None:
        import zerorpc

        self.client = zerorpc.Client(timeout=DEADLINE)
        self.client.connect(address)

    def call(self) -> Any:
        return self.client.echo(PAYLOAD)

    def close(self) -> None:
        self.client.close()


def make_caller(impl: str, address: str, sequential: bool, heartbeat: float | None = None) -> Caller:
    if impl == "plain":
        if not sequential:
            raise ValueError("the plain client calls one at a time: its concurrent loop is run_pipelined")
        return PlainClient(address)
    if impl == "raw":
        raw = RawClient(address)
        if sequential:
            return _DirectRaw(raw)
        raw.listen()
        return raw
    if impl == "service":
        return ServiceCaller(address, heartbeat)
    if impl == "zerorpc":
        return ZerorpcCaller(address)
    raise ValueError(f"unknown client {impl!r}")


class _DirectRaw:
    def __init__(self, raw: RawClient) -> None:
        self.raw = raw

    def call(self) -> Any:
        return self.raw.call_direct()

    def close(self) -> None:
        self.raw.close()


def _check_echo(result: Any) -> None:
    # Every implementation must really echo: a benchmark of a broken round trip measures nothing.
    subset = {key: result.get(key) for key in PAYLOAD} if isinstance(result, dict) else result
    if subset != PAYLOAD:
        raise RuntimeError(f"the echo came back different: {result!r:.200}")


# -- loops --------------------------------------------------------------------------------------------------


def _latency_figures(calls: int, seconds: float, cpu: float, latencies_ns: array[int]) -> dict[str, float]:
    ordered = sorted(latencies_ns)
    return {"calls": calls, "seconds": seconds, "rate": calls / seconds,
            "p50_us": percentile(ordered, 50) / 1000, "p99_us": percentile(ordered, 99) / 1000,
            "client_cpu_us": cpu / calls * 1e6}


def run_sync(caller: Caller, calls: int, warmup: int) -> dict[str, float]:
    _check_echo(caller.call())
    for _ in range(warmup):
        caller.call()
    latencies: array[int] = array("q")
    clock = time.perf_counter_ns
    call = caller.call
    cpu = time.process_time()
    started = clock()
    for _ in range(calls):
        begin = clock()
        call()
        latencies.append(clock() - begin)
    seconds = (clock() - started) / 1e9
    return _latency_figures(calls, seconds, time.process_time() - cpu, latencies)


def _run_workers(call: Callable[[], Any], calls: int, concurrency: int, latencies: array[int] | None) -> float:
    """`concurrency` greenlets share `calls` calls; returns the seconds from start to the last reply."""
    remaining = [calls]
    clock = time.perf_counter_ns

    def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            begin = clock()
            call()
            if latencies is not None:
                latencies.append(clock() - begin)

    started = clock()
    workers = [gevent.spawn(worker) for _ in range(concurrency)]
    gevent.joinall(workers, timeout=DEADLINE, raise_error=True)
    if remaining[0] > 0 or not all(w.dead for w in workers):
        raise RuntimeError("concurrent callers did not finish in time")
    return (clock() - started) / 1e9


def run_concurrent(caller: Caller, calls: int, warmup: int, concurrency: int) -> dict[str, float]:
    _check_echo(caller.call())
    _run_workers(caller.call, warmup, concurrency, None)
    latencies: array[int] = array("q")
    cpu = time.process_time()
    seconds = _run_workers(caller.call, calls, concurrency, latencies)
    figures = _latency_figures(calls, seconds, time.process_time() - cpu, latencies)
    figures["concurrency"] = concurrency
    return figures


def run_pipeline(impl: str, address: str, calls: int, warmup: int) -> dict[str, float]:
    """Send `calls` requests from one greenlet without waiting; time until the last reply was handled."""
    if impl == "service":
        return _pipeline_service(address, calls, warmup)
    if impl == "raw":
        return _pipeline_raw(address, calls, warmup)
    raise ValueError(f"pipeline has no {impl!r} client")


#: A pipelined burst whose replies stop coming for this long has lost some: report it, do not hang.
STALL = 10.0


def _await_replies(done: Event, received: list[int], count: int) -> None:
    seen = -1
    while not done.wait(timeout=STALL):
        if received[0] == seen:
            raise RuntimeError(f"replies stopped coming: {count - received[0]} of {count} lost")
        seen = received[0]


def _pipeline_service(address: str, calls: int, warmup: int) -> dict[str, float]:
    from brubeckservice import ServiceClient, ServiceResponse

    # Every send is outstanding at once: the client's queue for calls beyond the worker's room must hold them.
    client = ServiceClient(address, passphrase=PASSPHRASE, timeout=DEADLINE, max_queued=10_000_000)
    received = [0, 0]  # replies, replies that were not 200
    done = Event()
    target = [0]

    def on_reply(response: ServiceResponse) -> None:
        received[0] += 1
        if response.status_code != 200:
            received[1] += 1
        if received[0] >= target[0]:
            done.set()

    def burst(count: int) -> float:
        received[0] = 0
        target[0] = count
        done.clear()
        started = time.perf_counter()
        for _ in range(count):
            client.send(ECHO_PATH, "request", PAYLOAD, on_reply=on_reply)
        _await_replies(done, received, count)
        return time.perf_counter() - started

    _check_echo(client.call(ECHO_PATH, "request", PAYLOAD).body)
    burst(warmup)
    cpu = time.process_time()
    seconds = burst(calls)
    cpu = time.process_time() - cpu
    client.close()
    if received[1]:
        raise RuntimeError(f"{received[1]} replies were errors")
    return {"calls": calls, "seconds": seconds, "rate": calls / seconds, "client_cpu_us": cpu / calls * 1e6}


def _pipeline_raw(address: str, calls: int, warmup: int) -> dict[str, float]:
    raw = RawClient(address)
    _check_echo(raw.call_direct())
    received = [0]
    done = Event()
    target = [0]

    def receive() -> None:
        recv = raw.socket.recv_multipart
        while True:
            _msg_id, body = recv()
            _decode(body)
            received[0] += 1
            if received[0] >= target[0]:
                done.set()

    receiver = gevent.spawn(receive)

    def burst(count: int) -> float:
        received[0] = 0
        target[0] = count
        done.clear()
        send = raw.socket.send_multipart
        started = time.perf_counter()
        for _ in range(count):
            send([raw._next_id(), _encode(PAYLOAD)])
        _await_replies(done, received, count)
        return time.perf_counter() - started

    burst(warmup)
    cpu = time.process_time()
    seconds = burst(calls)
    cpu = time.process_time() - cpu
    receiver.kill(block=False)
    raw.close()
    return {"calls": calls, "seconds": seconds, "rate": calls / seconds, "client_cpu_us": cpu / calls * 1e6}


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        gevent.sleep(delay)
        delay = min(delay * 2, 0.05)


def run_inflight(impl: str, address: str, calls: int, warmup: int, nowait: bool) -> dict[str, float]:
    """RSS with `calls` calls in flight (held by the server) minus RSS before, per call."""
    if impl == "service":
        return _inflight_service(address, calls, warmup, nowait)
    if impl == "raw" and not nowait:
        return _inflight_raw(address, calls, warmup)
    raise ValueError(f"inflight has no {impl!r} client{' (nowait)' if nowait else ''}")


def _inflight_figures(calls: int, before: int, during: int, after: int, seconds: float) -> dict[str, float]:
    return {"calls": calls, "rss_before": before, "rss_inflight": during, "rss_after": after,
            "bytes_per_call": (during - before) / calls, "seconds": seconds}


def _inflight_service(address: str, calls: int, warmup: int, nowait: bool) -> dict[str, float]:
    from brubeckservice import ServiceClient

    client = ServiceClient(address, passphrase=PASSPHRASE, timeout=DEADLINE, max_queued=10_000_000)
    # A small first round connects and runs every code path once; the measured round follows. (A first
    # round at full scale would leave its freed memory to the second, hiding the cost being measured.)
    _hold_round(client, warmup, nowait)
    figures = _hold_round(client, calls, nowait)
    client.close()
    return figures


def _hold_round(client: Any, count: int, nowait: bool) -> dict[str, float]:
    """`count` calls the service holds: RSS before, while all are held, and after their release."""
    from brubeckservice import ServiceResponse

    replies = [0]

    def on_reply(response: ServiceResponse) -> None:
        if response.status_code == 200:
            replies[0] += 1

    def one_call() -> None:
        on_reply(client.call(HOLD_PATH, "request", PAYLOAD))

    def held() -> int:
        number: int = client.call(HELD_PATH, "request", {}).body["held"]
        return number

    before = rss()
    started = time.perf_counter()
    callers: list[gevent.Greenlet[Any, Any]] = []
    if nowait:
        for _ in range(count):
            client.send(HOLD_PATH, "request", PAYLOAD, on_reply=on_reply)
    else:
        callers = [gevent.spawn(one_call) for _ in range(count)]
    _wait_until(lambda: client.pending >= count, "calls to be sent")
    _wait_until(lambda: held() >= count, "the service to hold every call")
    seconds = time.perf_counter() - started
    during = rss()
    client.call(RELEASE_PATH, "request", {})
    gevent.joinall(callers, timeout=DEADLINE)
    _wait_until(lambda: replies[0] >= count, "every held reply")
    return _inflight_figures(count, before, during, rss(), seconds)


def _inflight_raw(address: str, calls: int, warmup: int) -> dict[str, float]:
    raw = RawClient(address)
    raw.listen()
    _raw_hold_round(raw, warmup)
    figures = _raw_hold_round(raw, calls)
    raw.close()
    return figures


def _raw_hold_round(raw: RawClient, count: int) -> dict[str, float]:
    def held() -> bool:
        number: int = raw.call(RAW_QUERY)
        return number >= count

    before = rss()
    started = time.perf_counter()
    callers = [gevent.spawn(raw.call, RAW_HOLD) for _ in range(count)]
    _wait_until(held, "the server to hold every call")
    seconds = time.perf_counter() - started
    during = rss()
    raw.call(RAW_RELEASE)
    gevent.joinall(callers, timeout=DEADLINE, raise_error=True)
    return _inflight_figures(count, before, during, rss(), seconds)


def run_soak(caller: Caller, calls: int, warmup: int, concurrency: int) -> dict[str, float]:
    """RSS after a warm-up, then after `calls` more calls with `concurrency` in flight."""
    _check_echo(caller.call())
    _run_workers(caller.call, warmup, concurrency, None)
    before = rss()
    peak = [before]

    def sample() -> None:
        while True:
            gevent.sleep(1.0)
            peak[0] = max(peak[0], rss())

    sampler = gevent.spawn(sample)
    cpu = time.process_time()
    seconds = _run_workers(caller.call, calls, concurrency, None)
    cpu = time.process_time() - cpu
    sampler.kill()
    after = rss()
    return {"calls": calls, "seconds": seconds, "rate": calls / seconds, "client_cpu_us": cpu / calls * 1e6,
            "rss_before": before,
            "rss_after": after, "rss_peak": max(peak[0], after), "growth_pct": 100.0 * (after - before) / before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("impl", choices=["plain", "raw", "service", "zerorpc"])
    parser.add_argument("mode", choices=["sync", "concurrent", "pipeline", "inflight", "soak"])
    parser.add_argument("address")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--nowait", action="store_true", help="inflight: ServiceClient.send, not call")
    parser.add_argument("--heartbeat", type=float, help="sync, concurrent, soak: the ServiceClient's heartbeat "
                                                         "in seconds (default: the client's, 0.5)")
    args = parser.parse_args(argv)
    if args.heartbeat is not None and (args.impl != "service" or args.mode in ("pipeline", "inflight")):
        parser.error("--heartbeat is for the service client's sync, concurrent and soak modes")
    if args.impl == "plain" and args.mode not in ("sync", "concurrent"):
        parser.error("the plain client has the sync and concurrent modes only")

    figures: dict[str, float]
    if args.impl == "plain" and args.mode == "concurrent":
        figures = run_pipelined(args.address, args.calls, args.warmup, args.concurrency)
    elif args.mode == "pipeline":
        figures = run_pipeline(args.impl, args.address, args.calls, args.warmup)
    elif args.mode == "inflight":
        figures = run_inflight(args.impl, args.address, args.calls, args.warmup, args.nowait)
    else:
        caller = make_caller(args.impl, args.address, sequential=args.mode == "sync", heartbeat=args.heartbeat)
        if args.mode == "sync":
            figures = run_sync(caller, args.calls, args.warmup)
        elif args.mode == "concurrent":
            figures = run_concurrent(caller, args.calls, args.warmup, args.concurrency)
        else:
            figures = run_soak(caller, args.calls, args.warmup, args.concurrency)
        caller.close()
    sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
