"""`brubeck-service status ADDR...`: each worker of a service, as a survey round judges it (survey.py)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import gevent
import zmq
from gevent.event import Event

from brubeckservice.cli.client_options import (
    CONNECTING_EPILOG,
    add_client_options,
    check_client_options,
    open_client,
    service_address,
    unreachable,
)
from brubeckservice.cli.conventions import DEGRADED, FAILURE, OK, USAGE, Commands, positive_seconds
from brubeckservice.pool import ALIVE
from brubeckservice.survey import Survey, WorkerStatus, duration_text, seconds_text

STATUS_EPILOG = f"""\
states, once each worker (the ADDRs, and the sibling workers their PONGs
list) has answered a PING or --timeout has passed (docs/protocol.md §8):
  alive     connected, and it answered
  draining  it answered, and it is draining: it takes no new calls
  busy      connected (libzmq's I/O thread finished the ZMTP handshake) but
            no answer: a handler holds its CPU, or its event loop is stuck
  dead      no connection (stopped, crashed or out of reach: a SIGSTOPped
            process accepts TCP but never finishes the handshake), or its
            connection was lost
  refused   it refuses our signature (a wrong passphrase), or our CURVE key
  leaving   its siblings no longer list it
columns, from each worker's latest PONG: IN FLIGHT its calls running and
  queued, for all its clients; P50 and P99 how long its recent requests ran
  there (without the network).

{CONNECTING_EPILOG}
exit status:
  0 every worker alive, 3 some worker not alive (degraded), 1 none alive,
  2 usage error; with --watch, 0 once stopped by Ctrl-C
"""

COLUMNS = ("WORKER", "STATE", "IN FLIGHT", "CAPACITY", "SERVED", "ERRORS", "P50", "P99", "UPTIME", "VERSION",
           "REASON")
NUMERIC = frozenset({"IN FLIGHT", "CAPACITY", "SERVED", "ERRORS", "P50", "P99", "UPTIME"})
#: What --watch writes before each table on a terminal: cursor home, clear the screen (ECMA-48).
CLEAR = "\x1b[H\x1b[2J"
SEPARATOR = "-" * 40


def add_status(commands: Commands) -> None:
    parser = commands.add_parser(
        "status", help="show each worker of a service: state, load, counters", epilog=STATUS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show each worker of a service (the ADDRs and the siblings they list): its state,\n"
                    "calls in flight, capacity, requests served, errors, latency, uptime and version.")
    parser.add_argument("addresses", metavar="ADDR", nargs="+", type=service_address, help="a worker's address")
    parser.add_argument("--timeout", "-t", metavar="SECONDS", type=positive_seconds, default=3.0,
                        help="how long each worker may take to connect and answer (default 3)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of the workers (with --watch: "
                        "one list a line)")
    parser.add_argument("--watch", "-w", metavar="SECONDS", nargs="?", type=positive_seconds, const=2.0,
                        help="show it again SECONDS after each round (default 2), until Ctrl-C")
    add_client_options(parser)
    parser.set_defaults(handler=status, check=check_client_options)


def status(args: argparse.Namespace) -> int:
    addresses = ",".join(args.addresses)
    try:
        client = open_client(args, addresses, connect_timeout=args.timeout)
    except zmq.ZMQError as exc:
        print(unreachable("status", addresses, exc), file=sys.stderr)
        return USAGE
    survey = Survey(client, args.timeout)
    try:
        if args.watch is not None:
            return watch(survey, args.watch, args.json, sys.stdout)
        workers = survey.round()
        sys.stdout.write(render(workers, args.json))
        return verdict(workers)
    finally:
        client.close(timeout=0)


def watch(survey: Survey, interval: float, as_json: bool, out: TextIO) -> int:
    """A round every `interval` seconds, each shown in place of the last on a terminal, until SIGINT."""
    stop = Event()
    interrupt = gevent.signal_handler(signal.SIGINT, stop.set)
    try:
        shown = 0
        while not stop.is_set():
            workers = survey.round(stop)
            if stop.is_set():
                break
            if as_json:
                out.write(render(workers, as_json=True))
            else:
                out.write(CLEAR if out.isatty() else (SEPARATOR + "\n" if shown else ""))
                out.write(f"{time.strftime('%H:%M:%S')}, every {seconds_text(interval)} s (Ctrl-C to stop)\n")
                out.write(render(workers, as_json=False))
            out.flush()
            shown += 1
            stop.wait(interval)
    finally:
        interrupt.cancel()
    return OK


def verdict(workers: Sequence[WorkerStatus]) -> int:
    alive = sum(1 for w in workers if w.state == ALIVE)
    if workers and alive == len(workers):
        return OK
    return DEGRADED if alive else FAILURE


def render(workers: Sequence[WorkerStatus], as_json: bool) -> str:
    if as_json:
        return json.dumps([w.as_dict() for w in workers], ensure_ascii=False) + "\n"
    alive = sum(1 for w in workers if w.state == ALIVE)
    summary = f"{alive} of {len(workers)} workers alive"
    if alive < len(workers):
        summary += ": degraded" if alive else ": none alive"
    return table([COLUMNS, *(row(w) for w in workers)]) + "\n" + summary + "\n"


def row(worker: WorkerStatus) -> tuple[str, ...]:
    def number(value: int | None) -> str:
        return "-" if value is None else str(value)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}ms" if value < 100 else f"{value:.0f}ms"

    return (worker.address, worker.state, number(worker.load), number(worker.capacity), number(worker.served),
            number(worker.errors), ms(worker.served_p50_ms), ms(worker.served_p99_ms),
            "-" if worker.uptime is None else duration_text(worker.uptime), worker.version or "-", worker.reason)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned (numbers to the right), two spaces apart; the last one, free text, unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for cells in rows:
        padded = [cell.rjust(width) if COLUMNS[i] in NUMERIC else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(cells, widths, strict=False))]
        lines.append("  ".join([*padded, cells[-1]]).rstrip())
    return "\n".join(lines)
