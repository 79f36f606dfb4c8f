"""Open the app in Debian's chromium through playwright, as a person would (shared by the browser tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def require_browser():
    """The playwright API, or skip the calling test module when playwright or chromium is missing."""
    api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for browser tests")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
    return api


@contextlib.contextmanager
def chromium():
    """A headless chromium, closed at the end."""
    api = require_browser()
    with api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_app_page(browser, url: str):
    """A new page of `browser` showing the app at `url`, loaded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    open_app(page, url)
    return page


@contextlib.contextmanager
def browser_page(url: str):
    """A page showing the app at `url`, loaded (the page-load events have filled the form)."""
    with chromium() as browser:
        yield new_app_page(browser, url)


def open_app(page, url: str | None = None) -> None:
    """Go to `url` (or reload) and wait until the page shows the values of now: typing before that would be
    overwritten by the page-load events."""
    page.goto(url) if url else page.reload()
    page.wait_for_selector("body[data-hg-loaded]", timeout=60_000)
