"""Ports and processes on this host: what tests and launchers ask before they start a server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["accepts", "free_port", "port_in_use", "process_alive"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, or holds the port so that we could not bind it."""
    if accepts(port):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port in TIME_WAIT after an earlier run is free to bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def process_alive(pid: int) -> bool:
    """Whether pid runs; a zombie has stopped, whoever is yet to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # Format: "pid (comm) state ..."; comm may contain spaces and parentheses, so split after the last ")".
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
