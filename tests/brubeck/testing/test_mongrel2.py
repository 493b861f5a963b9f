"""brubeck.testing.Mongrel2Server against the real Mongrel2: traffic both ways, clean stops, loud failures,
a config file of the caller's, a server in the foreground."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
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
def test_a_reply_that_does_not_begin_with_the_handlers_identity_reaches_no_browser(
        mongrel2: Mongrel2Server, context: Context) -> None:
    pull = connect(context, zmq.PULL, mongrel2.send_spec)
    pub = connect(context, zmq.PUB, mongrel2.recv_spec)
    client = http.client.HTTPConnection("127.0.0.1", mongrel2.http_port, timeout=TIMEOUT_MS / 1000)
    client.request("GET", "/victim")
    message = recv(pull)
    _, conn_id, _ = message.split(b" ", 2)
    # A forged sender, or another UUID, for this browser's connection: Mongrel2 would deliver it with
    # recv_ident ''. Then the real answer: the browser must get that one, first and only.
    for forged in (b"S", str(uuid.uuid4()).encode()):
        pub.send(b"%s %d:%s, HTTP/1.1 400 Bad Request\r\nContent-Length: 6\r\n\r\nforged" % (forged, len(conn_id),
                                                                                                 conn_id))
    reply(pub, message, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
    response = client.getresponse()
    assert (response.status, response.read()) == (200, b"real")
    client.close()


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
    assert f"recv_ident='{server.send_ident}'" in config  # only replies with its identity are delivered
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


# -- a config file of the caller's, and a server in the foreground ----------------------------------------

OWN_CONFIG = """\
# A config as a project keeps it: ipc sockets and paths relative to the chroot '.', the workdir.
h = Handler(send_spec='ipc://run/requests', send_ident='{ident}',
            recv_spec='ipc://run/replies', recv_ident='{ident}')
main = Server(uuid='{uuid}', name='own', chroot='{chroot}', access_log='/logs/access.log',
              error_log='/logs/error.log', pid_file='/run/m2.pid', default_host='localhost',
              bind_addr='127.0.0.1', port={port}, hosts=[Host(name='localhost', routes={{'/': h}})])
settings = {{'zeromq.threads': 1}}
servers = [{servers}]
"""


def own_config(directory: Path, *, chroot: str = ".", servers: str = "main") -> tuple[Path, dict[str, str]]:
    values = {"ident": str(uuid.uuid4()), "uuid": str(uuid.uuid4()), "port": str(free_port())}
    path = directory / "own.conf"
    path.write_text(OWN_CONFIG.format(chroot=chroot, servers=servers, **values))
    return path, values


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose ipc:// paths fit in a sockaddr_un (107 bytes), which pytest's tmp_path may not."""
    directory = Path(tempfile.mkdtemp(prefix="m2-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.mark.mongrel2
def test_a_config_file_of_its_own_is_served_as_written(mongrel2_required: None, short_dir: Path,
                                                       context: Context) -> None:
    config, values = own_config(short_dir)
    server = Mongrel2Server(workdir=short_dir, config=config)
    # Read back from what m2sh loaded, before anything starts: nothing is written to the workdir yet.
    assert (server.http_port, server.server_uuid) == (int(values["port"]), values["uuid"])
    assert (server.send_spec, server.recv_spec) == ("ipc://run/requests", "ipc://run/replies")
    assert server.send_ident == server.recv_ident == values["ident"]
    assert server.pid_file == short_dir / "run" / "m2.pid"
    assert server.access_log == short_dir / "logs" / "access.log"
    assert sorted(p.name for p in short_dir.iterdir()) == ["own.conf"]

    with server:
        assert server.pid is not None and server.pid_file.read_text().strip() == str(server.pid)
        pull = connect(context, zmq.PULL, f"ipc://{short_dir}/run/requests")
        pub = connect(context, zmq.PUB, f"ipc://{short_dir}/run/replies")
        client = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_MS / 1000)
        client.request("GET", "/own")
        message = recv(pull)
        assert message.startswith(values["ident"].encode() + b" ")
        reply(pub, message, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nown")
        assert client.getresponse().read() == b"own"
        client.close()
    assert mongrel2_pids(server.server_uuid) == []
    # The workdir is kept, with the logs the config names; the pid file and the sockets are gone.
    assert (short_dir / "logs" / "error.log").exists()
    assert not server.pid_file.exists()
    assert [p.name for p in (short_dir / "run").iterdir()] == []
    assert config.read_text() == OWN_CONFIG.format(chroot=".", servers="main", **values)


@pytest.mark.mongrel2
@pytest.mark.parametrize("source", ["generated", "config file"])
def test_a_foreground_server_is_our_child_and_wait_gives_its_status(mongrel2_required: None, short_dir: Path,
                                                                    source: str) -> None:
    if source == "generated":
        server = Mongrel2Server(daemonize=False)
        assert "'server.daemonize': 0" in server.config_text()
    else:
        server = Mongrel2Server(workdir=short_dir, config=own_config(short_dir)[0], daemonize=False)
    with server:
        pid = server.pid
        assert pid is not None
        assert parent_of(pid) == os.getpid()  # mongrel2 itself, not m2sh, and not detached
        with pytest.raises(subprocess.TimeoutExpired):
            server.wait(timeout=0.05)
        os.kill(pid, signal.SIGKILL)
        assert server.wait(timeout=TIMEOUT_MS / 1000) == -signal.SIGKILL
    assert not running(pid)
    assert not server.pid_file.exists()


@pytest.mark.mongrel2
def test_by_default_the_server_daemonizes_as_root(mongrel2_required: None) -> None:
    with Mongrel2Server() as server:
        pid = server.pid
        assert pid is not None
        if os.geteuid() == 0:  # as another user Mongrel2 never detaches (its test mode)
            assert parent_of(pid) != os.getpid()
        with pytest.raises(subprocess.TimeoutExpired):
            server.wait(timeout=0.05)
    assert server.wait() is None  # no exit status for a daemon, and at once once it is stopped


@pytest.mark.mongrel2
def test_a_config_file_it_cannot_serve_is_refused(mongrel2_required: None, short_dir: Path) -> None:
    two, _ = own_config(short_dir, servers="main, main")
    with pytest.raises(Mongrel2Error, match="must define one server, not 2"):
        Mongrel2Server(workdir=short_dir, config=two)
    elsewhere, _ = own_config(short_dir, chroot="/tmp")
    with pytest.raises(Mongrel2Error, match="chroot '/tmp' must be the workdir"):
        Mongrel2Server(workdir=short_dir, config=elsewhere)
    broken = short_dir / "broken.conf"
    broken.write_text("servers = [main\n")
    with pytest.raises(Mongrel2Error, match="m2sh cannot load"):
        Mongrel2Server(config=broken)
    assert sorted(p.name for p in short_dir.iterdir()) == ["broken.conf", "own.conf"]


def test_a_config_file_takes_no_generated_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http_port, protocol: set in the config file"):
        Mongrel2Server(config=tmp_path / "any.conf", http_port=8080, protocol="json")
