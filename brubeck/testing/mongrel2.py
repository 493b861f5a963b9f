"""Run a real Mongrel2 in a working directory, for tests, demos and local experiments.

    with Mongrel2Server() as m2:
        pull.connect(m2.send_spec)   # requests arrive here
        pub.connect(m2.recv_spec)    # responses go here
        http.client.HTTPConnection("127.0.0.1", m2.http_port)

Strategy: write a one-server, one-handler ``mongrel2.conf`` into the working directory (or take the caller's
file), load it with ``m2sh load`` and start the server. Started as root, Mongrel2 chroots into that directory
and by default daemonizes, so the process we spawn is not the server: we find the server through its pid
file and decide it is ready when that file names a live process, the HTTP port accepts TCP connections and
the handler's sockets are bound. Every path in the config (logs, pid file, upload store, ``ipc://`` sockets)
is relative to the chroot, so the directory must already hold ``log/``, ``run/`` and ``tmp/``. As any other
user Mongrel2 neither chroots nor daemonizes ("test mode"): the server then stays in the foreground, which is
why it is spawned, not waited for. ``daemonize=False`` asks for the foreground as root too (the setting
``server.daemonize = 0``), and runs ``mongrel2`` itself rather than ``m2sh start``, so the server is our child:
:meth:`Mongrel2Server.wait` gets its exit status, and it shares our process group (a terminal's Ctrl-C
reaches it).

A config file of the caller's (``config=``) is loaded as written; what the launcher needs to know about it
(its server's uuid, port, pid file and logs, its handler's sockets) is read back from the database ``m2sh
load`` made, so it is what Mongrel2 itself will read.

Mongrel2 behaviours this module works around, all seen with Debian's mongrel2-core 1.12.2:

- ``m2sh`` wants a ``LOGNAME`` environment variable; we set one if the caller's environment lacks it.
- The daemon inherits ``m2sh``'s stdout and stderr, so reading them through pipes would block until the
  server exits. ``m2sh``'s output (and a foreground server's) therefore goes to a file, ``m2sh.log`` in the
  working directory.
- ``m2sh start`` exits 0 even when the server fails to start (say, the HTTP port is taken); the reason is only
  in that output, so we look for Mongrel2's fatal messages there and in the error log while we wait.
- A handler whose ``send_spec`` cannot be bound does not stop the server: Mongrel2 retries for about ten
  seconds and then drops the handler while still serving HTTP. We check that loopback TCP handler ports are
  free before starting and treat a failed handler bind in the log as a failed start.
- A graceful ``m2sh stop`` takes up to a couple of seconds; when it is not enough we signal the pid.
- A stopped daemon is reaped by init, not by us, and may linger as a zombie: a zombie counts as gone.
- Mongrel2 never removes the ``ipc://`` socket files it binds (its handler's and its control port's): ``stop``
  does.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from brubeck.testing.ports import accepts, free_port, process_alive

__all__ = ["Mongrel2Error", "Mongrel2Server", "mongrel2_available"]

MONGREL2 = "mongrel2"
M2SH = "m2sh"
HOST = "localhost"
PROTOCOLS = ("json", "tnetstring")

_CONFIG = "mongrel2.conf"
_DB = "config.sqlite"
_M2SH_LOG = "m2sh.log"
_ERROR_LOG = "/log/error.log"
_ACCESS_LOG = "/log/access.log"
_PID_FILE = "/run/mongrel2.pid"
_CONTROL_SPEC = "ipc://run/control"  # Mongrel2's control port when the config names none
_CHROOT_DIRS = ("log", "run", "tmp")

# Seconds given to one m2sh command, to a graceful stop, and to each signal after it.
_COMMAND_TIMEOUT = 10.0
_GRACEFUL_STOP = 5.0
_SIGNAL_WAIT = 3.0

# Lines Mongrel2 writes when it will not serve: a fatal start error, or a handler it could not bind.
_FATAL_MARKERS = (
    "Exiting due to error",
    "Aborting since",
    "Failed to bind send socket",
    "Failed to bind recv socket",
    "HANDLER TASK DIED",
)

# What the launcher reads back from a loaded config: the one server, and the one handler its routes name.
_SERVER_QUERY = "SELECT id, uuid, chroot, pid_file, error_log, access_log, port FROM server"
_HANDLER_QUERY = (
    "SELECT DISTINCT handler.send_spec, handler.send_ident, handler.recv_spec, handler.recv_ident, handler.protocol"
    " FROM handler JOIN route ON route.target_type = 'handler' AND route.target_id = handler.id"
    " JOIN host ON host.id = route.host_id WHERE host.server_id = ?"
)


class Mongrel2Error(RuntimeError):
    """Mongrel2 could not be configured, started or stopped; the message holds the tail of its logs."""


def mongrel2_available() -> bool:
    """True when both ``mongrel2`` and ``m2sh`` are on ``PATH``."""
    return shutil.which(MONGREL2) is not None and shutil.which(M2SH) is not None


class Mongrel2Server:
    """A real Mongrel2 routing ``/`` on host ``localhost`` (the default host) to one handler.

    Every argument is optional: ports default to free loopback ports, ``send_spec`` and ``recv_spec`` to
    ``tcp://127.0.0.1:<free port>``, ``send_ident`` to a fresh UUID (the first word of every request, and the
``recv_ident``: only replies that begin with it are delivered) and
    ``workdir`` to a fresh temporary directory that :meth:`stop` removes (a directory you pass is kept, with
    its logs, config and database). An ``ipc://`` spec names a path inside the chroot: connect to
    ``ipc://<workdir>/<path>`` from outside. ``protocol`` is the handler's header encoding, ``"json"`` (the
    default) or ``"tnetstring"``. ``limits`` adds settings such as ``{"limits.content_length": 1024}``;
    ``upload_temp_store`` sets ``upload.temp_store``, a ``mkstemp`` template relative to the chroot such as
    ``"/tmp/upload.XXXXXX"``. (Mongrel2 1.12.2 loses request bytes it had already buffered beyond
    ``limits.content_length`` when an upload starts: keep that limit at least ``limits.buffer_size``, 4096 by
    default, or send the body after the upload-start message.)

    ``config`` loads that ``mongrel2.conf`` instead of the generated one. It must define one server, whose
    chroot is ``workdir`` (``chroot='.'`` names it: m2sh runs there), with routes to one handler; the settings
    above then come from the file, so passing any of them too is a ``ValueError``. The constructor reads the
    file through ``m2sh load`` into a scratch database, so the attributes (``http_port``, ``send_spec``,
    ``server_uuid``...) are known at once, and raises :class:`Mongrel2Error` when m2sh cannot load it.

    ``daemonize=False`` keeps the server in the foreground as a child of ours, even as root: see :meth:`wait`.

    The generated config listens on 127.0.0.1 only. Run as root, the tested setup, the server is confined to
    ``workdir``; as another user it runs unconfined in Mongrel2's test mode, and only starting and stopping
    were tried.
    """

    def __init__(
        self,
        *,
        workdir: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        daemonize: bool = True,
        http_port: int | None = None,
        send_spec: str | None = None,
        recv_spec: str | None = None,
        send_ident: str | None = None,
        protocol: str | None = None,
        limits: dict[str, int] | None = None,
        upload_temp_store: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        if config is not None:
            generated = {"http_port": http_port, "send_spec": send_spec, "recv_spec": recv_spec,
                         "send_ident": send_ident, "protocol": protocol, "limits": limits,
                         "upload_temp_store": upload_temp_store}
            given = [name for name, value in generated.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: set in the config file {config}, not beside it")
        protocol = protocol or "json"
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        self.config: Path | None = None if config is None else Path(config).resolve()
        self.daemonize: bool = daemonize
        self.http_port: int = http_port if http_port is not None else free_port()
        self.send_spec: str = send_spec if send_spec is not None else f"tcp://127.0.0.1:{free_port()}"
        self.recv_spec: str = recv_spec if recv_spec is not None else f"tcp://127.0.0.1:{free_port()}"
        self.send_ident: str = send_ident if send_ident is not None else str(uuid.uuid4())
        # Mongrel2 checks no reply's UUID; its SUB socket's prefix match on recv_ident is the only filter. With
        # recv_ident = send_ident only replies that begin with this handler's identity reach a browser: a
        # process that can publish there, or an app answering a forged sender, cannot answer any connection.
        self.recv_ident: str = self.send_ident
        self.server_uuid: str = str(uuid.uuid4())
        self.protocol: str = protocol
        self.limits: dict[str, int] = dict(limits or {})
        self.upload_temp_store: str | None = upload_temp_store
        self.start_timeout: float = start_timeout
        self.url: str = f"http://127.0.0.1:{self.http_port}"
        self._owns_workdir = workdir is None
        self.workdir: Path = (
            Path(tempfile.mkdtemp(prefix="mongrel2-")) if workdir is None else Path(workdir)
        ).resolve()
        # Paths the config names, inside the chroot; a config file of the caller's may name others.
        self._pid_path, self._error_path, self._access_path = _PID_FILE, _ERROR_LOG, _ACCESS_LOG
        self._pid: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._error_log_offset = 0
        if self.config is not None:
            try:
                self._probe_config()
            except BaseException:
                self._remove_workdir()
                raise

    # -- configuration ------------------------------------------------------------------------------------

    def config_text(self) -> str:
        """The ``mongrel2.conf`` that :meth:`start` writes (without ``config=``)."""
        settings: dict[str, int | str] = {"zeromq.threads": 1}
        settings.update(self.limits)
        if self.upload_temp_store is not None:
            settings["upload.temp_store"] = self.upload_temp_store
        if not self.daemonize:
            settings["server.daemonize"] = 0
        settings_text = ", ".join(f"{_quote(key)}: {_value(value)}" for key, value in settings.items())
        return (
            f"handler = Handler(send_spec={_quote(self.send_spec)}, send_ident={_quote(self.send_ident)},\n"
            f"                  recv_spec={_quote(self.recv_spec)}, recv_ident={_quote(self.recv_ident)},\n"
            f"                  protocol={_quote(self.protocol)})\n"
            f"main = Server(uuid={_quote(self.server_uuid)}, name='main',\n"
            f"              chroot={_quote(str(self.workdir))},\n"
            f"              access_log={_quote(_ACCESS_LOG)}, error_log={_quote(_ERROR_LOG)},\n"
            f"              pid_file={_quote(_PID_FILE)}, default_host={_quote(HOST)},\n"
            f"              bind_addr='127.0.0.1', port={self.http_port},\n"
            f"              hosts=[Host(name={_quote(HOST)}, routes={{'/': handler}})])\n"
            f"settings = {{{settings_text}}}\n"
            "servers = [main]\n"
        )

    @property
    def pid_file(self) -> Path:
        """Where the running server writes its pid (inside the chroot)."""
        return self._in_chroot(self._pid_path)

    @property
    def error_log(self) -> Path:
        """Mongrel2's error log (inside the chroot)."""
        return self._in_chroot(self._error_path)

    @property
    def access_log(self) -> Path:
        """Mongrel2's access log (inside the chroot)."""
        return self._in_chroot(self._access_path)

    @property
    def output_log(self) -> Path:
        """Where m2sh's output goes, and a foreground server's until it opens its error log."""
        return self.workdir / _M2SH_LOG

    @property
    def pid(self) -> int | None:
        """The server's pid once :meth:`start` has returned, else None."""
        return self._pid

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Configure and start Mongrel2; return once it serves HTTP, or raise :class:`Mongrel2Error`."""
        if self._started:
            return self
        try:
            self._launch()
            self._pid = self._wait_until_ready()
        except Mongrel2Error as exc:
            # Read the logs before stop() removes the directory that holds them.
            logs = self._log_tail()
            self._abandon()
            raise Mongrel2Error(f"{exc}\n{logs}" if logs else str(exc)) from None
        except BaseException:
            self._abandon()
            raise
        return self

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the started server exits (at once if it is not running).

        Returns its exit status when it ran in the foreground (``daemonize=False``), negative for the signal
        that ended it, as :attr:`subprocess.Popen.returncode`; None for a daemon, which is not our child.
        Raises :class:`subprocess.TimeoutExpired` after ``timeout`` seconds.
        """
        process, pid = self._process, self._pid
        if not self.daemonize and process is not None:
            return process.wait(timeout)
        if pid is not None and not _wait_gone(pid, float("inf") if timeout is None else timeout):
            raise subprocess.TimeoutExpired(MONGREL2, timeout or 0.0)
        return None

    def stop(self) -> None:
        """Stop the server and wait until its process is gone; safe to call more than once."""
        if not self._started:
            self._remove_workdir()
            return
        pid = self._pid if self._pid is not None else self._read_pid()
        # Not when it is gone already (a foreground server gets a terminal's Ctrl-C too): m2sh would fail.
        if (self.workdir / _DB).exists() and (pid is None or process_alive(pid)):
            with contextlib.suppress(Mongrel2Error):
                self._m2sh("stop", "-db", _DB, "-uuid", self.server_uuid, check=False)
        if pid is not None and not _wait_gone(pid, _GRACEFUL_STOP):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if _is_mongrel2(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                if _wait_gone(pid, _SIGNAL_WAIT):
                    break
            else:
                raise Mongrel2Error(f"mongrel2 pid {pid} survived SIGKILL")
        self._reap()
        self.pid_file.unlink(missing_ok=True)
        for spec in (self.send_spec, self.recv_spec, _CONTROL_SPEC):
            path = self._ipc_path(spec)
            if path is not None and path.is_socket():
                path.unlink(missing_ok=True)
        self._pid = None
        self._started = False
        self._remove_workdir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Mongrel2Server {self.url} send={self.send_spec} recv={self.recv_spec} pid={self._pid}>"

    # -- internals ------------------------------------------------------------------------------------------

    def _m2sh_env(self) -> dict[str, str]:
        env = dict(os.environ)
        if not env.get("LOGNAME"):
            env["LOGNAME"] = _login_name()
        return env

    def _m2sh(self, *args: str, check: bool = True) -> None:
        with self.output_log.open("ab") as log:
            try:
                result = subprocess.run(  # noqa: S603 - fixed binary, arguments we built
                    [M2SH, *args],
                    cwd=self.workdir,
                    env=self._m2sh_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    timeout=_COMMAND_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise Mongrel2Error(f"m2sh {args[0]} did not finish in {_COMMAND_TIMEOUT}s") from None
        if check and result.returncode != 0:
            raise Mongrel2Error(f"m2sh {args[0]} exited with status {result.returncode}")

    def _probe_config(self) -> None:
        """Learn what the config file serves before start: load it into a scratch database, not the
        workdir's (a server may be running from that one)."""
        with tempfile.TemporaryDirectory(prefix="mongrel2-probe-") as scratch:
            db = Path(scratch) / _DB
            try:
                result = subprocess.run(  # noqa: S603 - fixed binary, arguments we built
                    [M2SH, "load", "-config", str(self.config), "-db", str(db)],
                    cwd=scratch, env=self._m2sh_env(), stdin=subprocess.DEVNULL, capture_output=True,
                    text=True, errors="replace", timeout=_COMMAND_TIMEOUT, check=False,
                )
            except FileNotFoundError:
                raise Mongrel2Error(f"{M2SH} is not on PATH") from None
            except subprocess.TimeoutExpired:
                raise Mongrel2Error(f"m2sh load did not finish in {_COMMAND_TIMEOUT}s") from None
            if result.returncode != 0 or not db.exists():
                output = (result.stdout + result.stderr).strip()
                raise Mongrel2Error(f"m2sh cannot load {self.config} (status {result.returncode})\n{output}")
            self._read_loaded_config(db)

    def _load(self) -> None:
        """Load the config into the workdir's database (a config file's is read back from it)."""
        config = self.config
        if config is None:
            config = self.workdir / _CONFIG
            config.write_text(self.config_text())
        self._m2sh("load", "-config", str(config), "-db", _DB)
        if self.config is not None:
            self._read_loaded_config(self.workdir / _DB)

    def _read_loaded_config(self, path: Path) -> None:
        with contextlib.closing(sqlite3.connect(path)) as db:
            servers = db.execute(_SERVER_QUERY).fetchall()
            if len(servers) != 1:
                raise Mongrel2Error(f"{self.config} must define one server, not {len(servers)}")
            server_id, server_uuid, chroot, pid_file, error_log, access_log, port = servers[0]
            handlers = db.execute(_HANDLER_QUERY, (server_id,)).fetchall()
            if len(handlers) != 1:
                raise Mongrel2Error(f"{self.config} must route to one handler, not {len(handlers)}")
            if not self.daemonize:
                # The config's own settings stay; only this one is set, after the load that wrote them.
                with db:
                    db.execute("DELETE FROM setting WHERE key = 'server.daemonize'")
                    db.execute("INSERT INTO setting (key, value) VALUES ('server.daemonize', '0')")
        if (self.workdir / chroot).resolve() != self.workdir:
            raise Mongrel2Error(f"{self.config}: the server's chroot {chroot!r} must be the workdir {self.workdir}")
        self.server_uuid, self.http_port = str(server_uuid), int(port)
        self._pid_path, self._error_path, self._access_path = str(pid_file), str(error_log), str(access_log)
        self.send_spec, self.send_ident, self.recv_spec, self.recv_ident, self.protocol = map(str, handlers[0])
        self.url = f"http://127.0.0.1:{self.http_port}"

    def _launch(self) -> None:
        if not mongrel2_available():
            raise Mongrel2Error(f"{MONGREL2} and {M2SH} must both be on PATH")
        self._check_handler_ports()
        for name in _CHROOT_DIRS:
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        for path in (self.pid_file, self.error_log, self.access_log):
            path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale_pid_file()
        # Judge only what this start writes: a reused workdir may hold logs of an earlier failure.
        self.output_log.write_bytes(b"")
        self._error_log_offset = _size(self.error_log)
        self._started = True
        self._load()
        # Not subprocess.run: as root the server daemonizes and m2sh exits, but as any other user (or with
        # daemonize=False) it runs in the foreground, so we must not wait for it. In the foreground we run
        # mongrel2 itself: m2sh start would run it through a shell, hiding its pid and exit status.
        if self.daemonize:
            command = [M2SH, "start", "-db", _DB, "-uuid", self.server_uuid]
        else:
            command = [MONGREL2, _DB, self.server_uuid]
        with self.output_log.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments we built
                command,
                cwd=self.workdir,
                env=self._m2sh_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def _wait_until_ready(self) -> int:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            fatal = self._fatal_line()
            if fatal is not None:
                raise Mongrel2Error(f"mongrel2 failed to start: {fatal}")
            status = self._process.poll() if self._process is not None else None
            # m2sh start exits 0 once the daemon has detached; a foreground server must not exit at all.
            if status is not None and (status != 0 or not self.daemonize):
                raise Mongrel2Error(f"{'m2sh start' if self.daemonize else MONGREL2} exited with status {status}")
            pid = self._read_pid()
            if pid is not None and not process_alive(pid):
                raise Mongrel2Error(f"mongrel2 pid {pid} exited during start")
            if pid is not None and accepts(self.http_port) and self._handlers_bound():
                return pid
            if time.monotonic() >= deadline:
                raise Mongrel2Error(f"mongrel2 not serving on port {self.http_port} after {self.start_timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _check_handler_ports(self) -> None:
        for spec in (self.send_spec, self.recv_spec):
            parts = urlsplit(spec)
            if parts.scheme != "tcp" or parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # Mongrel2's zmq binds with SO_REUSEADDR too, so a port in TIME_WAIT is not "taken".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", parts.port))
                except OSError as exc:
                    raise Mongrel2Error(f"handler port for {spec} is not free: {exc}") from None

    def _reap(self) -> None:
        """Collect what we spawned: m2sh (the daemonizing parent as root, the server's parent otherwise),
        or the foreground server itself."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # Still running: a foreground server that never wrote its pid file.
        process.terminate()
        try:
            process.wait(_SIGNAL_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_SIGNAL_WAIT)

    def _clear_stale_pid_file(self) -> None:
        pid = self._read_pid()
        if pid is not None and process_alive(pid) and _is_mongrel2(pid):
            raise Mongrel2Error(f"a mongrel2 (pid {pid}) already runs in {self.workdir}")
        self.pid_file.unlink(missing_ok=True)

    def _abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _in_chroot(self, path: str) -> Path:
        return self.workdir / path.lstrip("/")

    def _ipc_path(self, spec: str) -> Path | None:
        """The socket file of an ``ipc://`` spec: Mongrel2 binds after chrooting, so as root an absolute path
        is inside the workdir too."""
        if urlsplit(spec).scheme != "ipc":
            return None
        return self._in_chroot(spec.removeprefix("ipc://"))

    def _new_log_lines(self, path: Path) -> list[str]:
        offset = self._error_log_offset if path == self.error_log else 0
        return _read_lines(path, offset)

    def _handlers_bound(self) -> bool:
        """Whether Mongrel2 has bound the handler sockets we can observe (loopback TCP and ipc)."""
        return all(self._bound(spec) for spec in (self.send_spec, self.recv_spec))

    def _bound(self, spec: str) -> bool:
        parts = urlsplit(spec)
        if parts.scheme == "tcp" and parts.hostname in ("127.0.0.1", "localhost") and parts.port:
            return accepts(parts.port)
        path = self._ipc_path(spec)
        return path is None or path.exists()

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _fatal_line(self) -> str | None:
        for path in (self.output_log, self.error_log):
            for line in self._new_log_lines(path):
                if any(marker in line for marker in _FATAL_MARKERS):
                    return line
        return None

    def _log_tail(self, lines: int = 20) -> str:
        parts = []
        for path in (self.output_log, self.error_log):
            tail = self._new_log_lines(path)[-lines:]
            if tail:
                parts.append(f"--- {path.relative_to(self.workdir)} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def _remove_workdir(self) -> None:
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
def _quote(text: str) -> str:
    # m2sh's config grammar has no string escapes, so refuse what it could not read back.
    if any(ch in text for ch in "'\"\\\n\r"):
        raise ValueError(f"cannot put {text!r} in a mongrel2.conf string")
    return f"'{text}'"


def _value(value: int | str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"mongrel2 settings take int or str values, not {value!r}")
    return str(value) if isinstance(value, int) else _quote(value)


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "root" if os.geteuid() == 0 else str(os.geteuid())


def _read_lines(path: Path, offset: int = 0) -> list[str]:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _is_mongrel2(pid: int) -> bool:
    """Guard against signalling a recycled pid: the process must be mongrel2 (or /proc is unreadable)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return MONGREL2.encode() in cmdline.split(b"\0", 1)[0]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.005
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    return True
