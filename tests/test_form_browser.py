"""The inquiry form in a real browser (Debian's chromium): a guest fills the default form,
with JavaScript (the proof of work solves itself) and without it, and the inquiry goes on by email.
"""
from __future__ import annotations

from email.utils import getaddresses
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import browser  # noqa: F401
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.form_posts import JPEG, PNG
from tests.mail import make_mail
from tests.relay_sink import RelaySink
from tests.test_outbound import send_due

T = TypeVar("T")


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a thread of its own: Playwright's sync API keeps an event loop running on
    the test's thread, so code that runs a loop of its own (the sink, an outbox round) can't."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result(timeout=120)


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    relay = off_loop(RelaySink().__enter__)
    yield relay
    off_loop(relay.__exit__, None, None, None)


@pytest.fixture
def fgw(tmp_path: Path, database_url: str, sink: RelaySink) -> Iterator[RunningGateway]:
    """A gateway sending through the sink. The minimum fill time is off: a test fills faster
    than any person (tests/test_form_api.py holds the minimum)."""
    running = off_loop(start_gateway, make_settings(tmp_path, database_url, smtp_relay_url=sink.url,
                                                    form_min_fill_seconds=0))
    yield running
    off_loop(running.stop)


def _images(tmp_path: Path) -> list[str]:
    rose, lion = tmp_path / "rose.png", tmp_path / "lion.jpg"
    rose.write_bytes(PNG)
    lion.write_bytes(JPEG)
    return [str(rose), str(lion)]


def _fill(page: Page, *, email: str = "lena@example.org") -> None:
    page.fill("#f-name", "Lena Rose")
    page.fill("#f-email", email)
    page.fill("#f-idea", "A small rose, fine line")
    page.fill("#f-placement", "inner forearm")
    page.fill("#f-size", "8")
    page.fill("#f-dates", "Fridays")
    page.check("#f-_consent")


def _conversation(gw: RunningGateway, token: str) -> dict:
    api = gw.api(token)
    [item] = api.get("/api/v1/conversations").json()["items"]
    return api.get(f"/api/v1/conversations/{item['id']}").json()


def test_the_default_form_with_two_images_becomes_an_inquiry_that_goes_on_by_email(
        fgw: RunningGateway, sink: RelaySink, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    studio = fgw.add_studio("inkwell", name="Inkwell Tattoo")
    context = browser.new_context(locale="de-DE", viewport={"width": 375, "height": 800})
    problems: list[str] = []
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{fgw.base_url}/f/inkwell")
    assert page.locator("h1").inner_text() == "Anfrage an Inkwell Tattoo"
    _fill(page)
    page.set_input_files("#f-images", _images(tmp_path))
    # The widget fetches a challenge and solves it in its worker (our own file: CSP allows it).
    page.wait_for_function("() => { const i = document.querySelector('input[name=altcha]');"
                           " return i !== null && i.value.length > 0; }", timeout=30_000)
    page.click("button[type=submit]")
    page.wait_for_selector("p[role=status]")
    assert "angekommen" in page.locator("p[role=status]").inner_text()
    assert not [p for p in problems if "Content Security Policy" in p], problems
    context.close()

    detail = _conversation(fgw, studio.token)
    inquiry, confirmation = detail["messages"]
    assert inquiry["thread_rule"] == "form"
    for label, value in (("Name", "Lena Rose"), ("Was möchtest du?", "A small rose, fine line"),
                         ("Größe in cm", "8"), ("Wunschtermine", "Fridays")):
        assert f"{label}\n{value}" in inquiry["text"]
    assert sorted(a["filename"] for a in inquiry["attachments"]) == ["lion.jpg", "rose.png"]
    assert "Körperstelle" in confirmation["text"]   # solved proof of work: the labels are echoed

    assert off_loop(send_due, fgw) == 1
    [mail] = [r for r in sink.received if "lena@example.org" in r.rcpt_tos]
    message = mail.message
    [(_, reply_to)] = getaddresses([str(message["Reply-To"])])
    assert reply_to.startswith("inkwell+c")
    body = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Körperstelle" in body
    for theirs in (b"rose", b"lena", b"fridays", b"forearm"):   # nothing of the guest's but the address
        assert theirs not in mail.data.lower().replace(b"lena@example.org", b""), theirs
    answer = make_mail(subject="Re: " + str(message["Subject"]), from_="Lena Rose <lena@example.org>", to=reply_to,
                       in_reply_to=str(message["Message-ID"]), body="Freitag passt, danke!")
    assert fgw.send(answer, reply_to, mail_from="lena@example.org").code == 250
    off_loop(fgw.process)
    messages = _conversation(fgw, studio.token)["messages"]
    assert len(messages) == 3 and messages[2]["direction"] == "inbound"
    assert "Freitag passt" in messages[2]["text"] and messages[2]["state"] == "visible"


def test_required_field_errors_keep_the_answers(fgw: RunningGateway, browser: Browser) -> None:  # noqa: F811
    fgw.add_studio("inkwell")
    context = browser.new_context(locale="en-GB", viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.goto(f"{fgw.base_url}/f/inkwell")
    _fill(page, email="")
    page.click("button[type=submit]")
    page.wait_for_selector("#errors")
    assert page.locator("#f-email-error").inner_text() == "Please fill this in."
    assert page.input_value("#f-name") == "Lena Rose"
    assert page.input_value("#f-idea") == "A small rose, fine line"
    assert page.input_value("#f-size") == "8"
    assert page.is_checked("#f-_consent")
    assert page.get_attribute("#f-email", "aria-invalid") == "true"
    context.close()
    assert fgw.api(fgw.studios["inkwell"].token).get("/api/v1/conversations").json()["items"] == []


def test_the_form_works_without_javascript(fgw: RunningGateway, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    studio = fgw.add_studio("inkwell")
    context = browser.new_context(java_script_enabled=False, locale="de-DE", viewport={"width": 375, "height": 800})
    page = context.new_page()
    page.goto(f"{fgw.base_url}/f/inkwell")
    _fill(page)
    page.set_input_files("#f-images", _images(tmp_path)[:1])
    page.click("button[type=submit]")
    page.wait_for_selector("p[role=status]")
    context.close()
    inquiry, confirmation = _conversation(fgw, studio.token)["messages"]
    assert inquiry["thread_rule"] == "form" and [a["filename"] for a in inquiry["attachments"]] == ["rose.png"]
    # No proof of work without JavaScript: a bare post, whose confirmation echoes nothing.
    assert "Körperstelle" not in confirmation["text"] and confirmation["auto_kind"] == "form_confirmation"
