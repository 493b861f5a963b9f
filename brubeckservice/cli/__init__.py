"""`brubeck-service`, the command line (also `python -m brubeckservice`).

    brubeck-service run FILE [--workers N] [--bind ADDR] [--grace SECONDS] [-- APP_ARG ...]
    brubeck-service keygen NAME [--dir DIR] [--force]
    brubeck-service ping ADDR [--timeout SECONDS] [--json]
    brubeck-service call ADDR PATH [METHOD] [JSON] [--timeout SECONDS] [--header NAME=VALUE] [--json]
    brubeck-service status ADDR... [--timeout SECONDS] [--json] [--watch [SECONDS]]

`ping`, `call` and `status` also take [--passphrase-file FILE] [--curve-server-key FILE --curve-key FILE]
[--verbose]; the passphrase comes from $BRUBECK_SERVICE_PASSPHRASE otherwise (client_options.py).

Exit status: 0 done (for `run`: stopped by SIGTERM or SIGINT, every worker exited), 1 failure (for `run`:
an address is already served; for `keygen`: the files exist, or cannot be written; for `ping`, `call`,
`status`: no answer, or refused), 2 usage error (argparse's own, a missing app file, a NAME that is not a
plain file name, no passphrase), 3 for `call`: an answer with status 400 or more; for `status`: some
worker, not all, is not alive.

One module per command (run.py, keygen.py, ping.py, call.py, status.py), each a function `add_NAME(commands)`
that adds its parser and sets its defaults (conventions.py says which).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from brubeck import __version__
from brubeckservice.cli.call import add_call
from brubeckservice.cli.conventions import DEGRADED, ERROR_STATUS, FAILURE, OK, USAGE, Check, Handler
from brubeckservice.cli.keygen import add_keygen
from brubeckservice.cli.ping import add_ping
from brubeckservice.cli.run import add_run
from brubeckservice.cli.status import add_status

__all__ = ["DEGRADED", "ERROR_STATUS", "FAILURE", "OK", "USAGE", "build_parser", "main"]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser, and each command's parser by name (for its usage errors)."""
    parser = argparse.ArgumentParser(
        prog="brubeck-service", description="Run and operate brubeck-service services.",
        epilog="exit status: 0 ok, 1 failure, 2 usage error, 3 an error answer (call) or some worker not alive "
               "(status). `brubeck-service COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(commands)
    add_keygen(commands)
    add_ping(commands)
    add_call(commands)
    add_status(commands)
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
    logging.basicConfig(level=getattr(args, "log_level", logging.INFO), stream=sys.stderr, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s brubeck-service: %(message)s")
    for name in getattr(args, "quiet_loggers", ()):
        logging.getLogger(name).setLevel(logging.ERROR)
    handler: Handler = args.handler
    return handler(args)
