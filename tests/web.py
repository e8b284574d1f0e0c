"""Helpers of the web messenger's tests: a gateway whose public URL is its own port, with a
helpdesk that mails sign-in links into a relay sink, and a browser-like HTTP client."""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import MAIL_DOMAIN, RunningGateway, make_settings, start_gateway
from tests.relay_sink import Received, RelaySink, free_port
from tests.test_outbound import send_due

HELPDESK = f"helpdesk@{MAIL_DOMAIN}"
LINK = re.compile(r"https?://\S+/app/login/link\?token=[A-Za-z0-9_-]+")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
T = TypeVar("T")


def off_thread(work: Callable[[], T]) -> T:
    """Run `work` in a thread of its own: Playwright's sync API keeps an event loop running in
    the test's thread, so the sink's and the outbox's own loops cannot start there."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result(timeout=120)


@dataclass
class Web:
    gw: RunningGateway
    sink: RelaySink

    def client(self, **headers: str) -> httpx.Client:
        """A browser without script: keeps cookies, follows no redirect by itself."""
        client = httpx.Client(base_url=self.gw.base_url, timeout=30, headers=headers)
        self.gw.clients.append(client)
        return client

    def ask(self, client: httpx.Client, email: str) -> httpx.Response:
        page = client.get("/app/login")
        return client.post("/app/login", data={"email": email, "csrf_token": csrf_of(page.text)})

    def mailed(self) -> list[Received]:
        """What one outbox round sends now."""
        before = len(self.sink.received)
        off_thread(lambda: send_due(self.gw))
        return self.sink.received[before:]

    def login_mail(self) -> Received:
        """The one sign-in mail one outbox round sends now. It comes from the helpdesk; a
        studio's notifications of earlier guest mail (gateway/outbound/notifications.py) may go
        out in the same round."""
        [mail] = [m for m in self.mailed() if m.mail_from == HELPDESK]
        return mail

    def link_for(self, client: httpx.Client, email: str) -> str:
        self.ask(client, email)
        return link_of(self.login_mail())

    def sign_in(self, client: httpx.Client, link: str) -> httpx.Response:
        path = link.split("://", 1)[1].split("/", 1)[1]
        page = client.get("/" + path)
        assert page.status_code == 200, page.text
        token = path.split("token=", 1)[1]
        return client.post("/app/login/link", data={"token": token, "csrf_token": csrf_of(page.text)})


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html
    return match.group(1)


def link_of(mail: Received) -> str:
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = LINK.search(text)
    assert match, text
    return match.group(0)


@contextmanager
def serving(tmp_path: Path, database_url: str, **overrides: Any) -> Iterator[Web]:
    """A gateway for the pages with its relay sink; `overrides` are more settings."""
    port = free_port()
    sink = off_thread(RelaySink().__enter__)
    try:
        running = start_gateway(make_settings(tmp_path, database_url, helpdesk_address=HELPDESK,
                                              smtp_relay_url=sink.url, public_url=f"http://127.0.0.1:{port}",
                                              **overrides), http_port=port)
        try:
            yield Web(running, sink)
        finally:
            running.stop()
    finally:
        off_thread(lambda: sink.__exit__(None, None, None))


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[Web]:
    with serving(tmp_path, database_url) as running:
        yield running
