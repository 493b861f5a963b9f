"""The demo as a person runs it: `bash demos/run`, a real Chromium on its URL, then Ctrl-C.

Each test starts the whole demo (Mongrel2, demos/demo_service.py, demos/demo_service_client.py) through its
launcher on a free port, in its own process group, with the service's delay shortened to DELAY seconds (see
conftest.py and helpers.py). The launcher's output (every process's log lines, tagged) is collected so a test
can wait for a line.

Screenshots of each page are written to /tmp/demo-*.png.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import shot
from tests.demos.conftest import DELAY
from tests.demos.helpers import START_TIMEOUT, RunningDemo, demo_leftovers

pytestmark = [pytest.mark.browser, pytest.mark.mongrel2]


# -- tests -----------------------------------------------------------------------------------------------


def test_demo_end_to_end(demo: RunningDemo, page: Page) -> None:
    url = demo.url
    ready = demo.wait_for_line(r"\[demo\] ready: open (\S+)", START_TIMEOUT)
    assert ready.group(1) == url
    assert demo.wait_for_line(rf"\[demo\] Mongrel2 is serving on port {demo.port} ", 1)

    page.goto(url)
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
    assert re.fullmatch(r"[0-9a-f]{16}", job)  # (the call's correlation id: 64 random bits)
    shot(page, "async")
    handled = demo.wait_for_line(rf"\[client\] .*background reply for job {re.escape(job)}, .*: 200 .*"
                                 r"RETURN_DATA='Handed off by the web app at ", DELAY * 5)
    assert handled

    # The index now lists that reply.
    page.goto(url)
    replies = page.locator("#replies").inner_text()
    assert job in replies and "Handed off by the web app at" in replies
    shot(page, "index-replies")

    # A page that does not exist gets the errors template.
    response = page.goto(url + "no/such/page")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not Found"
    assert "Error 404" in page.locator(".badge").inner_text()
    shot(page, "error")

    # Ctrl-C stops all three and leaves nothing behind.
    assert demo.interrupt() == 0, demo.output()
    assert "[demo] stopped" in demo.output()
    assert demo.processes() == []
    assert demo_leftovers(demo.runtime) == []


def test_two_sync_calls_overlap(demo: RunningDemo, browser: Browser) -> None:
    # Two visitors, so two browser contexts: within one context Chromium holds a second request for a URL
    # that is already loading until the first one's headers arrive (its HTTP cache lock), which would
    # serialize the calls in the browser and hide what the server does.
    contexts = [browser.new_context(), browser.new_context()]
    try:
        pages = [context.new_page() for context in contexts]
        for each in pages:
            each.goto(demo.url)
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
    assert demo.processes() == []
    assert demo_leftovers(demo.runtime) == []


def test_the_service_answers_the_browser_itself_whole_and_in_pieces(demo: RunningDemo, page: Page) -> None:
    page.goto(demo.url)
    assert page.locator("#forwarded-link").get_attribute("href") == "/service/forwarded"
    assert page.locator("#streamed-link").get_attribute("href") == "/service/streamed"

    # Forwarded: the web app hands the request on and sends nothing; the service's page reaches the browser.
    with page.expect_navigation(timeout=DELAY * 5 * 1000) as forwarded:
        page.click("#forwarded-link")
    response = forwarded.value
    assert response is not None and response.status == 200
    assert page.locator("h1").inner_text() == "The service answered you itself"
    assert page.locator("#way").inner_text() == "Sent by the service"
    conn_id = page.locator("#conn-id").inner_text()
    assert demo.wait_for_line(rf"\[service\] .*answered web connection {conn_id} myself, through Mongrel2", 5)
    assert demo.wait_for_line(r"\[client\] .*GET /service/forwarded -> handed to the service", 1)
    shot(page, "forwarded")

    # Streamed: chunked, every piece shown, and they reached the page one after another, not all at once.
    page.go_back()
    with page.expect_navigation(timeout=DELAY * 5 * 1000) as streamed:
        page.click("#streamed-link")
    response = streamed.value
    assert response is not None and response.status == 200
    assert response.headers.get("transfer-encoding") == "chunked"
    page.wait_for_selector("#stream-end")
    assert page.locator("#way").inner_text() == "Streamed by the service"
    pieces = page.locator("#pieces li.piece").all_inner_texts()
    assert [text.split(",")[0] for text in pieces] == [f"Piece {n} of 5" for n in range(1, 6)]
    arrived = page.evaluate("arrived")
    assert len(arrived) == 5 and arrived == sorted(arrived) and arrived[-1] > arrived[0]
    shot(page, "streamed")

    assert demo.interrupt() == 0, demo.output()
    assert demo.processes() == []
    assert demo_leftovers(demo.runtime) == []
