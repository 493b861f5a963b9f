"""Run a real DNS server for tests: dnsmasq on 127.0.0.1, serving the records the test sets and no others.

    with DnsServer(a={"w.test": ["10.0.0.5", "fd00::5"]}, srv=[("_w._tcp.test", "w.test", 6000)]) as dns:
        Resolver(dns.nameservers, dns.port).resolve("tcp://w.test:6000")
        dns.set_records(a={"w.test": ["10.0.0.6"]})   # the next query sees it

Strategy: write a ``dnsmasq.conf`` and a hosts file into a working directory and run ``dnsmasq
--no-daemon`` (no fork, no pid file, no change of user, so the process we spawn is the server) on a free
port. The config keeps it from everything outside that directory: ``no-resolv`` (no upstream from
``/etc/resolv.conf``), ``no-hosts`` (no ``/etc/hosts``), ``local=/#/`` (every name is local, so a name the
test did not set is NXDOMAIN rather than REFUSED for want of an upstream), ``local-ttl=0`` (a record changed
mid-test is seen by the next query of any resolver that honours TTLs).

Where the records live, and how a change reaches the running server:

- A and AAAA records (``a``, one name to IPv4 and IPv6 addresses) are lines of the hosts file
  (``addn-hosts``), which dnsmasq re-reads on SIGHUP: the server keeps answering throughout.
- SRV and CNAME records are ``srv-host`` and ``cname`` lines of the config, which dnsmasq reads only at start:
  a change restarts it on the same port, and a query sent during the restart goes unanswered.

Either way :meth:`DnsServer.set_records` returns only once the server answers the new data. Each version of
the records carries a sentinel name of its own (``generation-N.TOKEN.dnsserver.invalid``, TOKEN random for each
server, in the hosts file, read with the rest of it): when the server knows it, it has read that version.

dnsmasq comes from Debian's ``dnsmasq-base`` (``/usr/sbin/dnsmasq``, which a non-root ``PATH`` may lack;
both are looked in). Without it :meth:`DnsServer.start` raises :class:`DnsServerError`; see
:func:`dnsmasq_available`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import dns.exception
import dns.message
import dns.rcode

from brubeck.testing.ports import free_port

__all__ = ["DnsServer", "DnsServerError", "dnsmasq_available", "dnsmasq_path"]

DNSMASQ = "dnsmasq"
HOST = "127.0.0.1"

_CONFIG = "dnsmasq.conf"
_HOSTS = "hosts"
_LOG = "dnsmasq.log"
_SENTINEL = "generation-{}.{}.dnsserver.invalid"  # version, server
# A name dnsmasq accepts in a hosts file and a config line: labels of letters, digits, '-' and '_'.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")

# Seconds between readiness probes (doubling up to the cap), for one probe's reply, and for a stop.
_FIRST_DELAY, _MAX_DELAY = 0.005, 0.1
_PROBE_TIMEOUT = 0.2
_STOP_TIMEOUT = 5.0
# Tries at a fresh free port when another process took the one we picked before dnsmasq bound it.
_PORT_TRIES = 3


class DnsServerError(RuntimeError):
    """dnsmasq is missing, or could not start or reload; the message holds the tail of its log."""


def dnsmasq_path() -> str | None:
    """Where the dnsmasq binary is: on ``PATH``, or Debian's ``/usr/sbin/dnsmasq``; None when neither."""
    found = shutil.which(DNSMASQ)
    if found is not None:
        return found
    debian = f"/usr/sbin/{DNSMASQ}"
    return debian if os.access(debian, os.X_OK) else None


def dnsmasq_available() -> bool:
    """True when :func:`dnsmasq_path` finds dnsmasq (Debian: ``apt-get install dnsmasq-base``)."""
    return dnsmasq_path() is not None


class DnsServer:
    """A real dnsmasq on ``127.0.0.1:port`` answering only the records given here.

    ``a`` maps a name to its addresses: IPv4 ones are its A records, IPv6 ones its AAAA records. ``srv`` lists
    ``(name, target, port)`` SRV records (priority and weight 0). ``cname`` maps an alias to its target name.
    Any other name is NXDOMAIN; a known name asked for a type it lacks is an empty NOERROR answer.
    Every TTL is 0.

    ``port`` defaults to a free one; ``workdir`` to a fresh temporary directory that :meth:`stop` removes (a
    directory you pass is kept, with its config, hosts file and ``dnsmasq.log``). Pass ``nameservers`` and
    ``port`` to a resolver: ``Resolver(server.nameservers, server.port)``.
    """

    def __init__(
        self,
        a: Mapping[str, Sequence[str]] | None = None,
        srv: Sequence[tuple[str, str, int]] | None = None,
        cname: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.host: str = HOST
        self.nameservers: list[str] = [HOST]
        self._port_given = port is not None
        self.port: int = port if port is not None else free_port()
        self.start_timeout: float = start_timeout
        self._a: dict[str, list[str]] = {}
        self._srv: list[tuple[str, str, int]] = []
        self._cname: dict[str, str] = {}
        self._store(a or {}, srv or [], cname or {})
        self._generation = 0
        self._token = secrets.token_hex(4)  # another server on the port must not pass for this one
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0
        self._owns_workdir = workdir is None
        self.workdir: Path = (Path(tempfile.mkdtemp(prefix="dnsmasq-")) if workdir is None else Path(workdir)).resolve()

    # -- records --------------------------------------------------------------------------------------------

    @property
    def records(self) -> tuple[dict[str, list[str]], list[tuple[str, str, int]], dict[str, str]]:
        """The records served (or to be served at start): copies of ``(a, srv, cname)``."""
        return ({name: list(found) for name, found in self._a.items()}, list(self._srv), dict(self._cname))

    def set_records(
        self,
        a: Mapping[str, Sequence[str]] | None = None,
        srv: Sequence[tuple[str, str, int]] | None = None,
        cname: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the records of each kind given (None leaves that kind as it is; empty removes them all).

        On a running server, returns once it answers the new records: at once for A and AAAA changes
        (SIGHUP), after a restart on the same port when SRV or CNAME records change. A stopped server only
        keeps them for its next start. Raises :class:`DnsServerError` while :meth:`pause` is in force.
        """
        if self._paused:
            raise DnsServerError("the DNS server is paused: resume() it before setting records")
        old_config = self.config_text()
        self._store(self._a if a is None else a, self._srv if srv is None else srv,
                    self._cname if cname is None else cname)
        if not self.running:
            return
        if self.config_text() != old_config:
            self._terminate()
            self._launch()
        else:
            self._write_hosts()
            process = self._process
            if process is not None:
                process.send_signal(signal.SIGHUP)
        self._wait_until_ready()

    def config_text(self) -> str:
        """The ``dnsmasq.conf`` the server runs with."""
        lines = [
            f"port={self.port}",
            f"listen-address={self.host}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "local=/#/",
            f"addn-hosts={self.workdir / _HOSTS}",
            "local-ttl=0",
            "log-queries",
            "log-facility=-",
        ]
        lines += [f"srv-host={name},{target},{port},0,0" for name, target, port in self._srv]
        lines += [f"cname={alias},{target}" for alias, target in self._cname.items()]
        return "\n".join(lines) + "\n"

    def hosts_text(self) -> str:
        """The hosts file the server reads its A and AAAA records from (with this version's sentinel)."""
        lines = [f"{address} {name}" for name, found in self._a.items() for address in found]
        lines.append(f"{HOST} {self._sentinel()}")
        return "\n".join(lines) + "\n"

    # -- lifecycle ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the dnsmasq we started is still running (a paused one is)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """dnsmasq's pid while it runs."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def log(self) -> Path:
        """dnsmasq's log: its start-up messages and every query it answered."""
        return self.workdir / _LOG

    def start(self) -> Self:
        """Start dnsmasq; return once it answers, or raise :class:`DnsServerError`."""
        if self._process is not None:
            return self
        for attempt in range(_PORT_TRIES):
            try:
                self._launch()
                self._wait_until_ready()
                return self
            except DnsServerError as exc:
                in_use = "Address already in use" in str(exc)
                self._terminate()
                if not in_use or self._port_given or attempt == _PORT_TRIES - 1:
                    self._remove_workdir()
                    raise
                self.port = free_port()
            except BaseException:
                self._terminate()
                self._remove_workdir()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self) -> None:
        """Stop dnsmasq and wait until it has exited; safe to call more than once."""
        self._terminate()
        self._remove_workdir()

    def pause(self) -> None:
        """Stop the process (SIGSTOP): its socket stays bound, and queries go unanswered until
        :meth:`resume`, as with a server that hangs or a network that drops them."""
        if self._process is None or not self.running:
            raise DnsServerError("the DNS server is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT); it then answers the queries that waited, and new ones."""
        if self._process is not None and self._paused:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------------------

    def _store(self, a: Mapping[str, Sequence[str]], srv: Sequence[tuple[str, str, int]],
               cname: Mapping[str, str]) -> None:
        """Check and keep the records; nothing is kept when one is malformed."""
        checked_a: dict[str, list[str]] = {}
        for name, found in a.items():
            if isinstance(found, str):
                raise TypeError(f"a[{name!r}] must be a list of addresses, not the string {found!r}")
            checked_a[_check_name(name)] = [str(ipaddress.ip_address(address)) for address in found]
        checked_srv = []
        for name, target, port in srv:
            if not 0 <= port <= 65535:
                raise ValueError(f"SRV port out of range: {port}")
            checked_srv.append((_check_name(name), _check_name(target), int(port)))
        checked_cname = {_check_name(alias): _check_name(target) for alias, target in cname.items()}
        self._a, self._srv, self._cname = checked_a, checked_srv, checked_cname

    def _sentinel(self) -> str:
        return _SENTINEL.format(self._generation, self._token)

    def _write_hosts(self) -> None:
        """Write the next version of the hosts file, whole: dnsmasq must never read half of one."""
        self._generation += 1
        partial = self.workdir / f"{_HOSTS}.new"
        partial.write_text(self.hosts_text())
        partial.replace(self.workdir / _HOSTS)

    def _launch(self) -> None:
        binary = dnsmasq_path()
        if binary is None:
            raise DnsServerError(f"{DNSMASQ} is not installed (Debian: apt-get install dnsmasq-base)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_hosts()
        (self.workdir / _CONFIG).write_text(self.config_text())
        with self.log.open("ab") as log:
            self._log_offset = log.tell()  # errors quote this run's lines only
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments we built
                [binary, "--no-daemon", f"--conf-file={self.workdir / _CONFIG}"],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _wait_until_ready(self) -> None:
        """Until the server answers this version's sentinel name; its exit or the deadline is an error."""
        deadline = time.monotonic() + self.start_timeout
        delay = _FIRST_DELAY
        query = dns.message.make_query(self._sentinel(), "A")
        while True:
            process = self._process
            status = process.poll() if process is not None else None
            if process is None or status is not None:
                raise DnsServerError(f"dnsmasq exited with status {status}\n{self._log_tail()}")
            if self._answers(query):
                return
            if time.monotonic() >= deadline:
                raise DnsServerError(f"dnsmasq not answering on {self.host}:{self.port} after "
                                     f"{self.start_timeout}s\n{self._log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    def _answers(self, query: dns.message.Message) -> bool:
        """Whether the server answers `query` with a record. The socket is connected, so that while nothing
        is bound to the port the kernel's ICMP "port unreachable" fails the probe at once."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_PROBE_TIMEOUT)
            try:
                sock.connect((self.host, self.port))
                sock.send(query.to_wire())
                reply = dns.message.from_wire(sock.recv(65535))
            except (OSError, dns.exception.DNSException):
                return False
        return reply.id == query.id and reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if self._paused:
            process.send_signal(signal.SIGCONT)  # a stopped process would hold SIGTERM until then
            self._paused = False
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(_STOP_TIMEOUT)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(self._log_offset)
                tail = log.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- {self.log} ---\n" + "\n".join(tail) if tail else ""

    def _remove_workdir(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise ValueError(f"not a DNS name dnsmasq can serve: {name!r}")
    return name
