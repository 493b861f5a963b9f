"""What the commands that talk to a running service (`ping`, `call`, `status`) share: who we are to it.

The passphrase never comes from the command line, where `ps` would show it to every user of the host: it is
read from $BRUBECK_SERVICE_PASSPHRASE, or from the first line of a file. The library refuses an empty one
(signing.py), so none given is a usage error, said before anything connects. These commands log at WARNING,
and hold the client's own loggers at ERROR: what those would warn of (a worker lost, a signature refused)
is what the command reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import zmq

from brubeck.errors import ConfigurationError
from brubeckservice.client import ServiceClient
from brubeckservice.curve import CurveClient
from brubeckservice.survey import POLL

#: The environment variable the passphrase is read from (the one `brubeck-service run` passes to its apps).
PASSPHRASE_ENV = "BRUBECK_SERVICE_PASSPHRASE"  # noqa: S105 (its name, not a passphrase)
#: Loggers these commands hold at ERROR unless --verbose (see the module's docstring).
CLIENT_LOGGERS = ("brubeckservice.client", "brubeckservice.pool")
SCHEMES = ("tcp", "ipc", "srv")

CONNECTING_EPILOG = f"""\
connecting:
  the passphrase comes from ${PASSPHRASE_ENV}, or from the first
  line of --passphrase-file FILE; never from the command line (ps shows it).
  --curve-server-key (the service's NAME.key) and --curve-key (this client's
  NAME.key_secret) connect with CURVE (see brubeck-service keygen).
  ADDR: tcp://HOST:PORT (a DNS name stands for each of its records),
  ipc://PATH or srv://NAME; several, comma-separated.
"""


def service_address(text: str) -> str:
    """ADDR: one address or several, comma-separated, each of a kind a client connects to."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    for address in addresses or [text]:
        if "://" not in address or urlsplit(address).scheme not in SCHEMES:
            raise argparse.ArgumentTypeError(f"{address!r}: pick tcp://HOST:PORT, ipc://PATH or srv://NAME")
    return text


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """--passphrase-file, --curve-server-key, --curve-key, --verbose; logging at WARNING."""
    group = parser.add_argument_group("connecting")
    group.add_argument("--passphrase-file", metavar="FILE", type=Path,
                       help=f"read the passphrase from FILE's first line (default: ${PASSPHRASE_ENV})")
    group.add_argument("--curve-server-key", metavar="FILE",
                       help="the service's CURVE public key (NAME.key, or its 40 characters); needs --curve-key")
    group.add_argument("--curve-key", metavar="FILE", type=Path,
                       help="this client's CURVE key pair (NAME.key_secret); needs --curve-server-key")
    group.add_argument("--verbose", "-v", action="store_true", help="log what the client sees, to stderr")
    parser.set_defaults(log_level=logging.WARNING, quiet_loggers=CLIENT_LOGGERS)


def check_client_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Read the passphrase and the CURVE keys into `args.passphrase` and `args.curve`, or fail (usage)."""
    args.passphrase = read_passphrase(parser, args.passphrase_file)
    if (args.curve_server_key is None) != (args.curve_key is None):
        parser.error("CURVE needs both --curve-server-key FILE (the service's NAME.key) and --curve-key FILE "
                     "(this client's NAME.key_secret)")
    args.curve = None
    if args.curve_key is not None:
        try:
            args.curve = CurveClient(args.curve_server_key, args.curve_key)
        except ConfigurationError as exc:
            parser.error(str(exc))
    if args.verbose:
        args.log_level, args.quiet_loggers = logging.INFO, ()


def read_passphrase(parser: argparse.ArgumentParser, path: Path | None) -> str:
    if path is None:
        passphrase = os.environ.get(PASSPHRASE_ENV, "")
        if not passphrase:
            parser.error(f"no passphrase: set ${PASSPHRASE_ENV}, or give --passphrase-file FILE")
        return passphrase
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        parser.error(f"--passphrase-file {path}: cannot read it: {reason}")
    first = text.splitlines()[0] if text else ""
    if not first:
        parser.error(f"--passphrase-file {path}: its first line is empty (the passphrase is that line)")
    return first


def open_client(args: argparse.Namespace, addresses: str | Sequence[str], **options: Any) -> ServiceClient:
    """A ServiceClient of `addresses` with the passphrase and CURVE keys of `args`; raises zmq.ZMQError for an
    address libzmq will not connect to."""
    return ServiceClient(addresses, None, args.passphrase, curve=args.curve, **options)


def wait_connected(client: ServiceClient, deadline: float) -> bool:
    """Wait until some worker of `client` has a usable connection (True), or the service refuses us or
    `deadline` (a time.monotonic() value) passes (False). The pool has no event for it: look every POLL s."""
    while not any(worker.connected for worker in client.pool.workers):
        if client.pool.refusal(wait_for_connecting=False) is not None or time.monotonic() >= deadline:
            return False
        gevent.sleep(POLL)
    return True


def unreachable(command: str, addresses: str, exc: zmq.ZMQError) -> str:
    return f"brubeck-service {command}: {addresses}: cannot connect there: {exc}"


def refusal(client: ServiceClient) -> str:
    """Why the service refuses us, for people: our CURVE key, or our signature (the passphrase)."""
    for worker in client.pool.workers:
        if worker.handshake_refused is not None:
            return (f"its CURVE handshake refused us: {worker.handshake_refused} (--curve-server-key / "
                    "--curve-key)")
    return f"the service refused our signature: wrong passphrase? ({PASSPHRASE_ENV} / --passphrase-file)"
