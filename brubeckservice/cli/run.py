"""`brubeck-service run FILE`: N worker processes of a service app, under a Supervisor (supervisor.py)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brubeckservice.addresses import BIND_ENV, INDEX_ENV, WORKERS_ENV, worker_addresses
from brubeckservice.cli.conventions import FAILURE, Commands, positive_int, seconds
from brubeckservice.supervisor import KILL_MARGIN, Supervisor, SupervisorError

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


def add_run(commands: Commands) -> None:
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
