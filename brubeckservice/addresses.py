"""Service addresses: how users name one or several, the files behind ipc:// ones, and who holds one."""

from __future__ import annotations

import ipaddress
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


def canonical(address: str) -> str:
    """One spelling per socket: a relative ipc:// path made absolute (libzmq resolves it against the working
    directory), so `ipc://run/slow` and the `ipc:///abs/run/slow` a worker lists are seen as one worker."""
    if address.startswith("ipc://") and not address.startswith(("ipc:///", "ipc://@")):
        return "ipc://" + os.path.abspath(address[len("ipc://"):])
    return address


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


# -- the addresses of a supervisor's workers (supervisor.py) ---------------------------------------------

# What a supervisor tells each worker it starts (server.py's ServiceConnection reads the first two):
#: the address this worker binds instead of the app's `service_addr`;
BIND_ENV = "BRUBECK_SERVICE_BIND"
#: every worker address of this service on this host, comma-separated, as clients reach them (PONG `workers`);
WORKERS_ENV = "BRUBECK_SERVICE_WORKERS"
#: this worker's number, 0 to N-1.
INDEX_ENV = "BRUBECK_WORKER_INDEX"

#: The longest path a Unix socket address holds (sockaddr_un's sun_path, less its terminating NUL).
MAX_IPC_PATH = 107
WILDCARD_HOSTS = frozenset({"*", "0.0.0.0", "::", "[::]"})  # noqa: S104 - names of wildcards, bound by no one here



def _split_tcp(address: str) -> tuple[str, int]:
    host, sep, port = address[len("tcp://"):].rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{address!r}: a tcp address is tcp://HOST:PORT, PORT a number from 1 to 65535")
    return host, int(port)


def worker_addresses(bind: str, count: int) -> list[str]:
    """The address each of `count` workers binds, from `bind` (see supervisor.py's docstring). Raises
    ValueError when `bind` is neither tcp://HOST:PORT nor ipc://PATH, or leaves no room for `count`."""
    if count < 1:
        raise ValueError("there must be at least one worker")
    if bind.startswith("tcp://"):
        host, port = _split_tcp(bind)
        if port + count - 1 > 65535:
            raise ValueError(f"{bind}: {count} workers need ports {port} to {port + count - 1}, past 65535")
        return [f"tcp://{host}:{port + i}" for i in range(count)]
    if bind.startswith("ipc://"):
        path = bind[len("ipc://"):]
        if not path or path in ("@", "*"):
            raise ValueError(f"{bind!r}: an ipc address names a path, ipc://PATH")
        if not path.startswith("@"):  # '@name': Linux's abstract namespace, no file and no directory
            path = os.path.abspath(path)
        paths = [path] + [f"{path}.{i}" for i in range(1, count)]
        if len(paths[-1].encode()) > MAX_IPC_PATH:
            raise ValueError(f"{bind}: {paths[-1]} is longer than a Unix socket path may be ({MAX_IPC_PATH} bytes)")
        return [f"ipc://{p}" for p in paths]
    raise ValueError(f"{bind!r}: workers bind tcp://HOST:PORT or ipc://PATH")


def advertised_address(address: str) -> str:
    """`address` as clients name it: a tcp wildcard host becomes empty (`tcp://:6001`, docs/protocol.md §8)."""
    if address.startswith("tcp://"):
        host, port = _split_tcp(address)
        if host in WILDCARD_HOSTS:
            return f"tcp://:{port}"
    return address


def reachable_from_other_hosts(address: str) -> bool:
    """Whether other hosts may connect to a socket bound at `address`: a tcp:// address whose host is not
    loopback (127.0.0.0/8, ::1, `localhost`, the interface `lo`). A wildcard, another IP address, a name or
    an interface may be reached from elsewhere; ipc:// and inproc:// cannot."""
    if not address.startswith("tcp://"):
        return False
    host = address[len("tcp://"):].rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def accepts(address: str, timeout: float = 0.5) -> bool:
    """Whether something accepts connections at a tcp:// or ipc:// address now (a plain connect, then close).
    A tcp wildcard host is probed on loopback."""
    if address.startswith("ipc://"):
        try:
            return ipc_listener(address)[0]
        except FileExistsError:
            return False
    host, port = _split_tcp(address)
    if host in WILDCARD_HOSTS:
        host = "::1" if ":" in host else "127.0.0.1"
    try:
        with pysocket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False


def holder(address: str) -> str | None:
    """Why `address` cannot be served by a new worker ("... is served by pid N: ..."), or None when it can."""
    if address.startswith("ipc://"):
        try:
            live, pid = ipc_listener(address)
        except FileExistsError as exc:
            return f"{address}: {exc}"
    else:
        live = accepts(address)
        pid = listening_pid(_split_tcp(address)[1]) if live else None
    return f"{address} is already served{describe_process(pid)}" if live else None
