"""Headless Chromium for the tests that check a page in a real browser.

    with launch() as browser:                      # once per module is enough (a fixture)
        with open_page(path, browser) as opened:   # a fresh offline context per page
            opened.page.click(...)
            opened.assert_clean()                  # no request but the page's own, no errors

The browser is the system's Chromium (Debian: apt-get install chromium), driven by the pinned
playwright package; playwright's own browser download is never used. The context is offline and the
browser is started with its background services off and a proxy that goes nowhere, so a page that
tries to load anything from the network fails the test instead of hanging on the closed network.

Where Chromium or playwright is missing the browser tests are skipped, with how to install them,
unless LM_REQUIRE_BROWSER=1 (as CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

INSTALL = ("these tests need a headless Chromium: install Debian's (apt-get install chromium) and the "
           "pinned playwright package (python3 -m pip install -r requirements.txt)")

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
        "--no-first-run", "--no-default-browser-check", "--disable-quic", "--no-pings",
        "--proxy-server=127.0.0.1:9"]


def unavailable(why: str) -> None:
    """Skip the test, or fail it where LM_REQUIRE_BROWSER=1 (CI must never skip the browser tests)."""
    message = f"{why}; {INSTALL}"
    if os.environ.get("LM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LM_REQUIRE_BROWSER=1 and {message}", pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        unavailable("no chromium on PATH")
    return path


@contextmanager
def launch() -> Iterator[Any]:
    """A headless Chromium (a playwright Browser), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed")
    executable = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Opened:
    """A page, with every request it made and every console error and uncaught exception it had."""

    page: Any
    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.errors == [], f"the page had errors: {self.errors}"
        assert self.requests == [self.url], f"the page requested more than itself: {self.requests}"


@contextmanager
def open_page(path: Path, browser: Any = None, width: int = 1280, height: int = 900) -> Iterator[Opened]:
    """path opened (as a file:// URL) in a fresh offline browser context; without browser, one is
    launched for this page alone."""
    if browser is None:
        with launch() as browser, open_page(path, browser, width, height) as opened:
            yield opened
        return
    context = browser.new_context(offline=True, viewport={"width": width, "height": height})
    try:
        url = Path(path).resolve().as_uri()
        page = context.new_page()
        opened = Opened(page, url)
        context.on("request", lambda request: opened.requests.append(request.url))
        page.on("console", lambda m: opened.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: opened.errors.append(f"page error: {e}"))
        page.goto(url)
        yield opened
    finally:
        context.close()


def explorer_view(page: Any) -> dict:
    """What an attention explorer page (lm/inspect/explorer.html) shows now: the frame (checkpoint) index and
    step, kind, layer, head and row tokens of window.explorer, the frame the heatmap was drawn from (drawn),
    and the heatmap's pixels as a data URL."""
    return page.evaluate("({frame: window.explorer.frame, step: window.explorer.step, kind: window.explorer.kind,"
                         " layer: window.explorer.layer, head: window.explorer.head, rows: window.explorer.rows,"
                         " drawn: document.getElementById('heatmap').dataset.frame,"
                         " pixels: document.getElementById('heatmap').toDataURL()})")
