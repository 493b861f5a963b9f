"""Socket plumbing shared by the client and the service: addresses, options, clocks."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence

#: Default largest message either side accepts (the service's ZMQ_MAXMSGSIZE, the client's send check).
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


def endpoints(service_addr: str | Sequence[str]) -> list[str]:
    """One address, a comma-separated list, or a sequence of addresses -> a list of addresses."""
    if isinstance(service_addr, str):
        found = [a.strip() for a in service_addr.split(",") if a.strip()]
    else:
        found = [a.strip() for a in service_addr if a.strip()]
    if not found:
        raise ValueError("a service needs at least one address, e.g. 'ipc://run/slow' or 'tcp://127.0.0.1:5555'")
    return found


def prepare_ipc(address: str) -> None:
    """Create the directory of an ipc:// path (as the 2013 demo's 'ipc://run/slow' expects it to exist)."""
    if address.startswith("ipc://"):
        directory = os.path.dirname(address[len("ipc://"):])
        if directory:
            os.makedirs(directory, exist_ok=True)


def remove_ipc(address: str) -> None:
    """Remove the socket file of an ipc:// address we bound (libzmq 4.3 leaves it behind on close)."""
    if address.startswith("ipc://"):
        path = address[len("ipc://"):]
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
