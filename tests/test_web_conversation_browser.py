"""The conversation page in a real browser (Debian's chromium through Playwright) against a real
gateway with the relay sink (issue 15): a reply with an attachment sent by Ctrl+Enter reaches the
relay threaded; held mail accepted; close and reopen; delete and the restore refusal of the free
plan; a guest's HTML with script, form and a remote image stays inert, and the "remote" host
(a tiny local HTTP server) hears nothing before the click; 375 px without horizontal scrolling;
axe-core; screenshots into build/screenshots/ (README)."""
from __future__ import annotations

import threading
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, Page

from tests.access import held_message
from tests.browser import browser  # noqa: F401
from tests.test_web_browser import DESKTOP, PHONE, context, no_horizontal_scroll, serious_violations, shoot, sign_in
from tests.test_web_conversation import PNG, guest_mail
from tests.web import Web, web  # noqa: F401


class RemoteHost:
    """A stranger's web server, as a guest's HTML names it: records every path asked for."""

    def __init__(self) -> None:
        paths: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, *args: object) -> None:
                pass

        self.paths = paths
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="remote-host", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def remote() -> Iterator[RemoteHost]:
    host = RemoteHost()
    try:
        yield host
    finally:
        host.stop()


def until(check: object, seconds: float = 10.0) -> None:
    """Poll `check()` until it is true, or fail after `seconds` (a deadline, not a sleep)."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def open_conversation(page: Page, web: Web, subject: str) -> None:
    page.goto(web.gw.base_url + "/app/")
    page.get_by_role("link", name=subject).first.click()
    page.get_by_role("heading", name=subject).wait_for()


def test_a_reply_with_an_attachment_sent_by_ctrl_enter_reaches_the_relay_threaded(
        web: Web, browser: Browser, tmp_path) -> None:  # noqa: F811
    studio = web.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser, PHONE)
    page = ctx.new_page()
    sign_in(web, page)
    _, mid = guest_mail(web.gw, studio, attachments=[("motiv.png", "image/png", PNG)])
    open_conversation(page, web, "Tattoo Anfrage")
    assert page.locator(".attachments img").count() == 1  # the guest's image as a thumbnail
    assert no_horizontal_scroll(page)
    assert page.get_by_label("Your reply").is_visible() and page.get_by_role("button", name="Send reply").is_visible()
    assert serious_violations(page) == []
    shoot(page, "conversation-reply-phone")
    sketch = tmp_path / "skizze.png"
    sketch.write_bytes(PNG)
    page.get_by_label("Attach files").set_input_files(str(sketch))
    page.get_by_label("Your reply").fill("Klar, im März geht das. Anbei eine Skizze.")
    page.get_by_label("Your reply").press("Control+Enter")
    page.locator(".message.outbound .delivery", has_text="Queued").wait_for()
    assert "skizze.png" in page.locator(".message.outbound").inner_text()
    assert no_horizontal_scroll(page)
    # The reply to the guest (the owner's notification of her inquiry goes out in the same round).
    [mail] = [m for m in web.mailed() if m.rcpt_tos == ["lena@example.org"]]
    assert mail.message["In-Reply-To"] == mid and mid in mail.message["References"]
    assert [a.get_filename() for a in mail.message.iter_attachments()] == ["skizze.png"]
    assert "Anbei eine Skizze." in mail.message.get_body(("plain",)).get_content()
    page.reload()
    page.locator(".message.outbound .delivery", has_text="Sent").wait_for()
    ctx.close()

    wide = context(browser, DESKTOP)
    desk = wide.new_page()
    sign_in(web, desk)
    open_conversation(desk, web, "Tattoo Anfrage")
    assert serious_violations(desk) == []
    shoot(desk, "conversation-reply-desktop")
    wide.close()


LISTENING = ("() => document.getElementById('live')['htmx-internal-data']"
             "?.sseEventSource?.readyState === EventSource.OPEN")


def test_the_guests_answer_and_the_replys_delivery_appear_without_reload(web: Web, browser: Browser) -> None:  # noqa: F811
    studio = web.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser, DESKTOP)
    page = ctx.new_page()
    try:
        sign_in(web, page)
        _, mid = guest_mail(web.gw, studio)
        open_conversation(page, web, "Tattoo Anfrage")
        # Until the stream is open an event could come before the page listens (it would then
        # only show after a reload, rightly): wait for it, then mark the page to see no reload.
        page.wait_for_function(LISTENING, timeout=10_000)
        page.evaluate("window.notReloaded = true")
        answer = EmailMessage()
        answer["From"], answer["To"], answer["Subject"] = "Lena <lena@example.org>", studio.address, "Re: Tattoo Anfrage"
        answer["Message-ID"], answer["In-Reply-To"], answer["References"] = make_msgid(domain="example.org"), mid, mid
        answer.set_content("Samstag passt mir auch.")
        assert web.gw.send(answer.as_bytes(policy=SMTP), studio.address, mail_from="lena@example.org").code == 250
        web.gw.process()
        page.locator(".message.inbound", has_text="Samstag passt mir auch.").wait_for(timeout=15_000)
        assert page.evaluate("window.notReloaded === true"), "the page was reloaded instead of refreshed"
        # A reply shows "queued" on its own page, then turns "sent" when the relay took it.
        page.get_by_label("Your reply").fill("Dann bis Samstag!")
        page.get_by_role("button", name="Send reply").click()
        page.locator(".message.outbound .delivery", has_text="Queued").wait_for()
        page.wait_for_function(LISTENING, timeout=10_000)
        page.evaluate("window.notReloaded = true")
        assert any("Dann bis Samstag!" in str(m.message) for m in web.mailed())  # one outbox round: the relay takes it
        page.locator(".message.outbound .delivery", has_text="Sent").wait_for(timeout=15_000)
        assert page.evaluate("window.notReloaded === true")
    finally:
        ctx.close()


def test_accept_held_mail_close_and_reopen_delete_and_see_the_restore_refusal(web: Web, browser: Browser) -> None:  # noqa: F811
    studio = web.gw.add_studio("inkwell", "Inkwell")
    ctx = context(browser, PHONE)
    page = ctx.new_page()
    sign_in(web, page)
    _, mid = guest_mail(web.gw, studio)
    held_message(web.gw, studio, mid, body="Ich schreibe für meine Freundin.")
    open_conversation(page, web, "Tattoo Anfrage")
    page.get_by_role("link", name="1 message for this conversation is held for your decision.").click()
    page.get_by_role("heading", name="Held mail").wait_for()
    assert serious_violations(page) == [] and no_horizontal_scroll(page)
    shoot(page, "held-phone")
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    shoot(page, "held-desktop")
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.get_by_role("button", name="Accept").click()
    page.get_by_role("heading", name="Tattoo Anfrage").wait_for()
    assert "Ich schreibe für meine Freundin." in page.locator(".messages").inner_text()

    page.get_by_role("button", name="Close").click()
    page.get_by_role("button", name="Reopen").wait_for()
    assert "Closed" in page.locator(".meta").inner_text()
    page.get_by_role("button", name="Reopen").click()
    page.get_by_role("button", name="Close").wait_for()
    assert "Closed" not in page.locator(".meta").inner_text()

    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("heading", name="Trash").wait_for()
    assert "Restoring needs a paid plan." in page.inner_text("main")
    assert "Tattoo Anfrage" in page.locator(".trash").inner_text()
    assert page.get_by_role("button", name="Restore").count() == 0
    assert serious_violations(page) == [] and no_horizontal_scroll(page)
    shoot(page, "trash-phone")
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    assert serious_violations(page) == []
    shoot(page, "trash-desktop")
    page.goto(web.gw.base_url + "/app/")
    assert page.get_by_role("link", name="Tattoo Anfrage").count() == 0
    ctx.close()


def test_a_guests_html_stays_inert_and_remote_images_wait_for_the_click(
        web: Web, browser: Browser, remote: RemoteHost) -> None:  # noqa: F811
    studio = web.gw.add_studio("inkwell", "Inkwell")
    html = (f'<p>Hallo aus dem Newsletter</p><img src="{remote.url}/pixel.png" alt="Pixel">'
            f'<script>document.body.innerHTML = "pwned"; fetch("{remote.url}/script")</script>'
            f'<form action="{remote.url}/form"><input name="x"><button>Go</button></form>'
            f'<style>body {{ background: url({remote.url}/css.png) }}</style>'
            f'<div style="background: url({remote.url}/style.png)">Styled</div>')
    # No bypass_csp here: the frame's own Content-Security-Policy is what is tested.
    ctx = browser.new_context(viewport=PHONE, locale="en-US")  # type: ignore[arg-type]
    page = ctx.new_page()
    sign_in(web, page)
    guest_mail(web.gw, studio, html=html, subject="Newsletter")
    responses: dict[str, str] = {}
    page.on("response", lambda r: responses.setdefault(r.url.split("?")[0], r.headers.get("content-security-policy", "")))
    open_conversation(page, web, "Newsletter")
    page.get_by_text("Show the formatted version").click()
    frame_element = page.locator("iframe")
    assert frame_element.get_attribute("sandbox") == "allow-popups allow-popups-to-escape-sandbox"
    frame = page.frame_locator("iframe")
    frame.get_by_text("Hallo aus dem Newsletter").wait_for()
    assert "pwned" not in frame.locator("body").inner_text()
    assert frame.locator("form, script, style").count() == 0
    [policy] = [csp for url, csp in responses.items() if url.endswith("/html")]
    assert policy.startswith("sandbox") and "allow-scripts" not in policy
    assert remote.paths == []  # the stranger's server heard nothing: not the image, not the script
    assert no_horizontal_scroll(page)

    page.get_by_role("link", name="Load remote images").click()
    until(lambda: "/pixel.png" in remote.paths)
    assert set(remote.paths) == {"/pixel.png"}  # the image only: no script ran, no styles loaded
    ctx.close()
