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

    Not per session: while Playwright's sync API is started it keeps an event loop running in
    the main thread, so every later test that calls asyncio.run() (the outbox rounds, the
    relay sink) failed with "cannot be called from a running event loop"."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
