"""Run N worker processes of one service app on this host: start them, restart the ones that die, roll them
one at a time on SIGHUP, stop them all on SIGTERM or SIGINT.

No broker and no proxy (docs/protocol.md §8): each worker binds an address of its own and clients connect to
every worker directly. A worker is `python FILE`, an ordinary app script, told by its environment which
address to bind:

    BRUBECK_SERVICE_BIND     the address this worker binds (ServiceConnection uses it instead of its own)
    BRUBECK_SERVICE_WORKERS  every worker's address, comma-separated, as clients reach them (in PONG `workers`)
    BRUBECK_WORKER_INDEX     this worker's number, 0 to N-1

Addresses (`worker_addresses`): from `--bind ADDR`, worker i binds

    tcp://HOST:PORT  ->  tcp://HOST:(PORT+i)      worker 0 on PORT itself
    ipc://PATH       ->  ipc://PATH for worker 0, ipc://PATH.i for worker i > 0

so a client given ADDR reaches worker 0, and from its PONG all the others. A relative ipc PATH is made
absolute here (the app may change directory), and a tcp HOST that is a wildcard (`*`, `0.0.0.0`, `::`) is
advertised as `tcp://:PORT`, "the host you reached me by". Without `--bind`, the single worker binds the
app's own address and is given neither BIND nor WORKERS.

Strategy: one thread and one loop, no gevent. Signal handlers only record the signal, and
`signal.set_wakeup_fd` wakes the loop's `select`; SIGCHLD makes a death one of those wake-ups. Everything
else is state the loop looks at after each wake-up, with the next deadline as its timeout: a restart due
after a back-off, a SIGKILL due after a grace period, a new worker to probe until its address accepts
connections, the next step of a rolling restart.

Orphans: on Linux each worker asks the kernel (prctl PR_SET_PDEATHSIG) for SIGTERM when the supervisor
dies, even by SIGKILL, so it drains and exits as on a normal stop. Workers run in their own process group:
a Ctrl-C in the terminal reaches only the supervisor, which stops them in order.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType

from brubeckservice.addresses import (
    BIND_ENV,
    INDEX_ENV,
    WORKERS_ENV,
    accepts,
    advertised_address,
    holder,
    worker_addresses,
)
from brubeckservice.errors import ServiceError

log = logging.getLogger("brubeckservice.supervisor")


#: Seconds past the grace period a stopping worker gets before SIGKILL.
KILL_MARGIN = 5.0
#: Seconds between two probes of a new worker's address.
PROBE_INTERVAL = 0.05
#: Seconds after which a worker whose address does not accept connections yet is reported.
READY_WARNING = 30.0


class SupervisorError(ServiceError):
    """The supervisor cannot run (an address is already served, for one); the message says why."""


# -- processes -------------------------------------------------------------------------------------------


def describe_exit(returncode: int) -> str:
    """'exit status 1', 'killed by SIGKILL': what a Popen returncode means."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the worker SIGTERM when its parent dies; None elsewhere. libc is
    loaded here, in the parent: a forked child should call, not load."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _workers(count: int) -> str:
    return "1 worker" if count == 1 else f"{count} workers"


class Backoff:
    """Restart delays: `initial`, doubling up to `maximum`; back to `initial` after a run of `stable` s."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, stable: float = 10.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable = stable
        self._next = initial

    def delay(self, uptime: float) -> float:
        """The delay before restarting a worker that ran `uptime` seconds."""
        if uptime >= self.stable:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay


class Worker:
    """One worker slot: its address, its current process (if any), and what the loop waits for about it."""

    def __init__(self, index: int, address: str | None, backoff: Backoff) -> None:
        self.index = index
        self.address = address  # None: the app's own, which we cannot probe
        self.backoff = backoff
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.ready = False  # its address accepts connections
        self.warned = False  # it was reported for not accepting connections yet
        self.restart_at: float | None = None  # when to start it again after a death
        self.kill_at: float | None = None  # when to SIGKILL it, once told to stop
        self.rolling = False  # told to stop by a rolling restart: start its replacement at once

    @property
    def alive(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def __repr__(self) -> str:
        return f"<Worker {self.index} pid={self.pid} {self.address or 'own address'} ready={self.ready}>"


# -- the supervisor --------------------------------------------------------------------------------------


class Supervisor:
    """Runs `workers` processes of the app script `app` (see the module's docstring), until `stop()`,
    SIGTERM or SIGINT. `bind` is required for more than one worker. `grace` is how long a stopping worker
    may drain before it is killed (plus `kill_margin`)."""

    def __init__(self, app: str | Path, workers: int = 1, bind: str | None = None, *, grace: float = 30.0,
                 app_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 python: str = sys.executable, kill_margin: float = KILL_MARGIN,
                 backoff: Callable[[], Backoff] = Backoff, ready_warning: float = READY_WARNING) -> None:
        if bind is None and workers != 1:
            raise ValueError(f"{workers} workers need a bind address: each worker binds one of its own")
        addresses: list[str | None] = list(worker_addresses(bind, workers)) if bind is not None else [None]
        self.app = str(app)
        self.app_args = list(app_args)
        self.python = python
        self.grace = grace
        self.kill_margin = kill_margin
        self.ready_warning = ready_warning
        self.env = dict(os.environ if env is None else env)
        self.workers = [Worker(i, address, backoff()) for i, address in enumerate(addresses)]
        self.advertised = [advertised_address(a) for a in addresses if a is not None]
        self.stopping = False
        self._requests: deque[int] = deque()  # signals (or stop()/roll() calls) not yet acted on
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._preexec = _die_with_parent()
        self._signalled = False  # whether SIGCHLD reaches us (only in the main thread)
        # The rolling restart: workers still to roll, the one being replaced now (and its old pid).
        self._roll: deque[Worker] = deque()
        self._rolling: Worker | None = None
        self._rolled_pid = 0
        self._roll_again = False  # a SIGHUP came during a roll: roll everyone once more after it
        self._roll_blocked = False  # the roll waits for another worker to serve (reported once)

    def __repr__(self) -> str:
        return f"Supervisor({self.app!r}, workers={len(self.workers)})"

    # -- asked from outside ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every worker and return from `run()` (what SIGTERM does). Callable from any thread."""
        self._request(signal.SIGTERM)

    def roll(self) -> None:
        """Restart the workers one at a time (what SIGHUP does). Callable from any thread."""
        self._request(signal.SIGHUP)

    def _request(self, signum: int) -> None:
        self._requests.append(signum)
        with suppress(OSError):  # a full socket wakes the loop anyway; a closed one: run() has returned
            self._wake_w.send(b"\0")

    # -- the loop -------------------------------------------------------------------------------------

    def check_addresses(self) -> None:
        """Raise SupervisorError when another process serves one of the workers' addresses already (a
        worker would fail to bind it and be restarted forever)."""
        for worker in self.workers:
            if worker.address is not None:
                problem = holder(worker.address)
                if problem is not None:
                    raise SupervisorError(problem)

    def run(self) -> int:
        """Start the workers and look after them until told to stop; 0 once every one has exited. Raises
        SupervisorError when an address is already served (see `check_addresses`). Call it once."""
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            self.check_addresses()
            with self._signal_handlers():
                log.info("starting %s of %s (pid %d)", _workers(len(self.workers)), self.app, os.getpid())
                for worker in self.workers:
                    self._start(worker)
                while not (self.stopping and not any(w.alive for w in self.workers)):
                    if selector.select(self._timeout()):
                        self._drain_wakeups()
                    self._act_on_requests()
                    self._reap()
                    self._tick()
        finally:
            selector.close()
            self._kill_leftovers()
            self._wake_r.close()
            self._wake_w.close()
        log.info("all workers stopped; exiting")
        return 0

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # no signals here: stop() and roll() still work, deaths are found by polling
            return
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)

        def record(signum: int, frame: FrameType | None) -> None:
            if signum != signal.SIGCHLD:
                self._requests.append(signum)

        previous = {sig: signal.signal(sig, record) for sig in signals}
        old_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signalled = True
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._signalled = False

    def _drain_wakeups(self) -> None:
        with suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _timeout(self) -> float | None:
        """Seconds until the loop has something to do without being woken: a restart or a SIGKILL due, a
        new worker to probe. None: nothing until a signal."""
        now = time.monotonic()
        due = [w.kill_at for w in self.workers if w.kill_at is not None and w.alive]
        if not self.stopping:
            due += [w.restart_at for w in self.workers if w.restart_at is not None]
            if any(w.alive and not w.ready for w in self.workers):
                due.append(now + PROBE_INTERVAL)
        if not self._signalled:
            due.append(now + 0.1)
        return max(0.0, min(due) - now) if due else None

    def _act_on_requests(self) -> None:
        while self._requests:
            signum = self._requests.popleft()
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                self._start_roll(name)
            else:
                self._shut_down(name)

    # -- starting and stopping ------------------------------------------------------------------------

    def _start(self, worker: Worker) -> None:
        env = {**self.env, INDEX_ENV: str(worker.index)}
        if worker.address is not None:
            env[BIND_ENV] = worker.address
            env[WORKERS_ENV] = ",".join(self.advertised)
        worker.restart_at = None
        try:
            process = subprocess.Popen(  # noqa: S603 - the app the user asked us to run
                [self.python, self.app, *self.app_args], env=env, stdin=subprocess.DEVNULL,
                preexec_fn=self._preexec, process_group=0)  # noqa: PLW1509 - no threads fork here
        except OSError as exc:
            delay = worker.backoff.delay(0.0)
            log.error("worker %d could not start: %s; retrying in %gs", worker.index, exc, delay)
            worker.restart_at = time.monotonic() + delay
            return
        worker.process = process
        worker.started = time.monotonic()
        worker.warned = False
        worker.ready = worker.address is None
        if worker.ready:
            log.info("worker %d (pid %d) serving the app's own address", worker.index, process.pid)

    def _terminate(self, worker: Worker) -> None:
        if worker.process is not None:
            with suppress(ProcessLookupError):
                worker.process.terminate()
            worker.kill_at = time.monotonic() + self.grace + self.kill_margin

    def _shut_down(self, reason: str) -> None:
        if self.stopping:
            log.info("%s again: killing the %s still running now", reason, _workers(sum(w.alive for w in self.workers)))
            for worker in self.workers:
                worker.kill_at = time.monotonic() if worker.alive else None
            return
        self.stopping = True
        self._roll.clear()
        self._rolling = None
        self._roll_again = False
        running = [w for w in self.workers if w.alive]
        log.info("%s: stopping %s (each drains for up to %gs)", reason, _workers(len(running)), self.grace)
        for worker in self.workers:
            worker.restart_at = None
            worker.rolling = False
            self._terminate(worker)

    def _kill_leftovers(self) -> None:
        """Only after an error in the loop itself: no worker outlives its supervisor."""
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                log.error("worker %d (pid %d) still running as the supervisor exits: killing it",
                          worker.index, worker.pid)
                worker.process.kill()
                worker.process.wait()

    # -- what the loop checks after each wake-up -----------------------------------------------------

    def _reap(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None or process.poll() is None:
                continue
            how = describe_exit(process.returncode)
            worker.process = None
            worker.ready = False
            worker.kill_at = None
            if self.stopping:
                log.info("worker %d (pid %d) stopped: %s", worker.index, process.pid, how)
            elif worker.rolling:
                worker.rolling = False
                log.info("rolling restart: worker %d (pid %d) stopped: %s; starting its replacement",
                         worker.index, process.pid, how)
                self._start(worker)
            else:
                delay = worker.backoff.delay(now - worker.started)
                log.warning("worker %d (pid %d) died: %s; restarting in %gs", worker.index, process.pid, how,
                            delay)
                worker.restart_at = now + delay

    def _tick(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.kill_at is not None and now >= worker.kill_at and worker.process is not None:
                log.warning("worker %d (pid %d) did not stop within %gs: SIGKILL", worker.index, worker.pid,
                            self.grace + self.kill_margin)
                with suppress(ProcessLookupError):
                    worker.process.kill()
                worker.kill_at = None
        if self.stopping:
            return
        for worker in self.workers:
            if worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)
            elif worker.alive and not worker.ready and worker.address is not None:
                self._probe(worker, now)
        self._advance_roll()

    def _probe(self, worker: Worker, now: float) -> None:
        if worker.address is not None and accepts(worker.address, timeout=PROBE_INTERVAL * 4):
            worker.ready = True
            log.info("worker %d (pid %d) serving %s", worker.index, worker.pid, worker.address)
        elif not worker.warned and now - worker.started > self.ready_warning:
            worker.warned = True
            log.warning("worker %d (pid %d) started %gs ago and %s accepts no connection yet (does the app's "
                        "ServiceConnection honour %s?)", worker.index, worker.pid, self.ready_warning,
                        worker.address, BIND_ENV)

    # -- the rolling restart --------------------------------------------------------------------------

    def _start_roll(self, reason: str) -> None:
        if self.stopping:
            return
        if self._roll or self._rolling is not None:
            log.info("%s during a rolling restart: every worker rolls once more after this one", reason)
            self._roll_again = True
            return
        log.info("%s: rolling restart of %s, one at a time", reason, _workers(len(self.workers)))
        self._roll.extend(self.workers)
        self._roll_blocked = False

    def _advance_roll(self) -> None:
        """Stop the next worker once the one before serves again and every other worker serves, so that no
        more than one is ever down on account of the roll."""
        while True:
            current = self._rolling
            if current is not None:
                if current.rolling or not current.ready:
                    return  # still draining, or its replacement does not accept connections yet
                log.info("rolling restart: worker %d replaced (pid %d -> pid %d)", current.index, self._rolled_pid,
                         current.pid)
                self._rolling = None
                if not self._roll:
                    log.info("rolling restart done")
                    if self._roll_again:
                        self._roll_again = False
                        self._start_roll("SIGHUP")
            if not self._roll:
                return
            upcoming = self._roll[0]
            waiting = [w for w in self.workers if w is not upcoming and not w.ready]
            if waiting:
                if not self._roll_blocked:
                    self._roll_blocked = True
                    log.info("rolling restart waits for worker %d to serve before stopping worker %d",
                             waiting[0].index, upcoming.index)
                return
            self._roll_blocked = False
            self._roll.popleft()
            self._rolling = upcoming
            self._rolled_pid = upcoming.pid
            step = len(self.workers) - len(self._roll)
            if upcoming.process is None:  # dead and waiting out its back-off: its restart is this step
                log.info("rolling restart %d/%d: worker %d is down; starting it now", step, len(self.workers),
                         upcoming.index)
                self._start(upcoming)
            else:
                log.info("rolling restart %d/%d: stopping worker %d (pid %d)", step, len(self.workers),
                         upcoming.index, upcoming.pid)
                upcoming.rolling = True
                self._terminate(upcoming)
