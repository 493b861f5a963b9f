"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from brubeck.testing import Mongrel2Server, dnsmasq_available, mongrel2_available
from tests.browser import CHROMIUM_ARGS, chromium_path, require


@pytest.fixture
def mongrel2_required() -> None:
    """Skip when Mongrel2 is not installed, but fail instead when ``CI`` is set: CI must run these."""
    if mongrel2_available():
        return
    reason = "mongrel2 and m2sh are not on PATH (apt-get install mongrel2-core)"
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def dnsmasq_required() -> None:
    """Skip without dnsmasq, but fail instead when ``CI`` is set: CI must run these."""
    if dnsmasq_available():
        return
    reason = "dnsmasq is not installed (apt-get install dnsmasq-base)"
    if "CI" in os.environ:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def mongrel2(mongrel2_required: None) -> Iterator[Mongrel2Server]:
    """A started :class:`Mongrel2Server` with default settings, stopped after the test."""
    with Mongrel2Server() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs Mongrel2 (through `mongrel2_required`) `mongrel2`, so `-m` can select it."""
    for item in items:
        if "mongrel2_required" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mongrel2)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, for one test module (fails without it when CI is set)."""
    executable = chromium_path()
    require(executable is not None, "chromium is not installed (apt-get install chromium)")
    assert executable is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context's page, 1100x800, with a 10 s default timeout."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()
