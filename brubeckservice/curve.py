"""ZeroMQ CURVE beneath the signed envelopes: key files, the client-key allowlist, handshake failures.

Strategy (docs/protocol.md §1, "Transport security"): CURVE (RFC 26, CurveZMQ) encrypts and authenticates
each *connection*; the HMAC signatures of docs/protocol.md §5 still sign each *message* inside it. The
service's ROUTER is the CURVE server (its secret key), each client DEALER a CURVE client (the service's
public key and a key pair of its own). Keys are pyzmq certificate files (`zmq.auth.load_certificate`'s
format: `NAME.key` holds the public key, `NAME.key_secret` both), written by `brubeck-service keygen`.

Which clients may connect is decided by a ZAP handler (RFC 27) that libzmq asks at each handshake: pyzmq's
`ThreadAuthenticator`, one per ServiceConnection (libzmq has one ZAP endpoint per context), answering the
ZAP domain `brubeckservice` from the `*.key` files of a directory as they are at that handshake (a file
added is a client admitted, a file removed a client refused; connections already open stay open). It runs
in a thread of its own, so handshakes are answered while the gevent hub is busy (and, measured, it holds
the hub up neither idle nor answering, monkey-patched or not); it is only asked after the client has proved
it holds its secret key. The ROUTER sets ZMQ_ZAP_ENFORCE_DOMAIN: libzmq otherwise lets any key in while no
ZAP handler is bound.

libzmq reports a refused handshake only on the socket's monitor (measured, libzmq 4.3.5):
- a client key not in the allowlist: EVENT_HANDSHAKE_FAILED_AUTH (the ZAP status, 400) on both sides, and
  libzmq does not reconnect: the client must (pool.py does, backing off);
- a CURVE client of a service without CURVE, or the reverse: EVENT_HANDSHAKE_FAILED_PROTOCOL
  (ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) on both sides, no reconnect either;
- a client with the wrong server public key: the server fails to decrypt its HELLO
  (EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMTP_CRYPTOGRAPHIC) and closes; the client sees only
  EVENT_HANDSHAKE_FAILED_NO_DETAIL (EPIPE) and reconnects every 100-200 ms. A server that dies mid-handshake
  looks the same once, so a client takes two in a row (and no success between) as a refusal.
`handshake_failure` says what each event means to a client; `HandshakeWatch` counts and logs them on the
service, at a bounded rate.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import logging
import os
import stat
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.certs import load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from brubeck.errors import ConfigurationError
from brubeck.throttle import LogThrottle
from brubeck.transports.channel import Channel

log = logging.getLogger("brubeckservice.curve")

#: The ZAP domain (ZMQ_ZAP_DOMAIN) a service's ROUTER sets and its ZAP handler answers.
ZAP_DOMAIN = "brubeckservice"
#: The events a socket's monitor reports for a failed handshake.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

PathLike = str | os.PathLike[str]


# -- key files ------------------------------------------------------------------------------------------

def _require_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigurationError(f"this libzmq ({zmq.zmq_version()}) was built without CURVE (libsodium)")


def _z85_key(text: bytes, where: str) -> bytes:
    """A key as Z85 text (40 characters), checked."""
    try:
        if len(text) == 40 and len(z85.decode(text)) == 32:
            return text
    except (KeyError, ValueError):
        pass
    raise ConfigurationError(f"{where}: not a CURVE key (40 characters of Z85 text)")


def load_keypair(path: PathLike) -> tuple[bytes, bytes]:
    """(public, secret), Z85, from a `NAME.key_secret` certificate file."""
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read CURVE key pair {os.fspath(path)}: {exc}") from None
    if secret is None:
        raise ConfigurationError(f"{os.fspath(path)} holds a public key only: give the NAME.key_secret file")
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %04o): chmod 600 it", os.fspath(path), mode & 0o777)
    return _z85_key(public, os.fspath(path)), _z85_key(secret, os.fspath(path))


def load_public_key(key: PathLike | bytes) -> bytes:
    """A public key (Z85) given as its 40 characters of text, or as a certificate file (`NAME.key`)."""
    if isinstance(key, bytes):
        return _z85_key(key, "CURVE public key")
    text = os.fspath(key)
    if len(text) == 40 and not os.path.exists(text):
        return _z85_key(text.encode("ascii", "replace"), "CURVE public key")
    try:
        public, _ = load_certificate(text)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read CURVE public key {text}: {exc}") from None
    return _z85_key(public, text)


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """What `write_keypair` wrote."""

    public_file: Path
    secret_file: Path
    public_key: str


def write_keypair(directory: PathLike, name: str, *, force: bool = False) -> KeyFiles:
    """A new key pair as `DIR/NAME.key` (the public key, mode 0644) and `DIR/NAME.key_secret` (mode 0600),
    in pyzmq's certificate format. Raises FileExistsError when either exists, unless `force`; the secret
    file is never readable by others, not even for a moment."""
    _require_curve()
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    if not force:
        for path in (public_file, secret_file):
            if path.exists():
                raise FileExistsError(f"{path} exists already (use --force to replace it)")
    public, secret = zmq.curve_keypair()
    made = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    _write_file(secret_file, f"#   ****  Generated on {made} by brubeck-service keygen  ****\n"
                             "#   ZeroMQ CURVE **Secret** Certificate\n"
                             "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n"
                             f'{body}    secret-key = "{secret.decode()}"\n', 0o600, force)
    _write_file(public_file, f"#   ****  Generated on {made} by brubeck-service keygen  ****\n"
                             "#   ZeroMQ CURVE Public Certificate\n"
                             "#   Give it to the other side (a service's to its clients, a client's to the\n"
                             "#   service's allowlist directory).\n\n" + body, 0o644, force)
    return KeyFiles(public_file, secret_file, public.decode())


def _write_file(path: Path, text: str, mode: int, replace: bool) -> None:
    """Write `text` to `path` created with `mode`: exclusively, or (`replace`) through a new file renamed over."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        return
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# -- the two sides' settings ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CurveServer:
    """CURVE for a `ServiceConnection`: `ServiceConnection(..., curve=CurveServer("keys/server.key_secret",
    clients="keys/clients"))`.

    `secret_file`: the service's key pair (`NAME.key_secret`). `clients`: a directory whose `*.key` files
    are the public keys of the clients allowed in, read at each handshake; None admits any client that
    knows the service's public key (encrypted, but anyone with that key may connect; the HMAC signature
    still refuses their messages). Rotation of the service's key: `next_secret_file` is a second key pair,
    served on a second address `next_bind` by the same socket (libzmq takes a listener's key when it binds).
    The files are read when this is made: a missing or malformed one is a ConfigurationError here.
    """

    secret_file: PathLike
    clients: PathLike | None = None
    next_secret_file: PathLike | None = None
    next_bind: str | None = None
    keys: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)
    next_keys: tuple[bytes, bytes] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_curve()
        if (self.next_secret_file is None) != (self.next_bind is None):
            raise ConfigurationError("next_secret_file and next_bind go together: the next key is served on an "
                                     "address of its own")
        if self.clients is not None and not os.path.isdir(self.clients):
            raise ConfigurationError(f"CURVE clients directory {os.fspath(self.clients)}: no such directory")
        object.__setattr__(self, "keys", load_keypair(self.secret_file))
        nxt = load_keypair(self.next_secret_file) if self.next_secret_file is not None else None
        object.__setattr__(self, "next_keys", nxt)

    @property
    def public_key(self) -> str:
        return self.keys[0].decode()

    def secure(self, sock: zmq.Socket[bytes], context: zmq.Context[Any]) -> Gatekeeper:
        """Make `sock` (before its first bind) a CURVE server with the current key, and start the ZAP handler
        of `context` that admits the clients; returns it, to close with the socket."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        self.use_key(sock, self.keys)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        # Without it, libzmq admits every client while no ZAP handler answers (measured, 4.3.5).
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        return Gatekeeper(context, Allowlist(self.clients) if self.clients is not None else None)

    @staticmethod
    def use_key(sock: zmq.Socket[bytes], keys: tuple[bytes, bytes]) -> None:
        """The key pair the socket's next bind serves (libzmq copies it into the listener then)."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])


@dataclass(frozen=True, slots=True)
class CurveClient:
    """CURVE for a `ServiceClient` (and `register_service(..., curve=...)`):
    `CurveClient("keys/server.key", "keys/web-1.key_secret")`.

    `server_key`: the service's public key, as its certificate file (`NAME.key`) or its 40 characters of
    Z85 text. `secret_file`: this client's key pair, whose public half must be in the service's allowlist.
    """

    server_key: PathLike | bytes
    secret_file: PathLike
    server_public: bytes = field(init=False, repr=False, compare=False)
    keys: tuple[bytes, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_curve()
        object.__setattr__(self, "server_public", load_public_key(self.server_key))
        object.__setattr__(self, "keys", load_keypair(self.secret_file))

    @property
    def public_key(self) -> str:
        return self.keys[0].decode()

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` (before it connects) a CURVE client of the service."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys[1])


# -- the service's side: who may connect ----------------------------------------------------------------

class Allowlist:
    """The client public keys in the `*.key` files of a directory, as they are now.

    Each check lists the directory (names, sizes and modification times, a few microseconds for tens of
    files) and reads the files again when that listing changed; a key it does not know makes it read them
    again anyway when it last did so over a second ago (a file rewritten within the file system's clock
    tick keeps its time). Thread-safe: checks come from the ZAP thread, `keys()` from anywhere."""

    def __init__(self, directory: PathLike) -> None:
        self.directory = os.fspath(directory)
        self._lock = threading.Lock()
        self._listing: frozenset[tuple[str, int, int]] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._read_at = 0.0

    def admits(self, key: bytes) -> bool:
        """Whether the public key `key` (Z85) is allowed in now."""
        with self._lock:
            listing = self._list()
            if listing != self._listing or (key not in self._keys and time.monotonic() - self._read_at >= 1.0):
                self._read(listing)
            return key in self._keys

    def keys(self) -> frozenset[bytes]:
        with self._lock:
            listing = self._list()
            if listing != self._listing:
                self._read(listing)
            return self._keys

    def _list(self) -> frozenset[tuple[str, int, int]]:
        try:
            with os.scandir(self.directory) as entries:
                return frozenset((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                                 if e.name.endswith(".key") and e.is_file())
        except OSError as exc:
            log.error("cannot list the CURVE clients directory %s: %s; refusing every client", self.directory, exc)
            return frozenset()

    def _read(self, listing: frozenset[tuple[str, int, int]]) -> None:
        found = set()
        for name, _, _ in sorted(listing):
            path = os.path.join(self.directory, name)
            try:
                public, _ = load_certificate(path)
                found.add(_z85_key(public, path))
            except (OSError, ValueError, ConfigurationError) as exc:
                log.warning("skipped %s in the CURVE clients directory: %s", path, exc)
        if listing != self._listing and self._listing is not None:
            log.info("CURVE clients directory %s: %d keys", self.directory, len(found))
        self._listing, self._keys, self._read_at = listing, frozenset(found), time.monotonic()


@dataclass(frozen=True, slots=True)
class Denial:
    """The last client the ZAP handler refused: its address and public key (Z85)."""

    peer: str
    key: str


class _ZapThread(ThreadAuthenticator):
    """pyzmq's ZAP handler thread, noting each request's peer address for the log."""

    peer = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self.peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)


class Gatekeeper:
    """The ZAP handler of one ServiceConnection's context: admits the clients of `allowlist` (None: any) in
    the domain ZAP_DOMAIN. `denied` is the last client refused (read by HandshakeWatch for its log)."""

    def __init__(self, context: zmq.Context[Any], allowlist: Allowlist | None) -> None:
        self.allowlist = allowlist
        self.denied: Denial | None = None
        self._zap = _ZapThread(context, log=logging.getLogger("brubeckservice.zap"))
        try:
            self._zap.start()
        except zmq.ZMQError as exc:
            self._zap.stop()
            raise ConfigurationError(f"cannot start the CURVE authenticator: {exc}; its context has a ZAP handler "
                                     "already (another CURVE ServiceConnection, or zmq.auth): give this "
                                     "ServiceConnection a context of its own") from None
        self._zap.configure_curve_callback(ZAP_DOMAIN, self)
        if allowlist is not None:
            log.info("CURVE clients directory %s: %d keys", allowlist.directory, len(allowlist.keys()))

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question, in its thread: may the client with public key `key` (Z85) connect?"""
        if self.allowlist is None or self.allowlist.admits(key):
            log.debug("admitted CURVE client %s from %s", key.decode(), self._zap.peer)
            return True
        self.denied = Denial(self._zap.peer, key.decode())
        return False

    def close(self) -> None:
        self._zap.stop()


# -- what a failed handshake means --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HandshakeFailure:
    """A client's reading of a failed handshake. `definite`: libzmq will not try that connection again
    itself; else it retries, and only a repeat is taken as a refusal."""

    reason: str
    definite: bool


def handshake_failure(event: int, value: int, using_curve: bool) -> HandshakeFailure | None:
    """What a client socket's monitor event `event` (with its `value`) says; None when it is not a refusal
    (a handshake cut short some other way)."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if value == 400 and using_curve:
            return HandshakeFailure("the service does not allow this client's public key (ZAP status 400): add "
                                    "its .key file to the service's clients directory", True)
        return HandshakeFailure(f"the service's authenticator answered ZAP status {value}", True)
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if using_curve:
                return HandshakeFailure("the service does not use CURVE (its ServiceConnection has no curve=)", True)
            return HandshakeFailure("the service requires CURVE and this client has no keys (give it "
                                    "curve=CurveClient(...))", True)
        if value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            return HandshakeFailure("its handshake failed to decrypt: the keys do not match", True)
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and using_curve and value in (errno.EPIPE, errno.ECONNRESET):
        return HandshakeFailure("the service closed the connection during the handshake, as it does when this "
                                "client's server key is not the service's public key", False)
    return None


class HandshakeWatch:
    """Counts each handshake a service refuses in `stats` (`handshake_refused`) and logs it, at most a line and
    a summary per kind every 10 s (brubeck.throttle). It takes a socket's monitor events through
    `on_event(event, value, endpoint)`; `monitor(sock)` reads them itself. libzmq keeps one monitor per
    socket (a second replaces the first), so whoever else reads that socket's monitor (admission.py's
    `Admission`, `extra_events=HANDSHAKE_FAILED`) hands them on instead."""

    def __init__(self, stats: Counter[str], gatekeeper: Gatekeeper | None, logger: logging.Logger) -> None:
        self.stats = stats
        self.gatekeeper = gatekeeper
        self._logger = logger
        self._log = LogThrottle(logger)
        self._sock: zmq.Socket[bytes] | None = None
        self._channel: Channel | None = None

    def monitor(self, sock: zmq.Socket[bytes]) -> None:
        """Read `sock`'s monitor (its failed handshakes), in the gevent hub, until `close()`."""
        self._sock = sock
        self._channel = Channel(sock.get_monitor_socket(HANDSHAKE_FAILED), self._on_frames, log=self._logger)

    def _on_frames(self, frames: list[bytes]) -> None:
        message = parse_monitor_message(frames)
        self.on_event(int(message["event"]), int(message["value"]), message["endpoint"].decode("utf-8", "replace"))

    def on_event(self, event: int, value: int, where: str) -> None:
        """One monitor event of the service's socket at endpoint `where`."""
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            denied = self.gatekeeper.denied if self.gatekeeper is not None else None
            who = f"client key {denied.key} from {denied.peer}" if denied is not None else "a client"
            allowlist = self.gatekeeper.allowlist if self.gatekeeper is not None else None
            place = f"in {allowlist.directory}" if allowlist is not None else "allowed"
            self._refused("not allowed", "refused a CURVE handshake on %s: %s is not %s (ZAP status %d)", where,
                          who, place, value)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self._refused("no CURVE", "refused a connection on %s without CURVE (a client with no curve= keys, "
                              "or not a brubeck-service client)", where)
            elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                self._refused("wrong key", "refused a CURVE handshake on %s that failed to decrypt (a client given "
                              "another server key than this service's public key?)", where)
            else:
                self._refused("protocol", "refused a handshake on %s: ZMTP protocol error 0x%08x", where, value)

    def _refused(self, kind: str, msg: str, *args: object) -> None:
        self.stats["handshake_refused"] += 1
        self._log.log(logging.WARNING, f"handshake refused ({kind})", msg, *args)

    def close(self) -> None:
        self._log.close()
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
        if self._channel is not None:
            self._channel.close(linger=0)
        self._sock = self._channel = None
