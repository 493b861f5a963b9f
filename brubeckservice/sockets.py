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


def ipc_inode(address: str) -> int | None:
    """The inode of the socket file behind an ipc:// address (None for other transports)."""
    if not address.startswith("ipc://"):
        return None
    try:
        return os.stat(address[len("ipc://"):]).st_ino
    except FileNotFoundError:
        return None


def remove_ipc(address: str, inode: int | None) -> None:
    """Remove the socket file we bound (libzmq 4.3 leaves it behind on close), but not a newer one that a
    successor process bound at the same path (a rolling restart): the inode must still be ours."""
    if inode is None or not address.startswith("ipc://"):
        return
    path = address[len("ipc://"):]
    try:
        found = os.stat(path)
        if found.st_ino == inode and stat.S_ISSOCK(found.st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
