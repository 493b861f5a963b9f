"""The harness of the hostile-peer suite (test_hostile.py): a service in a process of its own, measured from
outside; a legitimate caller that never stops calling; and the rounds attacks are run in.

- `Target` runs apps/hostile_target.py and reads what an operator would: its resident memory now and at
  its peak (VmRSS, VmHWM in /proc/PID/status), its open file descriptors (/proc/PID/fd) and its log
  (stderr, written to a file).
- `Caller` calls /echo through a real ServiceClient in a loop, each call with data of its own that the
  reply must carry back, and keeps every failure.
- `attack(caller, one_round)` runs rounds of an attack until the caller has completed `calls` calls since
  the attack began, and fails if too many rounds pass first: calls went on completing *while* it ran.
- `answers_until_pong` sends a signed PING on an attacking connection and returns what came back before
  its PONG: one connection keeps its order, so the service had then read everything sent before the PING,
  and nothing else is on its way back. That PING signs the connection, though: a connection that never
  sent a correctly signed message is closed by the service at its REFUSED_BUDGET-th refused message
  (brubeckservice/admission.py), and one that signed never is. An attacker without the key ends a round
  with `answers_until_err` instead: a message of an unknown kind (`barrier`) is refused with ERR 400, which
  comes back after the answers to everything sent before it, and leaves the connection unsigned.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import gevent
import zmq.green as zmq

from brubeckservice import envelope
from brubeckservice.admission import REFUSED_BUDGET
from brubeckservice.client import ServiceClient
from brubeckservice.clock import now_ms
from brubeckservice.errors import ServiceError
from brubeckservice.signing import Signer
from tests.brubeckservice.helpers import PASSPHRASE, WAIT, read_line

APP = Path(__file__).parent / "apps" / "hostile_target.py"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
START_TIMEOUT = 30.0  # a fresh Python importing gevent and zmq, on a loaded machine
SIGNER = Signer(PASSPHRASE)
FORGER = Signer("not the passphrase")
MIB = 1 << 20
KIB = 1 << 10
#: Calls the legitimate caller must complete while each attack runs.
CALLS_DURING = 20
#: A call timeout no legitimate call should come near: a failure is a failure, not a slow machine.
PATIENT = 20.0
#: Seconds between two calls of the caller: a steady load that leaves the two cores to the attack.
PACE = 0.005
#: Messages a connection that never signed gets answered at most: the service closes it at the next refusal.
KEYLESS_ANSWERS = REFUSED_BUDGET - 1

_ids = itertools.count(1)
Context: TypeAlias = "zmq.Context[zmq.Socket[bytes]]"
Socket: TypeAlias = "zmq.Socket[bytes]"


def unique(prefix: str) -> bytes:
    """A correlation id never used before in this test run (so a PING's MAC is new too)."""
    return f"{prefix}-{next(_ids)}-{os.urandom(3).hex()}".encode()


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Target:
    """apps/hostile_target.py, started and ready: `python hostile_target.py tcp://127.0.0.1:* [REMEMBERED]`.

    `fd_limit` starts it with that RLIMIT_NOFILE (through the shell's `ulimit -n`, which then execs it)."""

    def __init__(self, log_path: Path, *args: str, fd_limit: int | None = None) -> None:
        self.log_path = log_path
        argv = [sys.executable, str(APP), "tcp://127.0.0.1:*", *args]
        if fd_limit is not None:
            argv = ["sh", "-c", f'ulimit -n {int(fd_limit)} && exec "$0" "$@"', *argv]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, env=ENV)
        ready, self.address = read_line(self.process, START_TIMEOUT).split()
        assert ready == "ready"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mib(self) -> float:
        return _status_kib(self.pid, "VmRSS") / KIB

    def peak_mib(self) -> float:
        """The most resident memory it ever had (VmHWM): a peak no sampling can miss."""
        return _status_kib(self.pid, "VmHWM") / KIB

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        """SIGINT (it closes, writing the log summaries still owed); SIGKILL if it does not exit. Returns its
        exit status, or None when it had to be killed."""
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


def dealer(context: Context, address: str, routing_id: bytes | None = None, **options: int) -> Socket:
    """A bare DEALER connected to `address` (options: zmq option name -> value, e.g. RCVHWM=1)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if routing_id is not None:
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def keyless(context: Context, address: str, **options: int) -> Socket:
    """A DEALER of an attacker without the key that does not come back once the service closed it (no
    reconnecting: what reaches the service, and so every counter, is then exactly what a test sent)."""
    return dealer(context, address, None, RECONNECT_IVL=-1, **options)


def barrier(msg_id: bytes) -> list[bytes]:
    """A message of a kind no service accepts: answered with ERR 400 `msg_id` once everything sent before it
    on the same connection has been read. It takes no key, and counts as refused (`malformed`)."""
    return [envelope.MARKER, b"WHAT", msg_id, b"{}", b"{}", bytes(32)]


def answers_until_err(sock: Socket, msg_id: bytes, timeout: float = WAIT) -> list[envelope.Envelope]:
    """Every message that came back on `sock` before the ERR for `msg_id` (see `barrier`)."""
    answers: list[envelope.Envelope] = []
    deadline = time.monotonic() + timeout
    while True:
        if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            raise AssertionError(f"no ERR for {msg_id!r} within {timeout}s ({len(answers)} answers before)")
        env = envelope.parse_envelope(sock.recv_multipart())
        if env.kind == envelope.ERR and env.msg_id == msg_id:
            return answers
        answers.append(env)


def answers_until_pong(sock: Socket, timeout: float = WAIT) -> list[envelope.Envelope]:
    """PING through `sock`; return every message that came back before its PONG."""
    probe = unique("probe")
    sock.send_multipart(envelope.build_ping(SIGNER, probe, now_ms()))
    answers: list[envelope.Envelope] = []
    deadline = time.monotonic() + timeout
    while True:
        if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            raise AssertionError(f"no PONG within {timeout}s ({len(answers)} answers before)")
        env = envelope.parse_envelope(sock.recv_multipart())
        if env.kind == envelope.PONG and env.msg_id == probe:
            return answers
        answers.append(env)


def pong_info(sock: Socket, timeout: float = PATIENT) -> dict[str, Any]:
    """The PONG of a PING through `sock`, which must be the first thing back."""
    probe = unique("stats")
    sock.send_multipart(envelope.build_ping(SIGNER, probe, now_ms()))
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no PONG within {timeout}s")
    env = envelope.parse_envelope(sock.recv_multipart())
    assert (env.kind, env.msg_id) == (envelope.PONG, probe), env
    _, info = envelope.parse_control(env, SIGNER, now_ms(), 30_000)
    assert isinstance(info, dict)
    return info


def stats_of(sock: Socket) -> Counter[str]:
    """The service's counters (PONG `stats`)."""
    return Counter(pong_info(sock)["stats"])


def error_status(env: envelope.Envelope) -> int:
    """The status of an ERR the service sent."""
    assert env.kind == envelope.ERR, env
    header, _ = envelope.parse_control(env, None, now_ms(), 30_000)
    return header.status


def size(env: envelope.Envelope) -> int:
    """Bytes of an answer on the wire (its six frames)."""
    return len(envelope.MARKER) + len(env.kind) + len(env.msg_id) + len(env.header) + len(env.body) + len(env.mac)


class Caller:
    """A legitimate caller: `/echo` through `client` in a loop, each reply checked, until `stop()`."""

    def __init__(self, client: ServiceClient, name: str = "legit") -> None:
        self.client = client
        self.name = name
        self.ok = 0
        self.failures: list[str] = []
        self.completed_at: list[float] = []
        self.greenlet: gevent.Greenlet[[], None] = gevent.spawn(self._run)

    def _run(self) -> None:
        for number in itertools.count(1):
            data = f"{self.name}-{number}"
            try:
                response = self.client.call("/echo", arguments={"RETURN_DATA": data})
            except ServiceError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
            else:
                if response.status_code == 200 and response.body == {"RETURN_DATA": data}:
                    self.ok += 1
                    self.completed_at.append(time.monotonic())
                else:
                    self.failures.append(f"wrong reply {response.status_code} {response.body!r:.80}")
            gevent.sleep(PACE)

    def wait_for(self, calls: int, timeout: float = PATIENT) -> None:
        """Until `calls` more calls have completed (fails after `timeout` s)."""
        target = self.ok + calls
        deadline = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.ok - target + calls} of {calls} calls in {timeout}s; "
                                     f"failures: {self.failures[:3]}")
            gevent.sleep(0.01)

    def longest_gap(self, since: float) -> float:
        """The longest time between two completed calls after `since` (a time.monotonic() value)."""
        times = [since, *(t for t in self.completed_at if t >= since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def stop(self) -> None:
        self.greenlet.kill(block=True, timeout=WAIT)


def attack(caller: Caller, one_round: Callable[[int], None], *, max_rounds: int,
           calls: int = CALLS_DURING, min_rounds: int = 1) -> int:
    """Run `one_round(n)` for n = 0, 1, ... until `caller` completed `calls` calls since the first round, and at
    least `min_rounds` rounds ran; return how many rounds ran. Fails when `max_rounds` pass before the calls
    completed: the attack kept legitimate calls from completing.

    A round should end by waiting for the service to have read it (`answers_until_pong`, or `answers_until_err`
    on a connection without the key), so that rounds go at the service's pace and what is sent stays bounded."""
    start = caller.ok
    rounds = 0
    while caller.ok < start + calls or rounds < min_rounds:
        assert rounds < max_rounds, (f"{caller.ok - start} legitimate calls completed in {rounds} rounds of the "
                                     f"attack; failures: {caller.failures[:3]}")
        one_round(rounds)
        rounds += 1
        gevent.sleep(0.001)  # (the caller's turn)
    return rounds


def assert_log_bounded(text: str, limit: int = 16 * KIB) -> None:
    """The service's log after an attack: small, no line over 1 KiB, and no traceback."""
    assert "Traceback" not in text, text[-3000:]
    assert len(text.encode()) < limit, f"{len(text.encode())} bytes of log:\n{text[:3000]}"
    longest = max(text.splitlines(), key=len, default="")
    assert len(longest.encode()) < KIB, longest[:300]
