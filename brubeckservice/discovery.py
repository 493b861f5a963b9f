"""Finding a service's workers in DNS: `tcp://NAME:PORT` and `srv://NAME` -> the addresses to connect to.

docs/protocol.md §8: an address whose host is a DNS name stands for every A and AAAA record of that name,
`srv://NAME` for every SRV record of NAME (its target's addresses, at its port). A client resolves such
addresses with `Resolver.resolve`, connects to each concrete address, and re-resolves every few seconds.

Strategy:

- Not libzmq's own resolution: given `tcp://NAME:PORT`, libzmq resolves NAME and connects to the first
  address only (zeromq/libzmq#2297), so a name with three workers behind it would reach one. We resolve and
  hand libzmq IP literals.
- Not `getaddrinfo`: it knows no SRV records, and it asks only the servers the system is configured with,
  so neither a test nor an app can point it at a given server and port. dnspython does both.
- Never block the gevent hub: apps here are not monkey-patched, so dnspython's sockets are the standard
  blocking ones. Every query runs in the hub's native threadpool and the calling greenlet waits for its
  result while the others run; the A and AAAA queries of a name go out at once. One query is bounded by
  `timeout` (dnspython's lifetime; each attempt gets half of it, so one lost datagram is retried).
- No cache: each call asks the server (TTLs here are a few seconds at most; the caller's period rules).

What an answer means (the caller keeps its previous view on a `ResolutionError`, so a partial answer must
never pass for a complete one):

- `tcp://NAME:PORT`: every A and AAAA record; a name with only one of the two is fine. NXDOMAIN, a timeout
  or a server failure for either type is an error, and so is a name with neither ("no answer").
- `srv://NAME`: every SRV record's target and port; priority and weight are not used (the client chooses
  among workers by their capacity). A target's addresses come from the additional section when the server
  sent them there, else from A and AAAA queries. A target of "." (RFC 2782: no service here) or one that
  has no address is left out; a target whose lookup times out or fails is an error. No address at all is
  "no answer".
- IPv6 addresses come back as `tcp://[fd00::5]:6000`; libzmq connects to those only from a socket with
  `zmq.IPV6` set.
- `nameservers=None` is the system's configuration (/etc/resolv.conf, with its search list and ndots, as
  getaddrinfo applies them), not /etc/hosts, which dnspython does not read; only `localhost` and names
  under it (RFC 6761 §6.3) are answered without a query: 127.0.0.1 and ::1.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.IN.SRV
import dns.resolver
import dns.rrset
import gevent

from brubeckservice.errors import ResolutionError

__all__ = ["Resolver", "needs_resolving"]

TCP = "tcp://"
SRV = "srv://"

# RFC 6761 §6.3: these names are the loopback host, whatever a DNS server says.
_LOOPBACK = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class _Tcp:
    """`tcp://[SOURCE;]HOST:PORT` (libzmq's grammar: an optional source address before ';')."""

    source: str  # "" or "SOURCE;"
    host: str  # brackets of an IPv6 literal removed
    port: str


def _parse_tcp(address: str) -> _Tcp:
    source, sep, remote = address[len(TCP):].rpartition(";")
    host, colon, port = remote.rpartition(":")
    if not colon:
        host, port = remote, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return _Tcp(source + sep, host, port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def needs_resolving(address: str) -> bool:
    """True for `srv://NAME`, and for `tcp://HOST:PORT` whose HOST is a DNS name (`localhost` is one); False
    for IP literals, `*`, an empty host (`tcp://:6001`) and every other transport (ipc://, inproc://...)."""
    if address.startswith(SRV):
        return True
    if not address.startswith(TCP):
        return False
    host = _parse_tcp(address).host
    return bool(host) and host != "*" and not _is_ip(host)


def _endpoint(source: str, ip: str, port: str | int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{TCP}{source}{host}:{port}"


def _is_loopback_name(name: str) -> bool:
    labels = name.lower().rstrip(".").split(".")
    return labels[-1] == "localhost"


class Resolver:
    """Resolves service addresses against `nameservers` on `port` (None: the system's configuration).

    `timeout` bounds one query, in seconds: an SRV address waits for its SRV query, then for its targets'
    A and AAAA queries, so at most twice that.
    """

    def __init__(self, nameservers: Sequence[str] | None = None, port: int = 53, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout}")
        if isinstance(nameservers, str):
            raise TypeError(f"nameservers must be a sequence of addresses, not the string {nameservers!r}")
        self.timeout = timeout
        self.port = port
        self._system = nameservers is None
        # Configured once here, then only read: one dnspython Resolver serves the threadpool's threads.
        self._dns = dns.resolver.Resolver(configure=self._system)
        if nameservers is not None:
            if not nameservers:
                raise ValueError("nameservers must name at least one server (None: the system's)")
            self._dns.nameservers = [str(ipaddress.ip_address(server)) for server in nameservers]
        self._dns.port = port
        self._dns.lifetime = timeout
        self._dns.timeout = timeout / 2
        self.nameservers: list[str] = [str(server) for server in self._dns.nameservers]

    @property
    def server(self) -> str:
        """The servers asked, for messages: `127.0.0.1:5353`, `[::1]:53`, comma-separated."""
        return ", ".join(f"[{ip}]:{self.port}" if ":" in ip else f"{ip}:{self.port}" for ip in self.nameservers)

    def resolve(self, address: str) -> list[str]:
        """The concrete addresses `address` stands for, sorted and without duplicates (`tcp://10.0.0.5:6000`,
        `tcp://[fd00::5]:6000`); `[address]` itself when it needs no resolving. Raises `ResolutionError`
        (see the module's docstring for what counts as one), and `ValueError` for a malformed address."""
        _check(address)
        if address.startswith(SRV):
            return self._resolve_srv(address[len(SRV):])
        if not needs_resolving(address):
            return [address]
        parsed = _parse_tcp(address)
        return sorted({_endpoint(parsed.source, ip, parsed.port) for ip in self._addresses(parsed.host)})

    def resolve_all(self, addresses: Iterable[str]) -> dict[str, list[str] | ResolutionError]:
        """`resolve` for each address at once (one greenlet each): address -> its concrete addresses, or the
        `ResolutionError` that it raised. A malformed address raises `ValueError` before any query."""
        unique = list(dict.fromkeys(addresses))
        for address in unique:
            _check(address)
        jobs = {address: gevent.spawn(self._resolve_or_error, address) for address in unique}
        try:
            gevent.joinall(list(jobs.values()), raise_error=True)
        finally:
            gevent.killall(list(jobs.values()), block=False)
        return {address: job.value for address, job in jobs.items()}

    # -- internals ------------------------------------------------------------------------------------------

    def _resolve_or_error(self, address: str) -> list[str] | ResolutionError:
        try:
            return self.resolve(address)
        except ResolutionError as exc:
            return exc

    def _resolve_srv(self, name: str) -> list[str]:
        answer = self._ask_all([(name, "SRV")])[0]
        if isinstance(answer, ResolutionError):
            raise answer
        records = [(rdata.target, rdata.port) for rdata in answer or () if isinstance(rdata, dns.rdtypes.IN.SRV.SRV)]
        records = [(target, port) for target, port in records if target != dns.name.root]
        if not records:
            raise self._error(name, "SRV", "no answer", "no SRV record with a target")
        known = _additional_addresses(answer) if answer is not None else {}
        unknown = sorted({target for target, _ in records if target not in known})
        looked_up = self._ask_all([(target.to_text(), rdtype) for target in unknown for rdtype in ("A", "AAAA")])
        for index, target in enumerate(unknown):
            found = self._combine(target.to_text(), looked_up[2 * index: 2 * index + 2], missing_ok=True)
            known[target] = set(found)
        endpoints = {_endpoint("", ip, port) for target, port in records for ip in known[target]}
        if not endpoints:
            raise self._error(name, "SRV", "no answer", "no SRV target has an A or AAAA record")
        return sorted(endpoints)

    def _addresses(self, name: str) -> list[str]:
        """Every A and AAAA record of `name` (at least one), or `ResolutionError`."""
        if self._system and _is_loopback_name(name):
            return list(_LOOPBACK)
        return self._combine(name, self._ask_all([(name, "A"), (name, "AAAA")]), missing_ok=False)

    def _combine(self, name: str, answers: list[_Answer], *, missing_ok: bool) -> list[str]:
        """The addresses in the A and AAAA answers of `name`. An error in either is raised, except that with
        `missing_ok` a name without any address (NXDOMAIN, or no record) gives []."""
        errors = [answer for answer in answers if isinstance(answer, ResolutionError)]
        if missing_ok and all(error.reason == "NXDOMAIN" for error in errors):
            errors = []
        if errors:
            raise next((error for error in errors if error.reason == "NXDOMAIN"), errors[0])
        found = [_address(rdata) for answer in answers if isinstance(answer, dns.resolver.Answer) for rdata in answer]
        if not found and not missing_ok:
            raise self._error(name, "A/AAAA", "no answer")
        return [ip for ip in found if ip is not None]

    def _ask_all(self, questions: list[tuple[str, str]]) -> list[_Answer]:
        """Send every (name, type) query at once from the hub's threadpool, and wait for all the answers."""
        pool = gevent.get_hub().threadpool
        pending = [pool.spawn(self._ask, name, rdtype) for name, rdtype in questions]
        return [result.get() for result in pending]

    def _ask(self, name: str, rdtype: str) -> _Answer:
        """One query, in a threadpool thread. It returns its error rather than raising it: the threadpool
        would report an exception raised here to the hub's error handler, as if it were a crash."""
        try:
            return self._dns.resolve(name, rdtype, search=self._system)
        except dns.resolver.NXDOMAIN:
            return self._error(name, rdtype, "NXDOMAIN")
        except dns.resolver.NoAnswer:
            return None
        except dns.exception.Timeout:
            return self._error(name, rdtype, "timeout", f"no reply within {self.timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            return self._error(name, rdtype, "server failure", str(exc))
        except Exception as exc:  # anything else dnspython raises (a malformed name...) is this name's error
            return self._error(name, rdtype, "failed", f"{type(exc).__name__}: {exc}")

    def _error(self, name: str, rdtype: str, reason: str, detail: str = "") -> ResolutionError:
        return ResolutionError(name, rdtype, reason, self.server, detail)


# One query's outcome: its answer, None for "no record of that type", or the error it met.
_Answer = dns.resolver.Answer | ResolutionError | None


def _address(rdata: object) -> str | None:
    """The address of an A or AAAA rdata (normalised: `fd00::5`), None for any other record in the answer."""
    address = getattr(rdata, "address", None)
    return str(ipaddress.ip_address(address)) if isinstance(address, str) else None


def _additional_addresses(answer: dns.resolver.Answer) -> dict[dns.name.Name, set[str]]:
    """The A and AAAA records that the server put in the additional section of an SRV answer, by name."""
    found: dict[dns.name.Name, set[str]] = {}
    for rrset in answer.response.additional:
        if isinstance(rrset, dns.rrset.RRset) and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses = {ip for ip in map(_address, rrset) if ip is not None}
            found.setdefault(rrset.name, set()).update(addresses)
    return found


def _check(address: str) -> None:
    """ValueError for an address `resolve` cannot take."""
    if address.startswith(SRV):
        name = address[len(SRV):]
        if not name or "/" in name or ":" in name:
            raise ValueError(f"{address!r}: expected srv://NAME, e.g. srv://_workers._tcp.example.com")
    elif needs_resolving(address):
        port = _parse_tcp(address).port
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"{address!r}: expected tcp://NAME:PORT, with a port from 1 to 65535")
