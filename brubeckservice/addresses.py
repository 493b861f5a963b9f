"""Service addresses: how users name one or several, the files behind ipc:// ones, and who holds one."""

from __future__ import annotations

import os
import socket as pysocket
import stat
import struct
from collections.abc import Sequence


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


# -- who holds an address -----------------------------------------------------------------------------
#
# libzmq's ipc bind unlinks whatever file is at the path and binds a new socket there, so a second service
# would silently take the address over while the first keeps running, unreachable. Before binding, a service
# asks whether a live process listens at the path (a plain AF_UNIX connect: refused means a stale file left
# by a dead process, which may be reclaimed). The kernel names the listener's pid (SO_PEERCRED). For tcp the
# OS refuses a second bind itself (EADDRINUSE); /proc then tells which process holds the port.


def _ipc_path(address: str) -> str:
    path = address[len("ipc://"):]
    return "\0" + path[1:] if path.startswith("@") else path  # libzmq's "@name": Linux's abstract namespace


def ipc_listener(address: str) -> tuple[bool, int | None]:
    """(True, pid or None) when a live process listens at this ipc:// address; (False, None) when nothing
    does (no file, or a stale socket file left by a dead process). Raises `FileExistsError` when the path is
    something other than a socket (libzmq would delete it)."""
    path = _ipc_path(address)
    if not path.startswith("\0"):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return False, None
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(f"{path} exists and is not a socket")
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False, None
    except OSError:
        return True, None  # e.g. a full backlog: someone is there
    try:
        creds = probe.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int | None = struct.unpack("3i", creds)[0] or None
    except OSError:
        pid = None
    finally:
        probe.close()
    return True, pid


def tcp_listener_pid(address: str) -> int | None:
    """The pid of the process listening on this tcp:// address's port (see `listening_pid`)."""
    port_text = address.rsplit(":", 1)[-1]
    return listening_pid(int(port_text)) if port_text.isdigit() else None


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP `port`, when /proc can tell (Linux, and a process this user
    may inspect); None otherwise."""
    hex_port = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the socket's inode.
                    if len(fields) > 9 and fields[1].endswith(hex_port) and fields[3] == "0A":
                        inodes.add(f"socket:[{fields[9]}]")
        except OSError:
            continue
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None


def describe_process(pid: int | None) -> str:
    """' (pid N: its command line)' for an error message, or '' when the pid is unknown."""
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        command = ""
    return f" (pid {pid}: {command:.120})" if command else f" (pid {pid})"
