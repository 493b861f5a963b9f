"""One service per address: a second `ServiceConnection` on a live address refuses, a dead one's file is
reclaimed, and the first service keeps serving.

The holders here are real processes (a Python child binding a real zmq socket), because what is checked is
what the kernel and libzmq do with a path or a port that another process holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.green as zmq

from brubeck.application import Brubeck
from brubeck.errors import ConfigurationError
from brubeckservice.addresses import ipc_listener
from brubeckservice.errors import AddressInUse
from brubeckservice.server import ServiceConnection
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT

# A child that binds a ROUTER at argv[1], says so, then either waits for stdin to close or dies at once
# by SIGKILL (argv[2] == "die"), leaving libzmq's ipc socket file behind as a crashed service would.
HOLDER = """
import os, signal, sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


class Holder:
    def __init__(self, address: str, die: bool = False) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", HOLDER, address, "die" if die else "hold"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().strip()  # blocks until bound (or the child failed)
        assert self.address, "the holder process failed to bind"
        if die:
            assert self.process.wait(timeout=WAIT) == -signal.SIGKILL

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=WAIT)


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Holder]:
    held = Holder(f"ipc://{tmp_path}/slow")
    yield held
    held.stop()


def serve(address: str) -> ServicePair:
    return ServicePair(ROUTES, address=address)


def test_a_second_service_on_a_live_ipc_address_refuses_and_names_the_holder(holder: Holder) -> None:
    with pytest.raises(AddressInUse) as raised:
        ServiceConnection(holder.address, None, PASSPHRASE)
    message = str(raised.value)
    assert f"a service is already serving {holder.address} (pid {holder.process.pid}" in message
    assert "python" in message  # its command line, so the user can tell which program it is
    assert raised.value.pid == holder.process.pid
    assert ipc_listener(holder.address) == (True, holder.process.pid)  # the holder still has its socket


def test_the_first_service_keeps_serving_after_a_second_was_refused(tmp_path: Path) -> None:
    with serve(f"ipc://{tmp_path}/slow") as first:
        with pytest.raises(AddressInUse, match=f"already serving ipc://{tmp_path}/slow \\(pid {os.getpid()}"):
            ServiceConnection(first.address, None, PASSPHRASE)
        with first.new_client(timeout=WAIT) as client:  # a new connection reaches the first service
            assert client.call("/echo", "request", {"RETURN_DATA": "still mine"}).body["RETURN_DATA"] == "still mine"


def test_a_stale_socket_file_of_a_dead_service_is_reclaimed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = Holder(f"ipc://{tmp_path}/slow", die=True)
    assert (tmp_path / "slow").exists()  # SIGKILL left the socket file behind
    caplog.set_level("INFO", logger="brubeckservice.server")
    with serve(dead.address) as pair:
        assert pair.client.call("/echo", "request", {"RETURN_DATA": "reborn"}).body["RETURN_DATA"] == "reborn"
    assert f"reclaiming {dead.address}" in caplog.text


def test_a_path_that_is_not_a_socket_is_refused_and_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "slow"
    precious.write_text("not a socket")
    with pytest.raises(ConfigurationError, match="exists and is not a socket"):
        ServiceConnection(f"ipc://{precious}", None, PASSPHRASE)
    assert precious.read_text() == "not a socket"  # libzmq alone would have unlinked it


def test_a_second_service_on_a_tcp_port_in_use_refuses_and_names_the_holder() -> None:
    held = Holder("tcp://127.0.0.1:*")
    try:
        with pytest.raises(AddressInUse) as raised:
            ServiceConnection(held.address, None, PASSPHRASE)
        assert f"a service is already serving {held.address} (pid {held.process.pid}" in str(raised.value)
    finally:
        held.stop()


def test_a_refused_bind_leaves_nothing_open(holder: Holder) -> None:
    context = zmq.Context()
    try:
        with pytest.raises(AddressInUse):
            ServiceConnection(holder.address, None, PASSPHRASE, context=context)
        # The refused connection's socket was closed: the shared context terminates without waiting on it.
    finally:
        context.term()


def test_a_brubeck_app_with_a_taken_address_fails_before_serving(holder: Holder) -> None:
    with pytest.raises(AddressInUse):
        Brubeck(msg_conn=ServiceConnection(holder.address, None, PASSPHRASE), handler_tuples=ROUTES)
