"""`brubeck-service ping ADDR`: one PING through a ServiceClient, and what the PONG says (docs/protocol.md §4).

It waits for a connection first, so that the round trip it prints is the PING's alone, not the connection's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import zmq

from brubeckservice.cli.client_options import (
    CONNECTING_EPILOG,
    add_client_options,
    check_client_options,
    open_client,
    refusal,
    service_address,
    unreachable,
    wait_connected,
)
from brubeckservice.cli.conventions import FAILURE, OK, USAGE, Commands, positive_seconds
from brubeckservice.client import ServiceClient
from brubeckservice.errors import AuthenticationError, ServiceError, ServiceTimeout
from brubeckservice.survey import duration_text, seconds_text

PING_EPILOG = f"""\
output:
  ADDR answered: INFLIGHT/CAPACITY in flight, SERVED served, up UPTIME,
  version VERSION, MS ms round trip (the PING's, once connected);
  with --json, the PONG as the worker sent it (docs/protocol.md §4).

{CONNECTING_EPILOG}
exit status:
  0 it answered, 1 no answer (no connection, or no PONG, within --timeout)
  or refused (a wrong passphrase or CURVE key), 2 usage error
"""


def add_ping(commands: Commands) -> None:
    parser = commands.add_parser(
        "ping", help="ask a service how it is (one PING)", epilog=PING_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send one PING to a service and print what its PONG says: the worker's calls in\n"
                    "flight, its capacity, the requests it served, its uptime and version.")
    parser.add_argument("address", metavar="ADDR", type=service_address, help="the service's address")
    parser.add_argument("--timeout", "-t", metavar="SECONDS", type=positive_seconds, default=3.0,
                        help="how long to wait for a connection and the PONG, in all (default 3)")
    parser.add_argument("--json", action="store_true", help="print the PONG as JSON")
    add_client_options(parser)
    parser.set_defaults(handler=ping, check=check_client_options)


def ping(args: argparse.Namespace) -> int:
    try:
        client = open_client(args, args.address, timeout=args.timeout, connect_timeout=args.timeout)
    except zmq.ZMQError as exc:
        print(unreachable("ping", args.address, exc), file=sys.stderr)
        return USAGE
    try:
        return _ping(client, args)
    finally:
        client.close(timeout=0)


def _ping(client: ServiceClient, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    failed = f"brubeck-service ping: {args.address}:"
    if not wait_connected(client, deadline):
        if client.pool.refusal(wait_for_connecting=False) is not None:
            print(failed, refusal(client), file=sys.stderr)
        else:
            print(failed, f"no connection within {seconds_text(args.timeout)} s: is it running?", file=sys.stderr)
        return FAILURE
    started = time.perf_counter()
    try:
        pong = client.ping(timeout=max(0.001, deadline - time.monotonic()))
    except AuthenticationError:
        print(failed, refusal(client), file=sys.stderr)
        return FAILURE
    except ServiceTimeout:
        print(failed, f"connected, but no PONG within {seconds_text(args.timeout)} s: a handler may hold its CPU",
              file=sys.stderr)
        return FAILURE
    except ServiceError as exc:
        print(failed, exc, file=sys.stderr)
        return FAILURE
    round_trip = (time.perf_counter() - started) * 1000
    if args.json:
        print(json.dumps(pong, ensure_ascii=False))
        return OK
    # The worker that answered keeps the PONG as its report (pool.py); ServiceClient.ping does not say.
    who = next((w.address for w in client.pool.workers if w.reported is pong), args.address)
    print(f"{who} answered: {describe_pong(pong)}, {round_trip:.1f} ms round trip")
    return OK


def describe_pong(pong: dict[str, Any]) -> str:
    """`0/4 in flight, 12 served, up 3m02s, version 0.7.0` (and what is unusual: queued, draining)."""
    def known(key: str) -> Any:
        value = pong.get(key)
        return "?" if value is None else value

    parts = [f"{known('inflight')}/{known('capacity')} in flight"]
    if pong.get("queued"):
        parts.append(f"{pong['queued']} queued")
    if pong.get("draining") is True:
        parts.append("draining")
    uptime = pong.get("uptime")
    parts += [f"{known('served')} served",
              f"up {duration_text(uptime) if isinstance(uptime, int | float) else '?'}",
              f"version {known('version')}"]
    return ", ".join(parts)
