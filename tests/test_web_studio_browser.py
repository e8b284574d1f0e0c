"""The live inbox and the studio's pages in a real browser (Debian's chromium through
Playwright) against a real gateway: an inquiry sent by SMTP appears in the open inbox without
reload, the settings persist, a member cannot reach the owner's pages, a phone's width, axe-core,
and screenshots in build/screenshots/ (README)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.access import connect_member
from tests.browser import browser  # noqa: F401
from tests.test_events import open_streams, streams_become
from tests.test_web_browser import (
    DESKTOP,
    PHONE,
    context,
    inquiry,
    no_horizontal_scroll,
    serious_violations,
    shoot,
    sign_in,
)
from tests.web import Web, serving, web  # noqa: F401

OWNER, MEMBER = "owner@inkwell.example", "artist@inkwell.example"
OWNERS_PAGES = {"people": "People", "billing": "Billing", "support": "Support access", "account": "Data and account"}


def test_an_inquiry_sent_by_smtp_appears_in_the_open_inbox_without_reload(web: Web, browser: Browser) -> None:  # noqa: F811
    web.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser)
    page = ctx.new_page()
    try:
        sign_in(web, page)
        page.get_by_text("No conversations yet").wait_for()
        # The stream is open once the browser has a response for it; until then an event could
        # come before the page listens, and the page would (rightly) only show it after a reload.
        page.wait_for_function("() => document.getElementById('live')['htmx-internal-data']"
                               "?.sseEventSource?.readyState === EventSource.OPEN", timeout=10_000)
        page.evaluate("window.notReloaded = true")
        inquiry(web, "Live: Termin am Samstag", "Habt ihr Samstag Zeit?")
        expect(page.locator(".inbox .row")).to_have_count(1, timeout=15_000)
        assert "Live: Termin am Samstag" in page.locator(".inbox .row").inner_text()
        assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of refreshed"
        inquiry(web, "Live: Zweite Frage", "Und Sonntag?", sender="Max <max@example.org>")
        expect(page.locator(".inbox .row")).to_have_count(2, timeout=15_000)
        assert "Live: Zweite Frage" in page.locator(".inbox .row").nth(0).inner_text()
    finally:
        ctx.close()


def test_the_owner_changes_settings_that_persist_and_a_member_cannot_see_the_owners_pages(
        web: Web, browser: Browser) -> None:  # noqa: F811
    studio = web.gw.add_studio("inkwell", "Inkwell")
    connect_member(web.gw, studio, MEMBER)
    ctx = context(browser)
    page = ctx.new_page()
    try:
        sign_in(web, page)
        page.get_by_role("link", name="Settings").first.click()
        page.get_by_role("heading", name="Settings").wait_for()
        assert serious_violations(page) == []
        shoot(page, "settings-desktop")
        page.get_by_label("Name", exact=True).fill("Inkwell Tattoo")
        page.get_by_label("Time zone").fill("Europe/Vienna")
        page.get_by_label("Acknowledge new inquiries automatically").uncheck()
        page.get_by_role("button", name="Save settings").click()
        page.get_by_role("status").wait_for()
        page.reload()
        assert page.get_by_label("Name", exact=True).input_value() == "Inkwell Tattoo"
        assert page.get_by_label("Time zone").input_value() == "Europe/Vienna"
        assert not page.get_by_label("Acknowledge new inquiries automatically").is_checked()
        page.get_by_role("link", name="People").click()
        page.get_by_role("heading", name="People").wait_for()
        assert MEMBER in page.content()
        for name, heading in OWNERS_PAGES.items():
            page.goto(web.gw.base_url + f"/app/{name}")
            page.get_by_role("heading", name=heading, exact=True).wait_for()
            assert serious_violations(page) == [], name
            shoot(page, f"{name}-desktop")
        for name in ("settings", *OWNERS_PAGES):
            page.set_viewport_size(PHONE)
            page.goto(web.gw.base_url + f"/app/{name}")
            assert no_horizontal_scroll(page), f"/app/{name} scrolls sideways at 375 px"
            shoot(page, f"{name}-phone")
            page.set_viewport_size(DESKTOP)
    finally:
        ctx.close()

    member_ctx = context(browser)
    member = member_ctx.new_page()
    try:
        sign_in(web, member, MEMBER)
        member.get_by_role("link", name="Settings").first.click()
        member.get_by_role("heading", name="Settings").wait_for()
        assert member.get_by_role("link", name="People").count() == 0  # no link to the owner's page
        assert member.get_by_role("button", name="Save settings").count() == 0
        assert "Only the studio's owner can change the studio's settings." in member.content()
        answer = member.goto(web.gw.base_url + "/app/people")
        assert answer is not None and answer.status == 403
        assert "Only the studio's owner can open this page." in member.content()
        assert MEMBER not in member.locator("main").inner_text()
    finally:
        member_ctx.close()


@pytest.fixture
def beating(tmp_path: Path, database_url: str) -> Iterator[Web]:
    """The pages' gateway with a short heartbeat: a stream notices a logout within a second."""
    with serving(tmp_path, database_url, events_heartbeat=0.3) as running:
        yield running


def test_signing_out_closes_the_open_inboxs_live_stream(beating: Web, browser: Browser) -> None:  # noqa: F811
    beating.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser)
    try:
        inbox, other_tab = ctx.new_page(), ctx.new_page()
        before = open_streams()
        sign_in(beating, inbox)
        assert streams_become(before + 1), "the open inbox did not listen"
        other_tab.goto(beating.gw.base_url + "/app/")
        other_tab.get_by_role("button", name="Sign out").click()
        other_tab.get_by_role("heading", name="Sign in").wait_for()
        assert streams_become(before), "the inbox's stream stayed open after signing out"
        # The browser tries again with the ended session: refused, so nothing opens again.
        inbox.wait_for_function("() => document.getElementById('live')['htmx-internal-data']"
                                "?.sseEventSource?.readyState !== EventSource.OPEN", timeout=10_000)
        assert open_streams() == before
    finally:
        ctx.close()
