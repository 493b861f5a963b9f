"""Other hosts for tests: Linux network namespaces joined to this one by veth pairs.

A `Host` is what a worker on another machine sees: its own network namespace with loopback and one
interface, `eth0`, whose peer `bsv<pid>-<tag>` sits in the root namespace. The pair gets a /30 of its own
from 10.250.0.0/16 (chosen at random among those no address or route here uses yet, under a file lock so
parallel runs never pick the same one): the root side holds `root_address`, the host `address`.
Programs run inside with `Host.popen` (`ip netns exec`), and the test cuts the wire with `Host.cut`:

- ``"down"``: the root side is set administratively down. The host's side loses carrier and the root
  namespace drops its route to the host, so sends and new connections fail at once with ``EHOSTUNREACH``:
  a pulled cable. Each host has an ``unreachable`` route of its /30 at a high metric for this: without it,
  traffic for a downed host would take the default route instead (measured here: the sandbox's gateway
  accepted those TCP connections, so zmq saw a peer that was never there).
- ``"loss"``: every packet is dropped silently, both ways, while both links stay up: a host that vanished
  behind a switch. Only timeouts (TCP retransmission, ZMTP heartbeats, ``ZMQ_CONNECT_TIMEOUT``) notice.
  This is ``netem loss 100%`` when the kernel has sch_netem; without it, a ``tbf`` whose bucket (1 byte) is
  smaller than any packet, which drops each one at enqueue just the same (`Host.loss_qdisc` says which).

Names record the pid of the process that made them (``bsns-<pid>-<tag>``, ``bsv<pid>-<tag>``) so that
`remove_leftovers`, called by `hosts` before it makes any, can delete what a crashed or killed run left
behind: the namespaces and links of pids that no longer run, and the processes still inside them.
Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip`` and ``tc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol

import pytest

from brubeck.testing.ports import process_alive

__all__ = [
    "Host",
    "HostFactory",
    "LossQdisc",
    "NetnsError",
    "host_factory",
    "hosts",
    "netem_available",
    "netns_available",
    "remove_leftovers",
    "require_netns",
]

NS_PREFIX = "bsns-"
VETH_PREFIX = "bsv"
NS_VETH = "eth0"
POOL = ipaddress.IPv4Network("10.250.0.0/16")
GUARD_METRIC = 4242  # of the unreachable route under each host's connected route
LOCK_PATH = Path(tempfile.gettempdir()) / "brubeck-netns.lock"
STOP_TIMEOUT = 5.0  # seconds a process inside gets to exit after SIGTERM, and after SIGKILL

_NS_NAME = re.compile(r"bsns-(\d+)-[0-9a-f]+")
_VETH_NAME = re.compile(r"bsv(\d+)-[0-9a-f]+")
_IFNAMSIZ = 15  # the longest interface name Linux takes
# A 1-byte bucket: tbf drops every packet larger than the bucket when it is enqueued.
_BLACKHOLE = ("tbf", "rate", "1kbit", "burst", "1", "limit", "1")
_NETEM_LOSS = ("netem", "loss", "100%")

LossQdisc = Literal["netem", "tbf"]


class NetnsError(RuntimeError):
    """An ``ip`` or ``tc`` command failed; the message holds the command and what it printed."""


def _run(*argv: str, check: bool = True) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise NetnsError(f"{argv[0]}: not on PATH") from error
    if check and completed.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {completed.stderr.strip() or f'exit {completed.returncode}'}")
    return completed.stdout


def _json(*argv: str) -> list[dict[str, Any]]:
    out = _run(*argv).strip()  # `ip -j netns list` prints nothing at all when there is no namespace
    rows: list[dict[str, Any]] = json.loads(out) if out else []
    return rows


def _namespaces() -> list[str]:
    return [row["name"] for row in _json("ip", "-j", "netns", "list")]


def _links() -> list[str]:
    return [row["ifname"] for row in _json("ip", "-j", "link", "show")]


def _pids_in(namespace: str) -> list[int]:
    return [int(pid) for pid in _run("ip", "netns", "pids", namespace, check=False).split()]


def _kill_all_in(namespace: str) -> None:
    """SIGKILL every process in `namespace` and wait until none runs (zombies count as gone)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while pids := [pid for pid in _pids_in(namespace) if process_alive(pid)]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {namespace} outlived SIGKILL for {STOP_TIMEOUT}s")
        time.sleep(0.01)  # a killed process needs a moment to be torn down; this polls, it is not a wait


def _address_networks() -> list[ipaddress.IPv4Network]:
    """The networks of the root namespace's IPv4 addresses."""
    return [
        ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
        for link in _json("ip", "-j", "-4", "addr", "show")
        for info in link.get("addr_info", ())
    ]


def _used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of every address and route of the root namespace."""
    used = _address_networks()
    for route in _json("ip", "-j", "-4", "route", "show", "table", "all"):
        with contextlib.suppress(KeyError, ValueError):
            used.append(ipaddress.IPv4Network(route["dst"], strict=False))  # "default" raises ValueError
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /30 of POOL that overlaps nothing in use; call with LOCK_PATH held."""
    used = _used_networks()
    for _ in range(200):
        first = int(POOL.network_address) + 4 * secrets.randbelow(POOL.num_addresses // 4)
        subnet = ipaddress.IPv4Network((first, 30))
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError(f"no free /30 left in {POOL}")


@contextlib.contextmanager
def _address_lock() -> Iterator[None]:
    """Held from choosing a subnet to assigning it, so two runs at once cannot both take the same one."""
    with LOCK_PATH.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Host:
    """A network namespace linked to the root one by a veth pair: another machine, one wire away.

    `address` is the host's IP, which the root namespace reaches; `root_address` is the root side's IP,
    which the host reaches. `owner` is the pid its names record (this process unless a test of the
    leftover cleanup says otherwise). Use it as a context manager, or call `close`.
    """

    name: str
    veth: str
    network: ipaddress.IPv4Network
    address: str
    root_address: str

    def __init__(self, *, owner: int | None = None, loss_qdisc: LossQdisc | None = None) -> None:
        self.owner = os.getpid() if owner is None else owner
        self.loss_qdisc: LossQdisc = loss_qdisc or ("netem" if netem_available() is None else "tbf")
        self.name = ""
        self.veth = ""  # the root side; the host's side is NS_VETH
        self._guard: str | None = None  # the unreachable route's destination, once added
        self._processes: list[subprocess.Popen[Any]] = []
        self._cut: Literal["down", "loss"] | None = None
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        for _ in range(10):
            tag = secrets.token_hex(2)
            name, veth = f"{NS_PREFIX}{self.owner}-{tag}", f"{VETH_PREFIX}{self.owner}-{tag}"
            if len(veth) > _IFNAMSIZ:
                raise NetnsError(f"pid {self.owner} is too long for an interface name")
            try:
                _run("ip", "netns", "add", name)
            except NetnsError:
                if name in _namespaces():
                    continue  # the tag was taken: draw another
                raise
            self.name = name
            break
        else:
            raise NetnsError("could not find a free namespace name")
        # The peer is born inside the namespace, so no half-made pair is ever left in the root namespace.
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", NS_VETH, "netns", self.name)
        self.veth = veth
        with _address_lock():
            self.network = _free_subnet()
            root_address, address = list(self.network.hosts())
            _run("ip", "addr", "add", f"{root_address}/30", "dev", self.veth)
            _run("ip", "route", "add", "unreachable", str(self.network), "metric", str(GUARD_METRIC))
            self._guard = str(self.network)
        self.root_address, self.address = str(root_address), str(address)
        _run("ip", "-n", self.name, "addr", "add", f"{self.address}/30", "dev", NS_VETH)
        _run("ip", "-n", self.name, "link", "set", "lo", "up")
        _run("ip", "-n", self.name, "link", "set", NS_VETH, "up")
        _run("ip", "link", "set", self.veth, "up")

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} via {self.veth} {self.root_address}>"

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the host (keyword arguments as for `subprocess.Popen`); `close` stops it.

        The process's pid is the program's own: `ip netns exec` enters the namespace and then execs it.
        """
        process: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)
        self._processes.append(process)
        return process

    def cut(self, how: Literal["down", "loss"] = "down") -> None:
        """Cut the wire: ``"down"`` sets the root side's link down, ``"loss"`` drops every packet both ways."""
        if self._cut is not None:
            raise NetnsError(f"{self.name} is already cut ({self._cut}); restore() it first")
        if how == "down":
            _run("ip", "link", "set", self.veth, "down")
        elif how == "loss":
            qdisc = _NETEM_LOSS if self.loss_qdisc == "netem" else _BLACKHOLE
            _run("tc", "qdisc", "add", "dev", self.veth, "root", *qdisc)
            try:
                _run("tc", "-n", self.name, "qdisc", "add", "dev", NS_VETH, "root", *qdisc)
            except NetnsError:
                _run("tc", "qdisc", "del", "dev", self.veth, "root")
                raise
        else:
            raise ValueError(f"cut(how={how!r}): expected 'down' or 'loss'")
        self._cut = how

    def restore(self) -> None:
        """Mend the wire that `cut` cut; nothing happens if it is whole."""
        if self._cut == "down":
            _run("ip", "link", "set", self.veth, "up")
        elif self._cut == "loss":
            _run("tc", "qdisc", "del", "dev", self.veth, "root")
            _run("tc", "-n", self.name, "qdisc", "del", "dev", NS_VETH, "root")
        self._cut = None

    def close(self) -> None:
        """Stop every process inside, then delete the guard route, the veth pair and the namespace.

        What `popen` started gets SIGTERM, and SIGKILL after STOP_TIMEOUT; anything else inside, SIGKILL.
        Closing twice is harmless.
        """
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        self._processes.clear()
        if self.name:
            _kill_all_in(self.name)  # what those processes started, and anything else that entered
        if self._guard is not None:
            _run("ip", "route", "del", "unreachable", self._guard, "metric", str(GUARD_METRIC), check=False)
            self._guard = None
        if self.veth:
            # Deleting the root side deletes the pair at once; a namespace's own devices go away only when
            # the kernel gets round to freeing it, after `ip netns del` has returned.
            _run("ip", "link", "del", self.veth, check=False)
            self.veth = ""
        if self.name:
            _run("ip", "netns", "del", self.name, check=False)
            self.name = ""

    def __enter__(self) -> Host:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def remove_leftovers() -> list[str]:
    """Delete the namespaces, root-side links and guard routes of owners that no longer run; return them.

    Processes still running inside such a namespace are killed first: while one runs, the namespace (and
    its veth pair) would outlive its name. Links go before namespaces because deleting a link removes the
    pair at once, while a deleted namespace's devices linger until the kernel frees it.
    """
    dead = [name for name in _namespaces() if (m := _NS_NAME.fullmatch(name)) and not process_alive(int(m[1]))]
    for name in dead:
        _kill_all_in(name)
    removed = [link for link in _links() if (m := _VETH_NAME.fullmatch(link)) and not process_alive(int(m[1]))]
    for link in removed:
        _run("ip", "link", "del", link, check=False)
    for name in dead:
        _run("ip", "netns", "del", name, check=False)
    removed += dead
    with _address_lock():  # a host adds its address before its guard route, under this lock
        held = set(_address_networks())
        for route in _json("ip", "-j", "-4", "route", "show", "type", "unreachable"):
            network = ipaddress.IPv4Network(route["dst"], strict=False)
            if route.get("metric") == GUARD_METRIC and network.subnet_of(POOL) and network not in held:
                _run("ip", "route", "del", "unreachable", str(network), "metric", str(GUARD_METRIC), check=False)
                removed.append(f"unreachable {network}")
    return removed


class HostFactory(Protocol):
    """Makes `n` more hosts at each call (what the `netns_hosts` fixture gives a test)."""

    def __call__(self, n: int = 1, *, loss_qdisc: LossQdisc | None = None) -> list[Host]: ...


@contextlib.contextmanager
def host_factory() -> Iterator[HostFactory]:
    """Remove what dead runs left behind, then give a `HostFactory`; every host it made is closed on exit."""
    remove_leftovers()
    with contextlib.ExitStack() as stack:

        def make(n: int = 1, *, loss_qdisc: LossQdisc | None = None) -> list[Host]:
            return [stack.enter_context(Host(loss_qdisc=loss_qdisc)) for _ in range(n)]

        yield make


@contextlib.contextmanager
def hosts(n: int, *, loss_qdisc: LossQdisc | None = None) -> Iterator[list[Host]]:
    """`n` new hosts, after removing what dead runs left behind; all closed on exit."""
    with host_factory() as make:
        yield make(n, loss_qdisc=loss_qdisc)


@functools.cache
def netns_available() -> str | None:
    """None if this process can make hosts, else why not (tried once, by making one)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH (apt-get install iproute2)"
    try:
        Host(loss_qdisc="tbf").close()
    except NetnsError as error:
        return f"cannot make a network namespace with a veth pair (root needed): {error}"
    return None


@functools.cache
def netem_available() -> str | None:
    """None if the kernel has the netem qdisc, else why not (tried once, on a throwaway namespace's lo)."""
    name = f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
    try:
        _run("ip", "netns", "add", name)
        _run("tc", "-n", name, "qdisc", "add", "dev", "lo", "root", *_NETEM_LOSS)
    except NetnsError as error:
        return f"no netem qdisc (kernel built without CONFIG_NET_SCH_NETEM, or sch_netem not loaded): {error}"
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


def require_netns() -> None:
    """Skip the test without network namespaces, but fail it when CI is set: CI must run these."""
    reason = netns_available()
    if reason is None:
        return
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)
