"""The README's code runs as written.

The Quick start's service (`slow_service.py`, copied out of README.md unchanged) runs in a subprocess in a
temporary directory, where its `ipc://run/slow` lives; the `ServiceClient` snippet then runs here, unchanged,
from the same directory, with `print` captured so the test sees what it printed and what its fire-and-forget
`on_reply=print` was handed. Nothing waits a fixed time: the service is pinged until it answers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brubeckservice import ServiceClient, ServiceResponse

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0  # a fresh Python importing gevent and zmq, on a loaded machine


def readme_block(containing: str) -> str:
    """The README's one ```python block that contains `containing`."""
    blocks: list[str] = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"expected one python block with {containing!r} in README.md, found {len(found)}"
    return found[0]


@pytest.fixture
def service_dir() -> Iterator[Path]:
    """A directory running the README's slow_service.py (its `ipc://run/slow` is relative to it)."""
    # ipc:// paths must fit in a sockaddr_un (107 bytes); pytest's tmp_path can be longer.
    directory = Path(tempfile.mkdtemp(prefix="brs-readme-", dir="/tmp"))
    (directory / "slow_service.py").write_text(readme_block("# slow_service.py"))
    log = (directory / "service.log").open("wb")
    service = subprocess.Popen([sys.executable, "slow_service.py"], cwd=directory,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        with ServiceClient(f"ipc://{directory}/run/slow", passphrase="my_shared_secret",
                           timeout=START_TIMEOUT, connect_timeout=START_TIMEOUT) as probe:
            try:
                probe.ping()
            except Exception as err:
                output = (directory / "service.log").read_text(errors="replace")
                raise AssertionError(f"the README's service did not start: {err}\n{output}") from err
        yield directory
    finally:
        service.kill()
        service.wait(timeout=START_TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)


def test_the_service_client_snippet_gets_both_replies(service_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    printed: list[tuple[Any, ...]] = []
    monkeypatch.chdir(service_dir)
    exec(readme_block("with ServiceClient("), {"__name__": "readme", "print": lambda *args: printed.append(args)})
    assert printed[0] == (200, {"RETURN_DATA": "hi"})
    assert len(printed) == 2, "the fire-and-forget reply never reached on_reply"
    (reply,) = printed[1]  # what `on_reply=print` was called with, before leaving the `with` block
    assert isinstance(reply, ServiceResponse)
    assert (reply.status_code, reply.status_msg, reply.body) == (200, "Took a while, but I am back.",
                                                               {"RETURN_DATA": "bye"})
