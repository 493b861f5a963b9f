"""`brubeck-service call ADDR PATH [METHOD] [JSON]`: one call through a ServiceClient, and its answer."""

from __future__ import annotations

import argparse
import json
import re
import sys
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
)
from brubeckservice.cli.conventions import ERROR_STATUS, FAILURE, OK, USAGE, Commands, positive_seconds
from brubeckservice.errors import AuthenticationError, ServiceError, ServiceTimeout, ServiceUnavailable
from brubeckservice.models import ServiceResponse
from brubeckservice.survey import seconds_text

#: What a METHOD looks like (and JSON never does), so that METHOD may be left out before JSON.
METHOD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

CALL_EPILOG = f"""\
arguments:
  METHOD picks the handler's method (default request; get, post, put,
  delete, options, connect, response), and may be left out before JSON.
  JSON, the call's arguments, is an object: '{{"name": "ada"}}' (default {{}}).

output:
  the status line (200 OK), then the body: as indented JSON, or as it is
  when it is a string; with --json, one object: {{"status_code",
  "status_msg", "body", "path", "method", "headers"}}.

{CONNECTING_EPILOG}
exit status:
  0 the service answered with a status under 400, 3 it answered with 400 or
  more, 1 no answer (no connection, or no reply, within --timeout) or
  refused (a wrong passphrase or CURVE key), 2 usage error
"""


def header(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: NAME=VALUE")
    return name.strip(), value


def add_call(commands: Commands) -> None:
    parser = commands.add_parser(
        "call", help="call a service's handler and print its answer", epilog=CALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Call the handler of PATH on a service, as ServiceClient.call does, and print the\n"
                    "status and body of its answer.")
    parser.add_argument("address", metavar="ADDR", type=service_address, help="the service's address")
    parser.add_argument("path", metavar="PATH", help="the path the service routes to a handler, e.g. /echo")
    parser.add_argument("method", metavar="METHOD", nargs="?", help="the handler's method (default request)")
    parser.add_argument("arguments", metavar="JSON", nargs="?", help="the call's arguments, a JSON object")
    parser.add_argument("--timeout", "-t", metavar="SECONDS", type=positive_seconds, default=5.0,
                        help="how long to wait for a connection and the answer, in all (default 5)")
    parser.add_argument("--header", "-H", metavar="NAME=VALUE", type=header, action="append", default=[],
                        dest="headers", help="a header of the request (repeat for more)")
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    add_client_options(parser)
    parser.set_defaults(handler=call, check=check_call)


def check_call(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.arguments is None and args.method is not None and not METHOD_NAME.fullmatch(args.method):
        args.method, args.arguments = None, args.method  # METHOD left out: what was given is the JSON
    if args.method is None:
        args.method = "request"
    text = "{}" if args.arguments is None else args.arguments
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"JSON {text!r} does not parse: {exc}")
    if not isinstance(arguments, dict):
        parser.error(f"JSON {text!r}: the arguments must be a JSON object, e.g. '{{\"name\": \"ada\"}}'")
    args.arguments = arguments
    check_client_options(parser, args)


def call(args: argparse.Namespace) -> int:
    failed = f"brubeck-service call: {args.address}:"
    try:
        client = open_client(args, args.address, timeout=args.timeout, connect_timeout=args.timeout)
    except zmq.ZMQError as exc:
        print(unreachable("call", args.address, exc), file=sys.stderr)
        return USAGE
    try:
        response = client.call(args.path, args.method, args.arguments, headers=dict(args.headers),
                               timeout=args.timeout)
    except AuthenticationError:
        print(failed, refusal(client), file=sys.stderr)
        return FAILURE
    except ServiceTimeout:
        print(failed, f"no answer from {args.path} within {seconds_text(args.timeout)} s", file=sys.stderr)
        return FAILURE
    except ServiceUnavailable as exc:
        if any(worker.ever_connected for worker in client.pool.workers):
            print(failed, exc, file=sys.stderr)
        else:
            print(failed, f"no connection within {seconds_text(args.timeout)} s: is it running?", file=sys.stderr)
        return FAILURE
    except ServiceError as exc:
        print(failed, exc, file=sys.stderr)
        return FAILURE
    finally:
        client.close(timeout=0)
    print(json.dumps(answer(response), ensure_ascii=False) if args.json else answer_text(response))
    return OK if response.status_code < 400 else ERROR_STATUS


def answer(response: ServiceResponse) -> dict[str, Any]:
    return {"status_code": response.status_code, "status_msg": response.status_msg, "body": response.body,
            "path": response.path, "method": response.method, "headers": response.headers}


def answer_text(response: ServiceResponse) -> str:
    """The status line, then the body: a string as it is, anything else as indented JSON."""
    body = response.body
    text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
    return f"{response.status_code} {response.status_msg}".rstrip() + "\n" + text
