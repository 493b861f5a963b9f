"""brubeck.testing.Mongrel2Server against the real Mongrel2: traffic both ways, clean stops, loud failures."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from brubeck.testing import Mongrel2Error, Mongrel2Server, free_port

TIMEOUT_MS = 5000

Context = zmq.Context[zmq.Socket[bytes]]


@pytest.fixture
def context() -> Iterator[Context]:
    ctx: Context = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def connect(ctx: Context, kind: int, spec: str) -> zmq.Socket[bytes]:
    """Connect and wait for the ZMTP handshake, so no message races the connection."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(spec)
    assert monitor.poll(TIMEOUT_MS), f"no handshake with {spec}"
    recv_monitor_message(monitor)
    sock.disable_monitor()
    monitor.close()
    return sock


def recv(pull: zmq.Socket[bytes]) -> bytes:
    assert pull.poll(TIMEOUT_MS), "Mongrel2 delivered nothing"
    return pull.recv()


def reply(pub: zmq.Socket[bytes], message: bytes, body: bytes) -> None:
    sender, conn_id, _ = message.split(b" ", 2)
    pub.send(b"%s %d:%s, %s" % (sender, len(conn_id), conn_id, body))


def running(pid: int) -> bool:
    """True while pid exists and is not a zombie (init reaps the daemon, not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def mongrel2_pids(server_uuid: str) -> list[int]:
    """Pids of live mongrel2 processes started for this server (its uuid is on the command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if server_uuid.encode() in cmdline and running(int(entry.name)):
            pids.append(int(entry.name))
    return pids


@pytest.mark.mongrel2
def test_request_reaches_handler_and_reply_reaches_client(mongrel2: Mongrel2Server, context: Context) -> None:
    pull = connect(context, zmq.PULL, mongrel2.send_spec)
    pub = connect(context, zmq.PUB, mongrel2.recv_spec)
    client = http.client.HTTPConnection("127.0.0.1", mongrel2.http_port, timeout=TIMEOUT_MS / 1000)
    # http.client sends "Host: 127.0.0.1:PORT"; only default_host routes that to the 'localhost' host.
    client.request("GET", "/ping?x=1", headers={"X-Test": "yes"})

    message = recv(pull)
    sender, conn_id, path, rest = message.split(b" ", 3)
    size, _, rest = rest.partition(b":")
    headers = json.loads(rest[: int(size)])
    assert sender.decode() == mongrel2.send_ident
    assert conn_id.isdigit()
    assert path == b"/ping"
    assert headers["host"] == f"127.0.0.1:{mongrel2.http_port}"
    assert headers["METHOD"] == "GET"
    assert headers["QUERY"] == "x=1"
    assert headers["x-test"] == "yes"

    reply(pub, message, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
    response = client.getresponse()
    assert response.status == 200
    assert response.read() == b"pong"

    client.close()
    assert b'{"type":"disconnect"}' in recv(pull)


@pytest.mark.mongrel2
def test_tnetstring_protocol_sends_tnetstring_headers(mongrel2_required: None, context: Context) -> None:
    with Mongrel2Server(protocol="tnetstring") as server:
        pull = connect(context, zmq.PULL, server.send_spec)
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT_MS / 1000) as client:
            client.sendall(b"GET /t HTTP/1.1\r\nHost: localhost\r\n\r\n")
            headers = recv(pull).split(b" ", 3)[3]
    size, _, rest = headers.partition(b":")
    # The headers are a tnetstring dict, "SIZE:PAYLOAD}", where JSON would be a netstring "SIZE:{...},".
    assert rest[int(size) :] == b"}0:,"
    assert rest[:1].isdigit()


@pytest.mark.mongrel2
def test_stop_leaves_no_process_and_no_pid_file(mongrel2_required: None) -> None:
    server = Mongrel2Server().start()
    pid, pid_file, workdir = server.pid, server.pid_file, server.workdir
    assert pid is not None and running(pid)
    assert pid_file.read_text().strip() == str(pid)

    server.stop()
    assert not running(pid)
    assert mongrel2_pids(server.server_uuid) == []
    assert not pid_file.exists()
    assert not workdir.exists()
    server.stop()  # idempotent


@pytest.mark.mongrel2
def test_given_workdir_is_kept_and_server_restarts(mongrel2_required: None, tmp_path: Path) -> None:
    server = Mongrel2Server(workdir=tmp_path)
    with server:
        first = server.pid
        assert (tmp_path / "mongrel2.conf").exists()
    assert first is not None and not running(first)
    assert not server.pid_file.exists()
    assert (tmp_path / "log" / "error.log").exists()

    with server:
        assert server.pid is not None and running(server.pid)
    assert mongrel2_pids(server.server_uuid) == []


@pytest.mark.mongrel2
def test_m2sh_gets_a_logname(mongrel2_required: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOGNAME", raising=False)
    with Mongrel2Server() as server:
        m2sh_output = (server.workdir / "m2sh.log").read_text()
    assert "LOGNAME" not in m2sh_output
    assert "LOGNAME" not in os.environ


@pytest.mark.mongrel2
def test_http_port_taken_raises_with_the_log(mongrel2_required: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Mongrel2Server(http_port=taken.getsockname()[1], start_timeout=5.0)
        with pytest.raises(Mongrel2Error, match="Can't announce on TCP port"):
            server.start()
    assert mongrel2_pids(server.server_uuid) == []
    assert not server.workdir.exists()


@pytest.mark.mongrel2
def test_handler_port_taken_raises(mongrel2_required: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = Mongrel2Server(send_spec=f"tcp://127.0.0.1:{taken.getsockname()[1]}", start_timeout=5.0)
        with pytest.raises(Mongrel2Error, match="not free"):
            server.start()
    assert mongrel2_pids(server.server_uuid) == []
    assert not server.workdir.exists()


def test_config_holds_settings_and_specs() -> None:
    server = Mongrel2Server(
        protocol="tnetstring",
        limits={"limits.content_length": 1024},
        upload_temp_store="/tmp/upload.XXXXXX",
    )
    try:
        config = server.config_text()
    finally:
        server.stop()
    assert f"send_spec='{server.send_spec}'" in config
    assert f"send_ident='{server.send_ident}'" in config
    assert "recv_ident=''" in config
    assert "protocol='tnetstring'" in config
    assert f"port={server.http_port}" in config
    assert "'limits.content_length': 1024" in config
    assert "'upload.temp_store': '/tmp/upload.XXXXXX'" in config
    assert server.url == f"http://127.0.0.1:{server.http_port}"


def test_config_refuses_what_m2sh_cannot_quote() -> None:
    with pytest.raises(ValueError, match="protocol"):
        Mongrel2Server(protocol="xml")
    server = Mongrel2Server(send_spec="tcp://127.0.0.1:1'")
    try:
        with pytest.raises(ValueError, match=r"mongrel2\.conf"):
            server.config_text()
    finally:
        server.stop()


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert 0 < port < 65536
