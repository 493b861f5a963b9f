"""HTTP load through Mongrel2 with wrk: readiness probes and wrk's figures as numbers.

wrk's `--latency` report is parsed for requests/s, the 50% and 99% latencies, and every error it counts
(non-2xx answers, connect/read/write/timeout socket errors): a fast run full of errors is no figure.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import time
from typing import Any

WRK = "wrk"
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}
_LATENCY = re.compile(r"^\s*(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_available() -> bool:
    return shutil.which(WRK) is not None


def wait_http(port: int, path: str = "/", timeout: float = 20.0) -> None:
    """Return once GET `path` answers 200 on 127.0.0.1:`port`; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    last = "no answer"
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                return
            last = f"{response.status} {response.reason}"
        except OSError as err:
            last = str(err)
        finally:
            connection.close()
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise RuntimeError(f"http://127.0.0.1:{port}{path} not answering 200 after {timeout:g}s: {last}")


def parse_wrk(output: str) -> dict[str, float]:
    rate = _RATE.search(output)
    total = _TOTAL.search(output)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{output}")
    figures: dict[str, float] = {"rate": float(rate.group(1)), "calls": float(total.group(1))}
    for pct, value, unit in _LATENCY.findall(output):
        figures[f"p{pct}_us"] = float(value) * _UNITS[unit]
    non_2xx = _NON_2XX.search(output)
    socket = _SOCKET.search(output)
    figures["errors"] = float((int(non_2xx.group(1)) if non_2xx else 0)
                              + (sum(int(n) for n in socket.groups()) if socket else 0))
    return figures


def wrk(url: str, *, connections: int, seconds: float, threads: int = 1) -> dict[str, Any]:
    """Run wrk against `url`; its figures (rate in requests/s, latencies in microseconds, errors)."""
    command = [WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
               "--timeout", "10s", url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"wrk exited with {result.returncode}: {result.stderr.strip()}")
    figures: dict[str, Any] = parse_wrk(result.stdout)
    figures["seconds"] = seconds
    figures["connections"] = connections
    return figures
