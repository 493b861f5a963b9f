"""brubeck.testing.dns.DnsServer against the real dnsmasq: the records set and no others, changes seen by
the next query, a pause that leaves queries unanswered, loud failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from brubeck.testing import dns as testing_dns
from brubeck.testing.dns import DnsServer, DnsServerError


@pytest.fixture
def server(dnsmasq_required: None) -> Iterator[DnsServer]:
    records = {"w.test": ["10.0.0.5", "10.0.0.6", "fd00::5"], "v4.test": ["10.0.0.7"]}
    with DnsServer(a=records, srv=[("_w._tcp.test", "w.test", 6000)], cname={"alias.test": "v4.test"}) as dns_server:
        yield dns_server


def ask(server: DnsServer, name: str, rdtype: str, timeout: float = 5.0) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), server.host, timeout=timeout, port=server.port)


def answers(server: DnsServer, name: str, rdtype: str) -> list[str]:
    reply = ask(server, name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    wanted = dns.rdatatype.from_text(rdtype)  # an answer through a CNAME holds the CNAME too
    return sorted(rdata.to_text() for rrset in reply.answer if rrset.rdtype == wanted for rdata in rrset)


def test_it_serves_the_records_set_and_nxdomain_for_any_other_name(server: DnsServer) -> None:
    assert answers(server, "w.test", "A") == ["10.0.0.5", "10.0.0.6"]
    assert answers(server, "w.test", "AAAA") == ["fd00::5"]
    assert answers(server, "v4.test", "AAAA") == []  # a known name without that type: empty NOERROR
    assert answers(server, "_w._tcp.test", "SRV") == ["0 0 6000 w.test."]
    assert answers(server, "alias.test", "A") == ["10.0.0.7"]
    assert ask(server, "example.com", "A").rcode() == dns.rcode.NXDOMAIN  # nothing from upstream
    assert ask(server, "localhost", "A").rcode() == dns.rcode.NXDOMAIN  # nothing from /etc/hosts
    assert {rrset.ttl for rrset in ask(server, "w.test", "A").answer} == {0}


def test_address_changes_reload_the_same_process(server: DnsServer) -> None:
    pid = server.pid
    server.set_records(a={"w.test": ["10.0.0.8"]})
    assert answers(server, "w.test", "A") == ["10.0.0.8"]
    assert answers(server, "w.test", "AAAA") == []
    assert ask(server, "v4.test", "A").rcode() == dns.rcode.NXDOMAIN  # replaced, not merged
    assert answers(server, "_w._tcp.test", "SRV") == ["0 0 6000 w.test."]  # another kind: kept
    assert server.pid == pid


def test_srv_and_cname_changes_restart_it_on_the_same_port(server: DnsServer) -> None:
    pid, port = server.pid, server.port
    server.set_records(srv=[("_w._tcp.test", "w.test", 6001), ("_v._tcp.test", "v4.test", 7000)],
                       cname={"alias.test": "w.test"})
    assert answers(server, "_w._tcp.test", "SRV") == ["0 0 6001 w.test."]
    assert answers(server, "_v._tcp.test", "SRV") == ["0 0 7000 v4.test."]
    assert answers(server, "alias.test", "A") == ["10.0.0.5", "10.0.0.6"]
    assert answers(server, "w.test", "A") == ["10.0.0.5", "10.0.0.6"]
    assert (server.port, server.pid != pid) == (port, True)
    server.set_records(srv=[])
    assert ask(server, "_w._tcp.test", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_records_set_while_stopped_are_served_at_the_next_start(dnsmasq_required: None, tmp_path: Path) -> None:
    server = DnsServer(a={"w.test": ["10.0.0.5"]}, workdir=tmp_path)
    server.set_records(a={"w.test": ["10.0.0.9"]})
    with server:
        assert answers(server, "w.test", "A") == ["10.0.0.9"]
    assert not server.running
    assert (tmp_path / "dnsmasq.log").exists()  # a workdir of the caller's is kept, with the log
    assert "query[A] w.test" in server.log.read_text()


def test_a_paused_server_leaves_queries_unanswered_until_resumed(server: DnsServer) -> None:
    server.pause()
    try:
        with pytest.raises(dns.exception.Timeout):
            ask(server, "w.test", "A", timeout=0.3)
        with pytest.raises(DnsServerError, match="paused"):
            server.set_records(a={})
    finally:
        server.resume()
    assert answers(server, "w.test", "A") == ["10.0.0.5", "10.0.0.6"]


def test_stop_ends_the_process_and_removes_its_directory(dnsmasq_required: None) -> None:
    server = DnsServer(a={"w.test": ["10.0.0.5"]}).start()
    pid, workdir = server.pid, server.workdir
    assert pid is not None and workdir.is_dir()
    server.stop()
    server.stop()
    assert (server.pid, server.running, workdir.exists()) == (None, False, False)
    assert not Path(f"/proc/{pid}").exists() or "dnsmasq" not in Path(f"/proc/{pid}/cmdline").read_text()


def test_a_port_in_use_fails_with_dnsmasqs_reason(server: DnsServer) -> None:
    with pytest.raises(DnsServerError, match="Address already in use"):
        DnsServer(port=server.port).start()


def test_a_missing_dnsmasq_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing_dns, "dnsmasq_path", lambda: None)
    server = DnsServer()
    with pytest.raises(DnsServerError, match=r"dnsmasq is not installed \(Debian: apt-get install dnsmasq-base\)"):
        server.start()
    assert not server.workdir.exists()


@pytest.mark.parametrize(("records", "error"), [
    ({"a": {"bad name.test": ["10.0.0.1"]}}, ValueError),
    ({"a": {"w.test": ["10.0.0.300"]}}, ValueError),
    ({"a": {"w.test": "10.0.0.1"}}, TypeError),
    ({"srv": [("_w._tcp.test", "w,x.test", 6000)]}, ValueError),
    ({"srv": [("_w._tcp.test", "w.test", 70000)]}, ValueError),
    ({"cname": {"alias.test": "w.test\nno-resolv"}}, ValueError),
])
def test_malformed_records_are_refused(records: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        DnsServer(**records)  # type: ignore[arg-type]
