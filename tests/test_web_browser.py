"""The web messenger in a real browser (Debian's chromium through Playwright) against a real
gateway: sign in by the link the gateway mailed, sign out, refused links, a phone's width,
axe-core on each page (login, inbox, conversation, refused link), and screenshots a person can look at in build/screenshots/ (README)."""
from __future__ import annotations

from pathlib import Path
from playwright.sync_api import Browser, BrowserContext, Page

from tests.browser import browser  # noqa: F401
from tests.mail import make_mail
from tests.web import Web, link_of, web  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "build" / "screenshots"
AXE = next((ROOT / "tests" / "vendor").glob("axe-core-*.min.js"))
OWNER = "owner@inkwell.example"
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


def context(browser: Browser, viewport: dict[str, int] = DESKTOP, locale: str = "en-US") -> BrowserContext:
    # bypass_csp only lets the test inject axe-core; the pages' own CSP is asserted over HTTP.
    return browser.new_context(viewport=viewport, locale=locale, bypass_csp=True)  # type: ignore[arg-type]


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
    found = page.evaluate("async () => (await axe.run(document)).violations"
                          ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))")
    return [f"{v['id']} ({v['impact']}): {v['nodes']}" for v in found if v["impact"] in ("serious", "critical")]


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def inquiry(web: Web, subject: str, body: str, sender: str = "Lena Müller <lena@example.org>") -> None:
    studio = web.gw.studios["inkwell"]
    raw = make_mail(subject=subject, from_=sender, to=studio.address, body=body)
    assert web.gw.send(raw, studio.address, mail_from="lena@example.org").code == 250
    web.gw.process()


def sign_in(web: Web, page: Page, email: str = OWNER) -> None:
    page.goto(web.gw.base_url + "/app/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Mail me a sign-in link").click()
    page.get_by_role("heading", name="Check your mail").wait_for()
    mail = web.login_mail()
    page.goto(link_of(mail))
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()


def test_sign_in_by_the_mailed_link_then_sign_out_ends_the_session(web: Web, browser: Browser) -> None:  # noqa: F811
    web.gw.add_studio("inkwell", "Inkwell")
    inquiry(web, "Tattoo am Unterarm", "Hallo! Ich hätte gern ein kleines Motiv am Unterarm, geht das im März?")
    inquiry(web, "Frage zum Termin", "Kann ich den Termin am Freitag auf 15 Uhr verschieben?",
            sender="Jonas Weber <jonas@example.org>")
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        ctx = context(browser, viewport)
        page = ctx.new_page()
        page.goto(web.gw.base_url + "/app/login")
        assert serious_violations(page) == []
        shoot(page, f"login-{name}")
        sign_in(web, page)
        rows = page.locator(".inbox .row")
        assert rows.count() == 2
        assert "Frage zum Termin" in rows.nth(0).inner_text()  # newest activity first
        assert rows.nth(0).locator(".subject").evaluate("e => getComputedStyle(e).fontWeight") == "700"
        assert serious_violations(page) == []
        assert no_horizontal_scroll(page)
        shoot(page, f"inbox-{name}")
        rows.nth(1).get_by_role("link").click()
        page.get_by_role("heading", name="Tattoo am Unterarm").wait_for()
        assert serious_violations(page) == []
        assert no_horizontal_scroll(page)
        shoot(page, f"conversation-{name}")
        page.get_by_role("link", name="To the inbox").click()
        page.get_by_role("heading", name="Inbox").wait_for()

        [cookie] = [c for c in ctx.cookies() if c["name"] == "gw_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("heading", name="Sign in").wait_for()
        ctx.close()

        replay = context(browser, viewport)  # the old cookie no longer opens the inbox
        replay.add_cookies([cookie])  # type: ignore[list-item]
        again = replay.new_page()
        again.goto(web.gw.base_url + "/app/")
        assert again.url.endswith("/app/login")
        replay.close()


def test_a_used_or_forged_link_shows_the_clear_page(web: Web, browser: Browser) -> None:  # noqa: F811
    web.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser, PHONE)
    page = ctx.new_page()
    sign_in(web, page)
    used = ctx.new_page()
    used.goto(page.url.rsplit("/app/", 1)[0] + "/app/login/link?token=" + "x" * 43)
    used.get_by_role("heading", name="This link does not sign in").wait_for()
    assert "not valid" in used.inner_text("main") and used.locator("form").count() == 0
    assert serious_violations(used) == []
    assert no_horizontal_scroll(used)
    shoot(used, "link-refused-phone")
    ctx.close()

    other = context(browser, DESKTOP, locale="de-DE")
    page = other.new_page()
    page.goto(web.gw.base_url + "/app/login")
    page.get_by_label("E-Mail-Adresse").fill(OWNER)
    page.get_by_role("button", name="Anmeldelink schicken").click()
    page.get_by_role("heading", name="Schau in dein Postfach").wait_for()
    mail = web.login_mail()
    link = link_of(mail)
    page.goto(link)
    page.get_by_role("button", name="Anmelden").click()
    page.get_by_role("heading", name="Posteingang").wait_for()
    page.goto(link)  # used once already
    page.get_by_role("heading", name="Mit diesem Link geht keine Anmeldung").wait_for()
    assert "schon benutzt" in page.inner_text("main")
    other.close()
