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


def fill_kept(locator, text: str, settle_ms: int = 300, tries: int = 5) -> None:
    """Fill `locator` with `text` and make sure it stays: a field in a section just opened can be drawn again with
    the page's value a moment after the first keystrokes on a loaded machine (seen once in CI: a Settings field
    read back its old value right after the fill)."""
    for _ in range(tries):
        locator.fill(text)
        locator.page.wait_for_timeout(settle_ms)
        if locator.input_value() == text:
            return
    raise AssertionError(f"the field kept going back to {locator.input_value()!r} instead of {text!r}")
