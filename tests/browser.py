"""Chromium for the browser tests: Debian's chromium driven by playwright (the fixtures `browser` and
`page` are in tests/conftest.py), and screenshots kept as test artifacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import Page

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot, /tmp/demo-NAME.png, copied to $ARTIFACTS_DIR when that is set."""
    path = Path(f"/tmp/demo-{name}.png")
    page.screenshot(path=str(path), full_page=True)
    artifacts = os.environ.get("ARTIFACTS_DIR")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)
    return path
