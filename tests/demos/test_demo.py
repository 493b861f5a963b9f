"""The demo as a person runs it: `bash demos/run`, a real Chromium on http://127.0.0.1:6767/, then Ctrl-C.

Each test starts the whole demo (Mongrel2, demos/demo_service.py, demos/demo_service_client.py) through its
launcher, in its own process group, with the service's delay shortened to DELAY seconds. The launcher's
output (every process's log lines, tagged) is collected so a test can wait for a line. Port 6767 is the
demo's: a test fails, saying so, when something else holds it.

Screenshots of each page are written to /tmp/demo-*.png.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from brubeck.testing import port_in_use, process_alive

REPO = Path(__file__).resolve().parents[2]
DEMOS = REPO / "demos"
RUNTIME = DEMOS / "var"
PORT = 6767
URL = f"http://127.0.0.1:{PORT}/"
HANDLER_PORTS = (9999, 9998)

#: The service's delay in these tests: long enough that overlapping and serialized calls are told apart.
DELAY = 2.0
START_TIMEOUT = 60.0  # the launcher installs what is missing first
STOP_TIMEOUT = 30.0

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.mongrel2]


def require(available: bool, reason: str) -> None:
    """Skip without the tool, but fail when CI is set: CI must run these tests."""
    if available:
        return
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """Debian's chromium (never a browser downloaded by `playwright install`)."""
    found = shutil.which("chromium")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


# -- the demo's processes and files -------------------------------------------------------------------------


def demo_processes() -> list[str]:
    """Live processes of this checkout's demo: its scripts, or a Mongrel2 confined to demos/var.

    A zombie is not counted: it has exited, only its exit status is left for its parent to collect.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if not process_alive(int(entry.name)):
                continue
            command = b" ".join(argv).decode(errors="replace")
            if str(DEMOS / "demo_service") in command or str(DEMOS / "run.py") in command:
                found.append(f"{entry.name}: {command}")
            elif b"mongrel2" in argv[0]:
                places = {os.readlink(entry / "root"), os.readlink(entry / "cwd")}
                if str(RUNTIME) in places:
                    found.append(f"{entry.name}: {command}")
        except OSError:  # it exited while we looked
            continue
    return found


def demo_leftovers() -> list[Path]:
    """Files a stopped demo must not leave: Mongrel2's pid file and config db, ipc socket files."""
    candidates = [DEMOS / "config.sqlite", RUNTIME / "config.sqlite", RUNTIME / "run" / "mongrel2.pid"]
    if (RUNTIME / "run").is_dir():
        candidates += [p for p in (RUNTIME / "run").iterdir() if p.is_socket()]
    return [p for p in candidates if p.exists()]


class RunningDemo:
    """`bash demos/run` in its own process group, its output collected line by line."""

    def __init__(self, delay: float) -> None:
        env = dict(os.environ, DEMO_SERVICE_DELAY=f"{delay:g}", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            ["bash", str(DEMOS / "run")], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True)
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def output(self) -> str:
        with self.changed:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`, waiting for it at most `timeout` seconds."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for m in map(regex.search, self.lines) if m][:1]
            return bool(found) or self.process.poll() is not None

        with self.changed:
            self.changed.wait_for(seen, timeout)
        if not found:
            raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s; demo output:\n"
                                 + self.output())
        return found[0]

    def wait_until_answering(self, url: str, timeout: float) -> None:
        """Poll `url` until it answers 200; fail early if the demo exits."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited ({self.process.returncode}) before serving:\n"
                                     + self.output())
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"{url} did not answer within {timeout:g} s; demo output:\n" + self.output())
            # Woken early by new output (e.g. the demo failing), else retry after a short while.
            with self.changed:
                self.changed.wait(0.2)

    def interrupt(self, timeout: float = STOP_TIMEOUT) -> int:
        """Ctrl-C, as a terminal sends it: SIGINT to the whole process group. Returns the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        returncode = self.process.wait(timeout)
        self.reader.join(timeout)
        return returncode

    def kill(self) -> None:
        """Last resort after a failed test: everything in the group, and the daemonized Mongrel2."""
        if self.process.poll() is None:
            try:
                self.interrupt(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        for line in demo_processes():  # only this checkout's demo: its scripts, its Mongrel2
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    require(executable is not None, "chromium is not installed (apt-get install chromium)")
    assert executable is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


@pytest.fixture
def demo(mongrel2_required: None) -> Iterator[RunningDemo]:
    for port in (PORT, *HANDLER_PORTS):
        if port_in_use(port):
            pytest.fail(f"port {port} is already in use: the demo needs port {PORT} (HTTP) and ports "
                        f"{HANDLER_PORTS[0]} and {HANDLER_PORTS[1]} (Mongrel2's handler) free; stop whatever "
                        "holds it and run the tests again")
    leftover = demo_processes()
    if leftover:
        pytest.fail(f"a demo is already running from this checkout: {leftover}")
    running = RunningDemo(DELAY)
    try:
        running.wait_until_answering(URL, START_TIMEOUT)
        yield running
    finally:
        running.kill()
        print(running.output())  # shown by pytest when the test failed


def shot(page: Page, name: str) -> None:
    page.screenshot(path=f"/tmp/demo-{name}.png", full_page=True)


# -- tests -----------------------------------------------------------------------------------------------


def test_demo_end_to_end(demo: RunningDemo, page: Page) -> None:
    ready = demo.wait_for_line(r"\[demo\] ready: open (\S+)", START_TIMEOUT)
    assert ready.group(1) == URL
    assert demo.wait_for_line(r"\[demo\] Mongrel2 is serving on port 6767", 1)

    page.goto(URL)
    assert page.locator("h1").inner_text() == "Calling a slow service"
    assert "takes 2 seconds" in page.locator(".lead").inner_text()
    assert page.locator("#sync-link").get_attribute("href") == "/service/sync"
    assert page.locator("#async-link").get_attribute("href") == "/service/async"
    assert "None yet" in page.locator("#replies").inner_text()
    shot(page, "index")

    # Sync: the page comes back after one delay, showing what the service returned and the time it took.
    page.click("#sync-link")
    page.wait_for_url("**/service/sync", timeout=DELAY * 5 * 1000)
    assert page.locator("h1").inner_text() == "The service answered"
    assert page.locator("#returned").inner_text().startswith("Hello from the web app, sent at ")
    assert page.locator("#returned").inner_text() == page.locator("#sent").inner_text()
    assert "200 Took a while, but I am back." in page.locator(".badge").inner_text()
    elapsed = float(page.locator("#elapsed").inner_text().removesuffix(" s"))
    assert DELAY * 0.95 <= elapsed < DELAY * 1.8
    shot(page, "sync")

    # Async: answered at once; the reply is handled later by the client's ServiceResponseHandler.
    page.go_back()
    assert page.locator("h1").inner_text() == "Calling a slow service"
    started = time.monotonic()
    page.click("#async-link")
    page.wait_for_url("**/service/async")
    assert time.monotonic() - started < DELAY, "the hand-off page waited for the service"
    assert page.locator("h1").inner_text() == "Handed off to the service"
    job = page.locator("#job").inner_text()
    assert re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", job)
    shot(page, "async")
    handled = demo.wait_for_line(rf"\[client\] .*background reply for job {re.escape(job)}, .*: 200 .*"
                                 r"RETURN_DATA='Handed off by the web app at ", DELAY * 5)
    assert handled

    # The index now lists that reply.
    page.goto(URL)
    replies = page.locator("#replies").inner_text()
    assert job in replies and "Handed off by the web app at" in replies
    shot(page, "index-replies")

    # A page that does not exist gets the errors template.
    response = page.goto(URL + "no/such/page")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not Found"
    assert "Error 404" in page.locator(".badge").inner_text()
    shot(page, "error")

    # Ctrl-C stops all three and leaves nothing behind.
    assert demo.interrupt() == 0, demo.output()
    assert "[demo] stopped" in demo.output()
    assert demo_processes() == []
    assert demo_leftovers() == []


def test_two_sync_calls_overlap(demo: RunningDemo, browser: Browser) -> None:
    # Two visitors, so two browser contexts: within one context Chromium holds a second request for a URL
    # that is already loading until the first one's headers arrive (its HTTP cache lock), which would
    # serialize the calls in the browser and hide what the server does.
    contexts = [browser.new_context(), browser.new_context()]
    try:
        pages = [context.new_page() for context in contexts]
        for each in pages:
            each.goto(URL)
        started = time.monotonic()
        # A click from script returns at once; Playwright's own click could wait for the navigation.
        for each in pages:
            each.evaluate("document.getElementById('sync-link').click()")
        for each in pages:
            each.wait_for_selector("#elapsed", timeout=DELAY * 5 * 1000)
        wall = time.monotonic() - started
        shown = [float(each.locator("#elapsed").inner_text().removesuffix(" s")) for each in pages]
    finally:
        for context in contexts:
            context.close()
    # Served side by side: both within about one delay, where one after the other would take two.
    assert wall < 1.8 * DELAY, (wall, shown)
    assert all(DELAY * 0.95 <= s < 1.8 * DELAY for s in shown), shown
    assert demo.interrupt() == 0, demo.output()
    assert demo_processes() == []
    assert demo_leftovers() == []
