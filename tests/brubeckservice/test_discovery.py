"""brubeckservice.discovery: which addresses are DNS names, and what they resolve to, asked of a real dnsmasq
(brubeck.testing.dns) and of a server that never answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import gevent.event
import pytest

from brubeck.testing.dns import DnsServer
from brubeckservice import discovery
from brubeckservice.discovery import Resolver, needs_resolving
from brubeckservice.errors import ResolutionError, ServiceUnavailable

TIMEOUT = 0.5  # seconds a query may wait for the silent server


@pytest.fixture
def dns_server(dnsmasq_required: None) -> Iterator[DnsServer]:
    """A dnsmasq serving two workers behind one name, and an SRV name for three of them."""
    records = {
        "workers.test": ["10.0.0.5", "10.0.0.6", "fd00::5"],
        "w1.test": ["10.0.1.1", "fd00::1:1"],
        "w2.test": ["10.0.1.2"],
        "v6only.test": ["fd00::6"],
        "localhost": ["127.0.0.1"],
    }
    srv = [("_workers._tcp.test", "w1.test", 6000), ("_workers._tcp.test", "w2.test", 6001),
           ("_workers._tcp.test", "gone.test", 6002)]
    with DnsServer(a=records, srv=srv, cname={"alias.test": "w2.test"}) as server:
        yield server


@pytest.fixture
def resolver(dns_server: DnsServer) -> Resolver:
    return Resolver(dns_server.nameservers, dns_server.port, timeout=5.0)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that receives queries and never answers them (a hung server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


# -- which addresses are names -------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "expected"), [
    ("srv://_workers._tcp.example.com", True),
    ("tcp://workers.example.com:6000", True),
    ("tcp://localhost:6000", True),
    ("tcp://workers:6000", True),
    ("tcp://10.0.0.1;workers.example.com:6000", True),  # libzmq's source address before ';'
    ("tcp://10.0.0.5:6000", False),
    ("tcp://[fd00::5]:6000", False),
    ("tcp://[::1]:6000", False),
    ("tcp://workers.example.com;10.0.0.5:6000", False),
    ("tcp://*:6000", False),
    ("tcp://:6001", False),  # "the host you reached me by" (docs/protocol.md §8)
    ("ipc://run/slow", False),
    ("ipc://@abstract", False),
    ("inproc://workers", False),
])
def test_needs_resolving(address: str, expected: bool) -> None:
    assert needs_resolving(address) is expected


@pytest.mark.parametrize("address", ["tcp://10.0.0.5:6000", "tcp://[fd00::5]:6000", "ipc://run/slow", "inproc://x",
                                     "tcp://:6001", "tcp://*:6000"])
def test_an_address_that_needs_no_resolving_is_itself_without_a_query(address: str, silent_port: int) -> None:
    resolver = Resolver(["127.0.0.1"], silent_port, timeout=TIMEOUT)
    assert resolver.resolve(address) == [address]


@pytest.mark.parametrize("address", ["tcp://workers.test", "tcp://workers.test:", "tcp://workers.test:http",
                                     "tcp://workers.test:0", "tcp://workers.test:65536", "srv://", "srv://x.test:6000"])
def test_a_malformed_address_is_a_value_error(address: str, silent_port: int) -> None:
    resolver = Resolver(["127.0.0.1"], silent_port, timeout=TIMEOUT)
    with pytest.raises(ValueError, match="expected"):
        resolver.resolve(address)
    with pytest.raises(ValueError, match="expected"):
        resolver.resolve_all(["tcp://10.0.0.5:6000", address])


def test_nameservers_must_be_ip_addresses() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Resolver([])
    with pytest.raises(TypeError, match="sequence"):
        Resolver("127.0.0.1")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        Resolver(["dns.example.com"])
    with pytest.raises(ValueError, match="positive"):
        Resolver(["127.0.0.1"], timeout=0)


# -- A and AAAA ----------------------------------------------------------------------------------------

def test_a_name_stands_for_every_a_and_aaaa_record(resolver: Resolver) -> None:
    assert resolver.resolve("tcp://workers.test:6000") == [
        "tcp://10.0.0.5:6000", "tcp://10.0.0.6:6000", "tcp://[fd00::5]:6000"]


def test_a_name_with_only_a_or_only_aaaa_records_is_fine(resolver: Resolver) -> None:
    assert resolver.resolve("tcp://w2.test:7000") == ["tcp://10.0.1.2:7000"]
    assert resolver.resolve("tcp://v6only.test:7000") == ["tcp://[fd00::6]:7000"]


def test_a_cname_is_followed_and_a_source_address_kept(resolver: Resolver) -> None:
    assert resolver.resolve("tcp://alias.test:7000") == ["tcp://10.0.1.2:7000"]
    assert resolver.resolve("tcp://10.9.9.9;w2.test:7000") == ["tcp://10.9.9.9;10.0.1.2:7000"]


def test_localhost_is_asked_of_the_given_server(resolver: Resolver) -> None:
    assert resolver.resolve("tcp://localhost:6000") == ["tcp://127.0.0.1:6000"]


def test_localhost_is_the_loopback_host_without_a_query_under_the_system_configuration() -> None:
    # RFC 6761 §6.3: dnspython does not read /etc/hosts, where getaddrinfo would find localhost.
    assert Resolver().resolve("tcp://localhost:6000") == ["tcp://127.0.0.1:6000", "tcp://[::1]:6000"]
    assert Resolver().resolve("tcp://api.localhost:6000") == ["tcp://127.0.0.1:6000", "tcp://[::1]:6000"]


# -- SRV -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("additional", ["used", "ignored"])
def test_srv_stands_for_every_target_at_its_port(resolver: Resolver, additional: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if additional == "ignored":  # as if the server sent no additional section: A and AAAA queries per target
        monkeypatch.setattr(discovery, "_additional_addresses", lambda answer: {})
    # gone.test has no address: left out.
    assert resolver.resolve("srv://_workers._tcp.test") == [
        "tcp://10.0.1.1:6000", "tcp://10.0.1.2:6001", "tcp://[fd00::1:1]:6000"]


def test_srv_targets_missing_from_the_additional_section_are_looked_up(dns_server: DnsServer,
                                                                       resolver: Resolver) -> None:
    # dnsmasq adds no address records for a target that is a CNAME: resolving it takes its own queries.
    dns_server.set_records(srv=[("_api._tcp.test", "alias.test", 7000), ("_api._tcp.test", "w1.test", 7001)])
    assert resolver.resolve("srv://_api._tcp.test") == [
        "tcp://10.0.1.1:7001", "tcp://10.0.1.2:7000", "tcp://[fd00::1:1]:7001"]


def test_srv_records_of_one_target_at_one_port_are_one_address(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_records(srv=[("_api._tcp.test", "w2.test", 7000), ("_api._tcp.test", "alias.test", 7000)])
    assert resolver.resolve("srv://_api._tcp.test") == ["tcp://10.0.1.2:7000"]


def test_srv_whose_targets_have_no_address_is_no_answer(dns_server: DnsServer, resolver: Resolver) -> None:
    dns_server.set_records(srv=[("_api._tcp.test", "gone.test", 7000)])
    with pytest.raises(ResolutionError, match=r"_api\._tcp\.test \(SRV\): no answer") as caught:
        resolver.resolve("srv://_api._tcp.test")
    assert caught.value.reason == "no answer"


# -- records that change -------------------------------------------------------------------------------

def test_records_rewritten_mid_test_are_seen_by_the_next_resolve(dns_server: DnsServer, resolver: Resolver) -> None:
    assert resolver.resolve("tcp://workers.test:6000") == [
        "tcp://10.0.0.5:6000", "tcp://10.0.0.6:6000", "tcp://[fd00::5]:6000"]
    records = dns_server.records[0]
    records["workers.test"] = ["10.0.0.6", "10.0.0.7"]  # one worker gone, one added, no IPv6 any more
    dns_server.set_records(a=records)
    assert resolver.resolve("tcp://workers.test:6000") == ["tcp://10.0.0.6:6000", "tcp://10.0.0.7:6000"]

    dns_server.set_records(srv=[("_workers._tcp.test", "w2.test", 6001), ("_workers._tcp.test", "workers.test", 6003)])
    assert resolver.resolve("srv://_workers._tcp.test") == [
        "tcp://10.0.0.6:6003", "tcp://10.0.0.7:6003", "tcp://10.0.1.2:6001"]


# -- errors --------------------------------------------------------------------------------------------

def test_nxdomain_names_the_name_the_type_and_the_server(dns_server: DnsServer, resolver: Resolver) -> None:
    with pytest.raises(ResolutionError) as caught:
        resolver.resolve("tcp://nowhere.test:6000")
    error = caught.value
    assert isinstance(error, ServiceUnavailable)
    assert error.status_code == 503
    assert (error.name, error.reason, error.server) == ("nowhere.test", "NXDOMAIN", f"127.0.0.1:{dns_server.port}")
    assert error.rdtype in ("A", "AAAA")
    assert str(error) == f"cannot resolve nowhere.test ({error.rdtype}): NXDOMAIN (asked 127.0.0.1:{dns_server.port})"


def test_srv_nxdomain(dns_server: DnsServer, resolver: Resolver) -> None:
    with pytest.raises(ResolutionError, match=rf"cannot resolve _none\._tcp\.test \(SRV\): NXDOMAIN "
                                              rf"\(asked 127\.0\.0\.1:{dns_server.port}\)"):
        resolver.resolve("srv://_none._tcp.test")


def test_a_name_without_a_or_aaaa_records_is_no_answer(resolver: Resolver) -> None:
    # The SRV name exists, with no address of its own.
    with pytest.raises(ResolutionError, match=r"_workers\._tcp\.test \(A/AAAA\): no answer") as caught:
        resolver.resolve("tcp://_workers._tcp.test:6000")
    assert caught.value.reason == "no answer"


def test_a_silent_server_times_out_while_the_hub_keeps_running(silent_port: int) -> None:
    resolver = Resolver(["127.0.0.1"], silent_port, timeout=TIMEOUT)
    entered = gevent.event.Event()

    def query() -> list[str] | ResolutionError:
        entered.set()
        try:
            return resolver.resolve("tcp://workers.test:6000")
        except ResolutionError as exc:
            return exc

    beats = 0

    def heartbeat() -> None:  # another greenlet with work to do meanwhile
        nonlocal beats
        while True:
            beats += 1
            gevent.sleep(0.01)

    started = time.monotonic()
    ticker = gevent.spawn(heartbeat)
    job = gevent.spawn(query)
    assert entered.wait(10)
    # We run again while the job waits on its query: had the query blocked the hub, the job would have
    # finished (timed out) before this greenlet got back.
    assert not job.ready()
    job.join(30)
    ticker.kill()
    assert job.ready()
    assert beats >= 5, f"the other greenlet ran {beats} times during a {TIMEOUT} s query: the hub was blocked"
    error = job.value
    assert isinstance(error, ResolutionError)
    assert error.reason == "timeout"
    assert f"timeout: no reply within {TIMEOUT:g} s (asked 127.0.0.1:{silent_port})" in str(error)
    assert time.monotonic() - started >= TIMEOUT * 0.9


def test_a_paused_dnsmasq_times_out_and_answers_again_once_resumed(dns_server: DnsServer) -> None:
    resolver = Resolver(dns_server.nameservers, dns_server.port, timeout=TIMEOUT)
    dns_server.pause()
    try:
        with pytest.raises(ResolutionError, match=r"\(SRV\): timeout"):
            resolver.resolve("srv://_workers._tcp.test")
    finally:
        dns_server.resume()
    assert resolver.resolve("tcp://w2.test:6000") == ["tcp://10.0.1.2:6000"]


# -- many at once --------------------------------------------------------------------------------------

def test_resolve_all_gives_each_address_its_answer_or_its_error(resolver: Resolver) -> None:
    found = resolver.resolve_all(["tcp://workers.test:6000", "srv://_workers._tcp.test", "tcp://nowhere.test:1",
                                  "ipc://run/slow", "tcp://workers.test:6000"])
    assert list(found) == ["tcp://workers.test:6000", "srv://_workers._tcp.test", "tcp://nowhere.test:1",
                           "ipc://run/slow"]
    assert found["tcp://workers.test:6000"] == ["tcp://10.0.0.5:6000", "tcp://10.0.0.6:6000", "tcp://[fd00::5]:6000"]
    assert found["srv://_workers._tcp.test"] == ["tcp://10.0.1.1:6000", "tcp://10.0.1.2:6001",
                                                 "tcp://[fd00::1:1]:6000"]
    assert found["ipc://run/slow"] == ["ipc://run/slow"]
    error = found["tcp://nowhere.test:1"]
    assert isinstance(error, ResolutionError)
    assert error.reason == "NXDOMAIN"
