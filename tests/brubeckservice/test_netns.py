"""The hosts of netns.py are real enough to test failover on: reachable, cut, mended, and gone when closed.

Servers run inside a host as `python -c` programs on fixed ports (a fresh namespace has every port free)
and print "ready" once they listen; clients run here, in the root namespace, and bind nothing. Detection
and reconnection times are printed (run with -s) but never asserted beyond a generous wait.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from brubeck.testing.ports import process_alive
from tests.brubeckservice import netns
from tests.brubeckservice.helpers import read_line
from tests.brubeckservice.netns import Host, HostFactory, LossQdisc, remove_leftovers

WAIT = 10.0  # the longest a test waits for a cut to be noticed or mended
PORT = 7000

TCP_ECHO = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
"""

ZMQ_ECHO = """
import sys, zmq
router = zmq.Context().socket(zmq.ROUTER)
router.bind(f"tcp://*:{sys.argv[1]}")
print("ready", flush=True)
while True:
    router.send_multipart(router.recv_multipart())
"""


def start(host: Host, program: str, port: int = PORT) -> subprocess.Popen[Any]:
    process = host.popen([sys.executable, "-c", program, str(port)], stdout=subprocess.PIPE)
    assert read_line(process, WAIT) == "ready"
    return process


def tcp_round_trip(address: str, payload: bytes, port: int = PORT) -> bytes:
    with socket.create_connection((address, port), timeout=WAIT) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        return received


def wait_for_event(monitor: zmq.Socket[bytes], event: int, timeout: float = WAIT) -> tuple[float, list[str]]:
    """Read `monitor` until `event`; return the seconds it took and the names of the events seen on the way."""
    start_time = time.monotonic()
    deadline = start_time + timeout
    seen: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0 and monitor.poll(int(remaining * 1000) + 1):
        message = recv_monitor_message(monitor)
        seen.append(zmq.Event(message["event"]).name or str(message["event"]))
        if message["event"] == event:
            return time.monotonic() - start_time, seen
    raise AssertionError(f"no {zmq.Event(event).name or event} within {timeout}s; saw {seen}")


def dealer_round_trip(dealer: zmq.Socket[bytes], payload: bytes) -> None:
    dealer.send(payload)
    assert dealer.poll(int(WAIT * 1000)), f"no echo of {payload!r} within {WAIT}s"
    assert dealer.recv() == payload


def ip(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True).stdout


def test_tcp_round_trip_to_an_echo_server_in_a_host(netns_hosts: HostFactory) -> None:
    [host] = netns_hosts()
    start(host, TCP_ECHO)
    payload = bytes(range(256)) * 1000  # several segments each way
    assert tcp_round_trip(host.address, payload) == payload
    assert host.address != host.root_address
    assert host.name.startswith(f"bsns-{host.owner}-")


# Silent loss is netem's where the kernel has it, else tbf's (the same drop of every packet): one case, so a
# kernel without sch_netem skips nothing.
CUTS: list[Any] = [
    pytest.param("down", None, id="link-down"),
    pytest.param("loss", None, id="loss"),
]


@pytest.mark.parametrize(("how", "qdisc"), CUTS)
def test_heartbeats_notice_a_cut_and_the_dealer_comes_back_after_restore(
    netns_hosts: HostFactory, how: str, qdisc: LossQdisc | None
) -> None:
    [host] = netns_hosts(loss_qdisc=qdisc)
    start(host, ZMQ_ECHO)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.heartbeat_ivl = 500
    dealer.heartbeat_timeout = 1000
    # Without it a redial into silent loss waits on the kernel's SYN back-off (1, 3, 7, 15... s) after
    # restore(); with it libzmq abandons the dial after 1 s and tries again.
    dealer.connect_timeout = 1000
    monitor = dealer.get_monitor_socket()
    try:
        dealer.connect(f"tcp://{host.address}:{PORT}")
        wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        dealer_round_trip(dealer, b"before")

        host.cut("down" if how == "down" else "loss")
        detected, seen = wait_for_event(monitor, zmq.EVENT_DISCONNECTED)
        label = f"{how} ({qdisc or 'ip link'})"
        print(f"\n{label}: EVENT_DISCONNECTED {detected:.2f}s after the cut, after {seen}")
        # Stay cut until a redial has failed too: refused at once when down, abandoned by connect_timeout
        # when lost. So the dealer comes back through a failed dial, as it would after a long outage.
        failed, seen = wait_for_event(monitor, zmq.EVENT_CLOSED)
        print(f"{label}: a redial failed (EVENT_CLOSED) {failed:.2f}s later, after {seen}")

        host.restore()
        back, seen = wait_for_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        print(f"{label}: EVENT_HANDSHAKE_SUCCEEDED {back:.2f}s after restore, after {seen}")
        dealer_round_trip(dealer, b"after")
    finally:
        dealer.disable_monitor()
        monitor.close()
        dealer.close()
        context.term()


def test_two_hosts_are_reachable_at_once_and_cutting_one_spares_the_other(netns_hosts: HostFactory) -> None:
    first, second = netns_hosts(2)
    assert not first.network.overlaps(second.network)
    start(first, TCP_ECHO)
    start(second, TCP_ECHO)
    assert tcp_round_trip(first.address, b"first") == b"first"
    assert tcp_round_trip(second.address, b"second") == b"second"

    first.cut("down")
    with pytest.raises(OSError) as refused:  # the guard route answers at once: no route to host
        socket.create_connection((first.address, PORT), timeout=WAIT)
    assert refused.value.errno == errno.EHOSTUNREACH
    assert tcp_round_trip(second.address, b"still here") == b"still here"

    first.restore()
    assert tcp_round_trip(first.address, b"back") == b"back"


def test_close_leaves_no_namespace_link_route_or_process_behind(netns_hosts: HostFactory) -> None:
    [host] = netns_hosts()
    name, veth, network = host.name, host.veth, str(host.network)
    # A shell that starts a grandchild: close() must find it through the namespace, not through popen.
    shell = host.popen(["sh", "-c", "sleep 600 & echo $!; wait"], stdout=subprocess.PIPE)
    grandchild = int(read_line(shell, WAIT))
    host.cut("loss")

    host.close()
    assert shell.poll() is not None
    assert not process_alive(grandchild)
    assert name not in ip("netns", "list")
    assert veth not in ip("-o", "link")
    assert network not in ip("route", "show", "table", "all")
    host.close()  # a second close is harmless


def test_remove_leftovers_deletes_what_dead_owners_left_and_nothing_else(netns_hosts: HostFactory) -> None:
    [alive] = netns_hosts()
    never_ran = int(Path("/proc/sys/kernel/pid_max").read_text())  # pids stay below pid_max
    with Host(owner=never_ran) as orphan:  # what a killed run leaves: a namespace with a process in it
        sleeper = orphan.popen(["sleep", "600"])
        names = {orphan.name, orphan.veth, f"unreachable {orphan.network}"}

        removed = remove_leftovers()
        assert names <= set(removed), removed  # unless a run alongside this one removed them first
        sleeper.wait(WAIT)
        assert orphan.name not in ip("netns", "list")
        assert orphan.veth not in ip("-o", "link")
        assert str(orphan.network) not in ip("route", "show", "table", "all")

    assert alive.name not in removed
    assert alive.name in ip("netns", "list")
    start(alive, TCP_ECHO)
    assert tcp_round_trip(alive.address, b"untouched") == b"untouched"


@pytest.mark.parametrize("ci", [True, False])
def test_require_netns_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, ci: bool) -> None:
    monkeypatch.setattr(netns, "netns_available", lambda: "no namespaces here")
    if ci:
        monkeypatch.setenv("CI", "1")
    else:
        monkeypatch.delenv("CI", raising=False)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="no namespaces here"):
        netns.require_netns()
