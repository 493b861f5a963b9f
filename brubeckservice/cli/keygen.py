"""`brubeck-service keygen NAME`: a CURVE key pair in pyzmq's certificate files (curve.py)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from brubeck.errors import ConfigurationError
from brubeckservice.cli.conventions import FAILURE, OK, Commands
from brubeckservice.curve import write_keypair

KEYGEN_EPILOG = """\
files (pyzmq's certificate format, zmq.auth.load_certificate):
  DIR/NAME.key         the public key (mode 0644): give it to the other side
  DIR/NAME.key_secret  the key pair (mode 0600): keep it on this host

use:
  a service:  ServiceConnection(..., curve=CurveServer("DIR/server.key_secret",
                                                       clients="DIR/clients"))
  a client:   ServiceClient(..., curve=CurveClient("DIR/server.key",
                                                   "DIR/web-1.key_secret"))
  and copy each client's NAME.key into the service's clients directory
  (read at each handshake: no restart). docs/security.md §5: rotation.

exit status:
  0 written, 1 the files exist (without --force) or cannot be written,
  2 usage error
"""


def add_keygen(commands: Commands) -> None:
    parser = commands.add_parser(
        "keygen", help="make a CURVE key pair for a service or a client", epilog=KEYGEN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make a ZeroMQ CURVE key pair: NAME.key (public) and NAME.key_secret (secret) in DIR.")
    parser.add_argument("name", metavar="NAME", help="the files' base name, e.g. server or web-1")
    parser.add_argument("--dir", "-d", metavar="DIR", type=Path, default=Path("."),
                        help="where to write them (made, mode 0700, when missing; default: .)")
    parser.add_argument("--force", action="store_true", help="replace NAME.key and NAME.key_secret if they exist")
    parser.set_defaults(handler=keygen, check=check_keygen)


def check_keygen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name) or args.name.endswith((".key", ".key_secret")):
        parser.error(f"NAME {args.name!r}: a plain base name (letters, digits, '.', '_', '-'), without "
                     "'.key': keygen writes NAME.key and NAME.key_secret")


def keygen(args: argparse.Namespace) -> int:
    try:
        files = write_keypair(args.dir, args.name, force=args.force)
    except (OSError, ConfigurationError) as exc:
        print(f"brubeck-service keygen: {exc}", file=sys.stderr)
        return FAILURE
    print(f"wrote {files.public_file} (the public key: give it to the other side)")
    print(f"wrote {files.secret_file} (the key pair, mode 0600: keep it on this host)")
    print(f"public key: {files.public_key}")
    return OK
