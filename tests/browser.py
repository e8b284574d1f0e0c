"""Debian's chromium driven by Playwright for Python: the real browser of the page tests.

Playwright's own browser download can't be reached from these machines, so the tests launch
the distribution's binary through `executable_path=`; `make test` installs it (Makefile).
A test module takes the fixture with `from tests.browser import browser  # noqa: F401`.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium per test module; each test opens its own context (cookies apart).

    Not per session: Playwright's sync API keeps an event loop running on the main thread
    while it is open, so every later module's `asyncio.run` (an outbox round, the relay sink)
    would fail with "Cannot run the event loop while another loop is running". Launching
    chromium once per module costs about a second."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
