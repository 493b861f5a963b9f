"""`brubeck-service`, the command line (also `python -m brubeckservice`).

    brubeck-service run FILE [--workers N] [--bind ADDR] [--grace SECONDS] [-- APP_ARG ...]
    brubeck-service keygen NAME [--dir DIR] [--force]

Exit status: 0 done (for `run`: stopped by SIGTERM or SIGINT, every worker exited), 1 failure (for `run`:
an address is already served; for `keygen`: the files exist, or cannot be written), 2 usage error
(argparse's own, a missing app file, a NAME that is not a plain file name).

Each command is a function `add_NAME(commands)` that adds its parser and sets, as its defaults, `handler`
(parsed arguments -> exit status) and optionally `check` (what argparse cannot check alone; calls
`parser.error`) and `passthrough_ok` (it takes arguments after `--`, as `args.passthrough`).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from brubeck import __version__
from brubeck.errors import ConfigurationError
from brubeckservice.addresses import BIND_ENV, INDEX_ENV, WORKERS_ENV, worker_addresses
from brubeckservice.curve import write_keypair
from brubeckservice.supervisor import KILL_MARGIN, Supervisor, SupervisorError

#: Exit statuses: done, failed, used wrongly (argparse exits with 2 itself).
OK, FAILURE, USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
Check = Callable[[argparse.ArgumentParser, argparse.Namespace], None]


def positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text}: pick 0 to 86400 seconds")
    return value


# -- run ----------------------------------------------------------------------------------------------

RUN_EPILOG = f"""\
addresses:
  worker i binds tcp://HOST:(PORT+i); or ipc://PATH for worker 0 and
  ipc://PATH.i for the others (a relative PATH is made absolute). A client
  given ADDR reaches worker 0 and learns the others from its PONG.
  Without --bind the single worker binds the app's own address.

environment of each worker (`python FILE [APP_ARG ...]`):
  {BIND_ENV}     the address it binds
  {WORKERS_ENV}  every worker's address, comma-separated
                           (a tcp wildcard host is written tcp://:PORT)
  {INDEX_ENV}     its number, 0 to N-1

signals:
  SIGHUP          restart the workers one at a time: each one drains and
                  exits, and its replacement serves, before the next stops
  SIGTERM, SIGINT stop every worker (a second one kills them at once)
  A worker that dies is restarted after 0.1 s, doubling to 5 s while it
  keeps dying. On Linux, workers get SIGTERM if the supervisor is killed.

exit status:
  0 stopped by SIGTERM or SIGINT, 1 failure (an address already served),
  2 usage error
"""


def add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "run", help="run N worker processes of a service app", epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [-h] [--workers N] [--bind ADDR] [--grace SECONDS] FILE [-- APP_ARG ...]",
        description="Run N worker processes of a service app (a script that builds a Brubeck app with a\n"
                    "ServiceConnection and calls app.run()), restart the ones that die, roll them on SIGHUP.")
    parser.add_argument("file", metavar="FILE", type=Path, help="the app script, run as `python FILE`")
    parser.add_argument("--workers", "-w", metavar="N", type=positive_int, default=1,
                        help="how many worker processes (default 1; more than 1 needs --bind)")
    parser.add_argument("--bind", "-b", metavar="ADDR",
                        help="worker 0's address, tcp://HOST:PORT or ipc://PATH (default: the app's own)")
    parser.add_argument("--grace", metavar="SECONDS", type=seconds, default=30.0,
                        help=f"how long a stopping worker may drain its calls before SIGKILL, plus a {KILL_MARGIN:g} "
                             "s margin (default 30)")
    parser.set_defaults(handler=run, check=check_run, passthrough_ok=True)


def run(args: argparse.Namespace) -> int:
    supervisor = Supervisor(args.file, args.workers, args.bind, grace=args.grace, app_args=args.passthrough)
    try:
        return supervisor.run()
    except SupervisorError as exc:
        log = logging.getLogger("brubeckservice.supervisor")
        log.error("cannot run %s: %s", args.file, exc)
        return FAILURE


def check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse cannot check alone: the file, and --workers with --bind."""
    if not args.file.is_file():
        parser.error(f"{args.file}: no such file" if not args.file.exists() else f"{args.file}: not a file")
    if args.bind is None and args.workers > 1:
        parser.error(f"--workers {args.workers} needs --bind ADDR: each worker binds an address of its own "
                     "(tcp://HOST:PORT, then PORT+1, ...; or ipc://PATH, then PATH.1, ...)")
    if args.bind is not None:
        try:
            worker_addresses(args.bind, args.workers)
        except ValueError as exc:
            parser.error(f"--bind {exc}")


# -- keygen -------------------------------------------------------------------------------------------

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


def add_keygen(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


# -- the program --------------------------------------------------------------------------------------


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's parser by name (for its usage errors)."""
    parser = argparse.ArgumentParser(
        prog="brubeck-service", description="Run and operate brubeck-service services.",
        epilog="exit status: 0 ok, 1 failure, 2 usage error. `brubeck-service COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(commands)
    add_keygen(commands)
    return parser, dict(commands.choices)


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the first `--`: the arguments for us, and those for the program we run. (argparse alone
    cannot take `FILE --workers 4 -- --app-flag`: it fills the app's list when it meets FILE.)"""
    items = list(argv)
    if "--" in items:
        at = items.index("--")
        return items[:at], items[at + 1:]
    return items, []


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the command; its exit status."""
    ours, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser, subparsers = build_parser()
    args = parser.parse_args(ours)
    command = subparsers[args.command]
    if passthrough and not getattr(args, "passthrough_ok", False):
        command.error(f"{args.command} takes no arguments after --")
    args.passthrough = passthrough
    check: Check | None = getattr(args, "check", None)
    if check is not None:
        check(command, args)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s brubeck-service: %(message)s")
    handler: Handler = args.handler
    return handler(args)
