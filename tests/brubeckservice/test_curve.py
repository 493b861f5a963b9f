"""CURVE beneath the signed envelopes (brubeckservice/curve.py), over real tcp sockets on 127.0.0.1.

Each test makes its key pairs with `write_keypair` in a fresh directory (`keys`), runs a ServicePair bound to
a free tcp port (`tcp://127.0.0.1:*`) with CURVE on, and connects clients with the right keys or wrong ones.
A refusal must reach the caller as AuthenticationError at once: the calls are given a timeout of 10 s and
a connect timeout of 60 s, so a hang would end as ServiceTimeout, never as a pass. Nothing waits a fixed
time: each wait polls its condition until a deadline (helpers.wait_until).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import zmq.green as zmq
from gevent import socket as gsocket
from gevent.server import StreamServer
from zmq.auth.certs import load_certificate
from zmq.utils.monitor import parse_monitor_message

from brubeck.application import Brubeck
from brubeck.connections import WSGIConnection
from brubeck.errors import ConfigurationError
from brubeck.handlers import WebMessageHandler
from brubeck.request import Request
from brubeckservice.client import ServiceClient
from brubeckservice.curve import (
    CurveClient,
    CurveServer,
    KeyFiles,
    handshake_failure,
    write_keypair,
)
from brubeckservice.errors import AuthenticationError
from brubeckservice.handlers import ServiceMessageHandler
from brubeckservice.mixin import ServiceClientMixin
from brubeckservice.models import ServiceResponse
from brubeckservice.server import ServiceConnection
from brubeckservice.signing import Signer
from brubeckservice.testing import ServicePair
from tests.brubeckservice.helpers import PASSPHRASE, ROUTES, WAIT, signed_request, wait_until

PATIENT: dict[str, Any] = {"timeout": 10.0, "connect_timeout": 60.0}  # a hang would fail as ServiceTimeout after 10 s


@dataclass
class Keys:
    directory: Path
    server: KeyFiles
    next_server: KeyFiles
    client: KeyFiles
    stranger: KeyFiles  # a key pair the service does not know
    clients: Path  # the service's allowlist: client.key only

    def client_curve(self, client: KeyFiles | None = None, server: KeyFiles | None = None) -> CurveClient:
        return CurveClient((server or self.server).public_file, (client or self.client).secret_file)


@pytest.fixture
def keys(short_tmp: Path) -> Keys:
    directory = short_tmp / "keys"
    made = {name: write_keypair(directory, name) for name in ("server", "next-server", "client", "stranger")}
    clients = directory / "clients"
    clients.mkdir()
    shutil.copy(made["client"].public_file, clients / "client.key")
    return Keys(directory, made["server"], made["next-server"], made["client"], made["stranger"], clients)


@pytest.fixture
def pair(keys: Keys) -> Iterator[ServicePair]:
    """A service on tcp://127.0.0.1 with CURVE and the allowlist `keys.clients`, and a client it allows."""
    with ServicePair(ROUTES, PASSPHRASE, address="tcp://127.0.0.1:*", curve=CurveServer(keys.server.secret_file,
                     keys.clients), client_curve=keys.client_curve()) as service_pair:
        yield service_pair


def refused_handshakes(pair: ServicePair) -> int:
    return pair.connection.stats["handshake_refused"]


# -- key files ------------------------------------------------------------------------------------------

def test_key_files_are_pyzmq_certificates_and_the_secret_is_private(short_tmp: Path) -> None:
    files = write_keypair(short_tmp / "new", "server")
    assert (files.public_file.name, files.secret_file.name) == ("server.key", "server.key_secret")
    public, secret = load_certificate(files.secret_file)
    assert public is not None and public.decode() == files.public_key
    assert secret is not None and len(secret) == 40
    assert load_certificate(files.public_file) == (public, None)
    assert stat.S_IMODE(os.stat(files.secret_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(files.public_file).st_mode) & 0o077 == 0o044 & ~_umask()
    assert stat.S_IMODE(os.stat(short_tmp / "new").st_mode) & 0o077 == 0  # made for the keys: 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_key_files_are_not_replaced_unless_forced(short_tmp: Path) -> None:
    first = write_keypair(short_tmp, "client")
    with pytest.raises(FileExistsError, match=r"client\.key exists already"):
        write_keypair(short_tmp, "client")
    assert load_certificate(first.public_file)[0] == first.public_key.encode()
    second = write_keypair(short_tmp, "client", force=True)
    assert second.public_key != first.public_key
    assert load_certificate(second.secret_file)[0] == second.public_key.encode()
    assert stat.S_IMODE(os.stat(second.secret_file).st_mode) == 0o600
    assert sorted(p.name for p in short_tmp.iterdir()) == ["client.key", "client.key_secret"]  # no temporaries


def test_bad_key_settings_are_configuration_errors(keys: Keys) -> None:
    with pytest.raises(ConfigurationError, match="holds a public key only"):
        CurveServer(keys.server.public_file)
    with pytest.raises(ConfigurationError, match="cannot read CURVE key pair"):
        CurveServer(keys.directory / "nowhere.key_secret")
    with pytest.raises(ConfigurationError, match="no such directory"):
        CurveServer(keys.server.secret_file, keys.directory / "nowhere")
    with pytest.raises(ConfigurationError, match="next_secret_file and next_bind go together"):
        CurveServer(keys.server.secret_file, next_secret_file=keys.next_server.secret_file)
    with pytest.raises(ConfigurationError, match="not a CURVE key"):
        CurveClient("x" * 39 + "~", keys.client.secret_file)
    # The service's public key may be given as its text rather than its file.
    assert CurveClient(keys.server.public_key, keys.client.secret_file).server_public == keys.server.public_key.encode()
    for settings, secret_file in ((keys.client_curve(), keys.client.secret_file),
                                  (CurveServer(keys.server.secret_file), keys.server.secret_file)):
        secret = load_certificate(secret_file)[1]
        assert secret is not None and secret.decode() not in repr(settings)


# -- calls ----------------------------------------------------------------------------------------------

def test_a_call_over_curve_works(pair: ServicePair) -> None:
    response = pair.client.call("/echo", arguments={"RETURN_DATA": "secret stuff"})
    assert (response.status_code, response.body["RETURN_DATA"]) == (200, "secret stuff")
    assert pair.client.workers[0].state == "alive"
    assert refused_handshakes(pair) == 0


class Tap:
    """A tcp relay in front of a service that keeps every byte it carries, both ways."""

    def __init__(self, target: str) -> None:
        host, port = target[len("tcp://"):].rsplit(":", 1)
        self.target = (host, int(port))
        self.carried = bytearray()
        self.server = StreamServer(("127.0.0.1", 0), self._relay)
        self.server.start()
        self.address = f"tcp://127.0.0.1:{self.server.server_port}"

    def _relay(self, downstream: gsocket.socket, _: object) -> None:
        upstream = gsocket.create_connection(self.target)

        def pump(source: gsocket.socket, sink: gsocket.socket) -> None:
            try:
                while data := source.recv(65536):
                    self.carried += data
                    sink.sendall(data)
            except OSError:
                pass  # the other side closed first
            finally:
                sink.close()

        gevent.joinall([gevent.spawn(pump, downstream, upstream), gevent.spawn(pump, upstream, downstream)])

    def close(self) -> None:
        self.server.stop(timeout=0)


@pytest.mark.parametrize("curve", [True, False], ids=["curve", "plain"])
def test_curve_encrypts_what_plain_zeromq_carries_in_clear(keys: Keys, curve: bool) -> None:
    marker = "a-marker-that-must-not-show-on-the-wire"
    server = CurveServer(keys.server.secret_file, keys.clients) if curve else None
    with ServicePair(ROUTES, PASSPHRASE, address="tcp://127.0.0.1:*", curve=server) as pair:
        tap = Tap(pair.address)
        try:
            client = ServiceClient(tap.address, None, PASSPHRASE, context=pair.context,
                                   curve=keys.client_curve() if curve else None, **PATIENT)
            try:
                assert client.call("/echo", arguments={"RETURN_DATA": marker}).body["RETURN_DATA"] == marker
            finally:
                client.close(timeout=0)
        finally:
            tap.close()
    assert (marker.encode() in tap.carried) is not curve
    assert (b"/echo" in tap.carried) is not curve


class Page(ServiceClientMixin, WebMessageHandler):
    """A web handler calling the service the 2013 way."""


class Replies(ServiceMessageHandler):
    def response(self) -> ServiceResponse:
        return self.render()


def test_register_service_takes_the_curve_keys(pair: ServicePair, keys: Keys) -> None:
    app = Brubeck(msg_conn=WSGIConnection(port=0), handler_tuples=[(r"^/echo", Replies)])
    try:
        handler = Page(app, Request("wsgi", "77", "/page", {"METHOD": "GET", "PATH": "/page"}, b""))
        handler.register_service(pair.address, None, PASSPHRASE, context=pair.context, curve=keys.client_curve(),
                                 **PATIENT)
        request = handler.create_service_request("/echo", "request", {"RETURN_DATA": "from the page"})
        response, _ = handler.send_service_request(pair.address, request)
        assert response.body["RETURN_DATA"] == "from the page"
    finally:
        app.close()


# -- refusals -------------------------------------------------------------------------------------------

def test_a_wrong_server_key_is_an_authentication_error(pair: ServicePair, keys: Keys) -> None:
    stranger = pair.new_client(curve=keys.client_curve(server=keys.stranger), **PATIENT)
    with pytest.raises(AuthenticationError, match=r"CURVE handshake with tcp://127\.0\.0\.1:\d+ refused: the service "
                                                  r"closed the connection during the handshake, as it does when this "
                                                  r"client's server key is not the service's public key"):
        stranger.call("/echo")
    assert stranger.pending == 0
    assert stranger.workers[0].state == "refused"
    wait_until(lambda: refused_handshakes(pair) >= 2, "the service to count the refused handshakes")
    assert pair.connection.stats["served"] == 0
    with pytest.raises(AuthenticationError, match="CURVE handshake"):  # later calls fail at once too
        stranger.ping()


def test_a_client_key_not_allowed_is_refused_and_counted(pair: ServicePair, keys: Keys) -> None:
    stranger = pair.new_client(curve=keys.client_curve(client=keys.stranger), **PATIENT)
    with pytest.raises(AuthenticationError, match=r"CURVE handshake with tcp://127\.0\.0\.1:\d+ refused: the service "
                                                  r"does not allow this client's public key \(ZAP status 400\)"):
        stranger.call("/echo")
    wait_until(lambda: refused_handshakes(pair) >= 1, "the service to count the refused handshake")
    assert pair.connection.stats["served"] == 0
    assert pair.client.call("/echo").ok  # the allowed client is not disturbed


def test_a_client_without_curve_gets_nothing_delivered(pair: ServicePair) -> None:
    raw = pair.context.socket(zmq.DEALER)  # the NULL mechanism: no keys
    events = raw.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)  # (watched before it connects)
    try:
        raw.connect(pair.address)
        raw.send_multipart(signed_request(Signer(PASSPHRASE), "/echo"))  # signed with the right passphrase
        assert events.poll(int(WAIT * 1000)), "no handshake failure reported"
        failure = parse_monitor_message(events.recv_multipart())
        assert failure["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    finally:
        raw.disable_monitor()
        events.close(linger=0)
        raw.close(linger=0)
    wait_until(lambda: refused_handshakes(pair) >= 1, "the service to count the refused handshake")
    info = pair.client.ping()  # one connection that works, after the one that did not
    assert info["served"] == 0
    assert not {"forged", "malformed", "expired"} & set(info["stats"])  # nor did it reach the envelope checks
    plain = pair.new_client(**PATIENT)
    with pytest.raises(AuthenticationError, match="the service requires CURVE and this client has no keys"):
        plain.call("/echo")


def test_a_curve_client_of_a_service_without_curve_is_refused(keys: Keys) -> None:
    with ServicePair(ROUTES, PASSPHRASE, address="tcp://127.0.0.1:*") as pair:
        client = pair.new_client(curve=keys.client_curve(), **PATIENT)
        with pytest.raises(AuthenticationError, match="refused: the service does not use CURVE"):
            client.call("/echo")


def test_refusals_are_logged_once_by_the_client_and_at_a_bounded_rate_by_the_service(
        pair: ServicePair, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    stranger = pair.new_client(curve=keys.client_curve(server=keys.stranger), **PATIENT)
    with pytest.raises(AuthenticationError):
        stranger.call("/echo")
    wait_until(lambda: refused_handshakes(pair) >= 6, "libzmq to retry the handshake a few times")
    by_client = [r for r in caplog.records if r.name == "brubeckservice.pool" and "refused us" in r.message]
    by_service = [r for r in caplog.records if r.name == "brubeckservice.server" and "failed to decrypt" in r.message]
    assert len(by_client) == 1
    assert by_client[0].levelno == logging.WARNING
    assert len(by_service) == 1  # the next ones are counted, and summed up in one line 10 s later


# -- rotation -------------------------------------------------------------------------------------------

def test_a_client_key_added_to_the_directory_is_accepted_without_a_restart(pair: ServicePair, keys: Keys) -> None:
    newcomer = pair.new_client(curve=keys.client_curve(client=keys.stranger), **PATIENT)
    with pytest.raises(AuthenticationError, match="does not allow this client's public key"):
        newcomer.call("/echo")
    shutil.copy(keys.stranger.public_file, keys.clients / "stranger.key")
    # libzmq gives a refused connection up; the client tries again itself, 1 s later at first.
    wait_until(lambda: newcomer.workers[0].state == "alive", "the client to be let in", timeout=WAIT + 2)
    assert newcomer.call("/echo", arguments={"RETURN_DATA": "in"}).body["RETURN_DATA"] == "in"
    (keys.clients / "client.key").unlink()  # and a key removed is refused at the next handshake
    late = pair.new_client(curve=keys.client_curve(), **PATIENT)
    with pytest.raises(AuthenticationError, match="does not allow this client's public key"):
        late.call("/echo")
    assert pair.client.call("/echo").ok  # a connection already open stays open


def test_the_next_server_key_is_served_on_a_second_address(keys: Keys) -> None:
    curve = CurveServer(keys.server.secret_file, keys.clients, next_secret_file=keys.next_server.secret_file,
                        next_bind="tcp://127.0.0.1:*")
    with ServicePair(ROUTES, PASSPHRASE, address="tcp://127.0.0.1:*", curve=curve,
                     client_curve=keys.client_curve()) as pair:
        current, upcoming = pair.connection.bound
        assert current == pair.address and upcoming != current
        assert pair.client.call("/echo").ok  # the current key on the first address
        switched = ServiceClient(upcoming, None, PASSPHRASE, context=pair.context,
                                 curve=keys.client_curve(server=keys.next_server), **PATIENT)
        mixed_up = ServiceClient(current, None, PASSPHRASE, context=pair.context,
                                 curve=keys.client_curve(server=keys.next_server), **PATIENT)
        # During the window a client may list both addresses: the one its key fits serves its calls.
        both = ServiceClient([current, upcoming], None, PASSPHRASE, context=pair.context,
                             curve=keys.client_curve(server=keys.next_server), **PATIENT)
        try:
            assert switched.call("/echo").ok
            with pytest.raises(AuthenticationError, match="CURVE handshake"):
                mixed_up.call("/echo")
            for _ in range(3):
                assert both.call("/echo").ok
            wait_until(lambda: {w.address: w.state for w in both.workers} == {current: "refused", upcoming: "alive"},
                       "each worker's state")
        finally:
            for client in (switched, mixed_up, both):
                client.close(timeout=0)


def test_libzmq_copies_a_listeners_key_when_it_binds(keys: Keys) -> None:
    """The fact the second address rests on, with pyzmq alone: keys set after a bind leave it alone."""
    server, upcoming = CurveServer(keys.server.secret_file), CurveServer(keys.next_server.secret_file)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        router.setsockopt(zmq.CURVE_SERVER, 1)
        CurveServer.use_key(router, server.keys)
        first = router.bind_to_random_port("tcp://127.0.0.1")
        CurveServer.use_key(router, upcoming.keys)
        second = router.bind_to_random_port("tcp://127.0.0.1")
        outcome = {}
        for port in (first, second):
            for name, server_key in (("server", keys.server), ("next", keys.next_server)):
                outcome[port, name] = _handshake(context, port, keys.client_curve(server=server_key))
        assert outcome == {(first, "server"): True, (first, "next"): False,
                           (second, "server"): False, (second, "next"): True}
    finally:
        router.close(linger=0)
        context.destroy(linger=0)


def _handshake(context: zmq.Context[zmq.Socket[bytes]], port: int, curve: CurveClient) -> bool:
    dealer = context.socket(zmq.DEALER)
    curve.apply(dealer)
    monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        assert monitor.poll(int(WAIT * 1000)), "no handshake event"
        return bool(parse_monitor_message(monitor.recv_multipart())["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED)
    finally:
        dealer.disable_monitor()
        monitor.close(linger=0)
        dealer.close(linger=0)


# -- set-up -----------------------------------------------------------------------------------------------

def test_one_context_has_one_zap_handler(keys: Keys) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    first = ServiceConnection("tcp://127.0.0.1:*", None, PASSPHRASE, context=context,
                              curve=CurveServer(keys.server.secret_file, keys.clients))
    try:
        with pytest.raises(ConfigurationError, match="has a ZAP handler already"):
            ServiceConnection("tcp://127.0.0.1:*", None, PASSPHRASE, context=context,
                              curve=CurveServer(keys.server.secret_file, keys.clients))
    finally:
        first.close()
        context.destroy(linger=0)


def test_curve_is_refused_on_inproc_which_has_no_handshake(keys: Keys) -> None:
    with pytest.raises(ConfigurationError, match=r"CURVE does not apply to inproc://"):
        ServiceConnection("inproc://svc", None, PASSPHRASE, curve=CurveServer(keys.server.secret_file, keys.clients))
    with pytest.raises(ConfigurationError, match=r"CURVE does not apply to inproc://"):
        ServiceConnection("tcp://127.0.0.1:*", None, PASSPHRASE, curve=CurveServer(
            keys.server.secret_file, next_secret_file=keys.next_server.secret_file, next_bind="inproc://next"))


@pytest.mark.parametrize(("address", "curve", "warned"), [
    ("tcp://0.0.0.0:*", False, True),
    ("tcp://*:*", False, True),
    ("tcp://127.0.0.1:*", False, False),
    ("ipc://{tmp}/svc", False, False),
    ("tcp://0.0.0.0:*", True, False),
])
def test_a_service_other_hosts_can_reach_without_curve_logs_one_warning(
        keys: Keys, short_tmp: Path, caplog: pytest.LogCaptureFixture, address: str, curve: bool,
        warned: bool) -> None:
    caplog.set_level(logging.INFO, logger="brubeckservice")
    connection = ServiceConnection(address.format(tmp=short_tmp), None, PASSPHRASE,
                                   curve=CurveServer(keys.server.secret_file, keys.clients) if curve else None)
    connection.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    if warned:
        assert len(warnings) == 1
        assert "signed but not encrypted, and any host that reaches the port can connect" in warnings[0].message
    else:
        assert warnings == []


# -- what a failed handshake means to a client ------------------------------------------------------------

NO_DETAIL, PROTOCOL, AUTH = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                             zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@pytest.mark.parametrize(("event", "value", "using_curve", "reason", "definite"), [
    (AUTH, 400, True, "does not allow this client's public key", True),
    (AUTH, 400, False, "authenticator answered ZAP status 400", True),
    (AUTH, 500, True, "authenticator answered ZAP status 500", True),
    (PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, True, "does not use CURVE", True),
    (PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, False, "requires CURVE", True),
    (PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, True, "failed to decrypt", True),
    (PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO, True, None, None),
    (NO_DETAIL, 32, True, "closed the connection during the handshake", False),  # EPIPE: a wrong server key
    (NO_DETAIL, 104, True, "closed the connection during the handshake", False),  # ECONNRESET
    (NO_DETAIL, 11, True, None, None),  # EAGAIN: the handshake timed out (a stopped process)
    (NO_DETAIL, 32, False, None, None),  # no CURVE: a peer that went away
])
def test_handshake_failures_as_a_client_reads_them(event: int, value: int, using_curve: bool, reason: str | None,
                                                   definite: bool | None) -> None:
    failure = handshake_failure(event, value, using_curve)
    if reason is None:
        assert failure is None
    else:
        assert failure is not None
        assert reason in failure.reason
        assert failure.definite is definite
