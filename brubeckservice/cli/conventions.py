"""What every `brubeck-service` command shares: its exit statuses, the seam to the program, argument types.

A command is a function `add_NAME(commands)` that adds its parser and sets, as its defaults, `handler`
(parsed arguments -> exit status) and optionally `check` (what argparse cannot check alone; calls
`parser.error`), `passthrough_ok` (it takes arguments after `--`, as `args.passthrough`) and `log_level`
(default INFO) with `quiet_loggers` (loggers held at ERROR: what the command reports itself).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

#: Exit statuses: done, failed, used wrongly (argparse exits with 2 itself).
OK, FAILURE, USAGE = 0, 1, 2
#: `call`: the service answered, with an error status (400 or more).
ERROR_STATUS = 3
#: `status`: some worker, not all, is not alive.
DEGRADED = 3

Handler = Callable[[argparse.Namespace], int]
Check = Callable[[argparse.ArgumentParser, argparse.Namespace], None]
#: What `add_NAME` is given (a string: argparse's class is not subscriptable at run time).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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


def positive_seconds(text: str) -> float:
    """A wait: more than 0 seconds, at most a day."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: more than 0 seconds")
    return value
