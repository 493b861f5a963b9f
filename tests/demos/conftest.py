"""Fixtures starting the demo on free ports and removing all trace of it afterwards."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from brubeck.testing import free_port
from tests.demos.helpers import RunningDemo, runtime_dir

#: The service's delay in these tests: long enough that overlapping and serialized calls are told apart.
DELAY = 2.0

StartDemo = Callable[..., RunningDemo]


@pytest.fixture
def start_demo(mongrel2_required: None) -> Iterator[StartDemo]:
    """`start_demo(*args, port=None, delay=DELAY, ready=True)`: a demo on a free port (or `port`), serving
    once it returns when `ready`. Every demo started is stopped, and its directory removed, afterwards."""
    started: list[tuple[RunningDemo, bool]] = []

    def start(*args: str, port: int | None = None, delay: float = DELAY, ready: bool = True) -> RunningDemo:
        port = free_port() if port is None else port
        existed = runtime_dir(port).exists()
        demo = RunningDemo(port, *args, delay=delay)
        started.append((demo, existed))
        if ready:
            demo.wait_until_answering()
        return demo

    yield start
    for demo, existed in reversed(started):
        demo.kill()
        print(f"--- bash demos/run --port {demo.port} ---\n{demo.output()}")  # shown when the test failed
        if not existed:
            shutil.rmtree(demo.runtime, ignore_errors=True)


@pytest.fixture
def demo(start_demo: StartDemo) -> RunningDemo:
    """One demo, serving."""
    return start_demo()
