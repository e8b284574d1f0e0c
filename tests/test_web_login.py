"""Signing in to the web messenger without passwords (issue 15), over real HTTP against a real
gateway whose helpdesk mails the links into a relay sink; SQLite and PostgreSQL."""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, select, update

from gateway.access.web_sessions import IDLE_LIMIT, LINK_VALIDITY, TOUCH_EVERY
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import LOGIN_LINK, MESSAGE, WEB_SESSION
from gateway.web.login import PER_ADDRESS
from tests.access import PROFILES, connect_member
from tests.conftest import gateway_subprocess_env, make_settings, start_gateway
from tests.mail import make_mail
from tests.web import HELPDESK, Web, csrf_of, link_of, web  # noqa: F401

OWNER = "owner@inkwell.example"


def signed_in_client(web: Web, email: str = OWNER) -> httpx.Client:
    client = web.client()
    link = web.link_for(client, email)
    assert web.sign_in(client, link).status_code == 303
    return client


def test_a_connected_address_gets_a_link_that_signs_in_once(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = web.client()
    answer = web.ask(client, OWNER)
    assert answer.status_code == 200 and "owner@inkwell.example" in answer.text
    [mail] = web.mailed()
    assert mail.rcpt_tos == [OWNER] and mail.mail_from == HELPDESK
    link = link_of(mail)
    assert link.startswith(web.gw.settings.public_url + "/app/login/link?token=")  # origin from the setting
    token = link.rsplit("=", 1)[1]

    # Opening the link (as a mail scanner would, twice) shows a button and uses nothing up.
    for _ in range(2):
        assert client.get(f"/app/login/link?token={token}").status_code == 200
    signed = web.sign_in(client, link)
    assert signed.status_code == 303 and signed.headers["location"] == "/app/"
    inbox = client.get("/app/")
    assert inbox.status_code == 200 and "Inkwell" in inbox.text

    # Once: the same link again is the clear page, with no sign-in form and no session.
    again = web.client()
    used = again.get(f"/app/login/link?token={token}")
    assert used.status_code == 410 and "csrf_token" not in used.text
    page = again.get("/app/login")
    refused = again.post("/app/login/link", data={"token": token, "csrf_token": csrf_of(page.text)})
    assert refused.status_code == 410 and "gw_session" not in refused.headers.get("set-cookie", "")

    # Only the hash is stored, and the mail's stored text shows the link masked.
    with read_tx(web.gw.engine) as conn:
        hashes = list(conn.execute(select(LOGIN_LINK.c.token_hash)).scalars())
        texts = list(conn.execute(select(MESSAGE.c.text).where(MESSAGE.c.auto_kind == "login_link")).scalars())
        sessions = list(conn.execute(select(WEB_SESSION.c.token_hash)).scalars())
    assert token not in "".join(hashes) and token not in "".join(texts) and "••••" in texts[0]
    assert client.cookies["gw_session"] not in "".join(sessions)


def test_any_other_address_gets_the_same_answer_and_no_mail(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    member_id, _ = connect_member(web.gw, web.gw.studios["inkwell"], "gone@inkwell.example")
    assert web.gw.api(web.gw.studios["inkwell"].token).delete(f"{PROFILES}/{member_id}").status_code in (200, 204)
    client = web.client()
    known = web.ask(client, OWNER)
    unknown = web.ask(client, "stranger@example.org")
    disconnected = web.ask(client, "gone@inkwell.example")
    strip = re.compile(r"[\w.+-]+@[\w.-]+|value=\"[^\"]*\"")
    assert unknown.status_code == disconnected.status_code == known.status_code == 200
    assert strip.sub("", unknown.text) == strip.sub("", known.text) == strip.sub("", disconnected.text)
    assert [m.rcpt_tos for m in web.mailed()] == [[OWNER]]


def test_forged_and_expired_links_get_the_clear_page(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = web.client()
    forged = client.get("/app/login/link?token=" + "A" * 43)
    assert forged.status_code == 404 and "csrf_token" not in forged.text and "<form" not in forged.text
    link = web.link_for(client, OWNER)
    with write_tx(web.gw.engine) as conn:
        conn.execute(update(LOGIN_LINK).values(expires_at=LOGIN_LINK.c.created_at))
    expired = client.get("/app/login/link?token=" + link.rsplit("=", 1)[1])
    assert expired.status_code == 410 and "<form" not in expired.text
    assert LINK_VALIDITY == timedelta(minutes=15)


def test_cookie_flags_on_plain_http_and_pages_headers(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = web.client()
    signed = web.sign_in(client, web.link_for(client, OWNER))
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith("gw_session=gwsess_")  # no __Host- prefix without https
    session = cookie.split(", gw_presession", 1)[0].lower()
    assert "httponly" in session and "samesite=lax" in session and "path=/" in session and "secure" not in session
    for path in ("/app/", "/app/login"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["referrer-policy"] == "same-origin" and headers["cache-control"] == "no-store"
    page = client.get("/app/").text
    assert "<script>" not in page and " style=" not in page and "onclick" not in page  # nothing inline
    assert client.get("/app/static/vendor/htmx-2.0.11.min.js").status_code == 200


def test_forms_without_or_with_a_wrong_csrf_token_or_from_another_origin_are_refused(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = web.client()
    page = client.get("/app/login")
    token = csrf_of(page.text)
    assert client.post("/app/login", data={"email": OWNER}).status_code == 403
    assert client.post("/app/login", data={"email": OWNER, "csrf_token": "0" * 64}).status_code == 403
    assert web.client().post("/app/login", data={"email": OWNER, "csrf_token": token}).status_code == 403  # no cookie
    evil = client.post("/app/login", data={"email": OWNER, "csrf_token": token},
                       headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and "content-security-policy" in evil.headers
    assert web.mailed() == []
    same = client.post("/app/login", data={"email": OWNER, "csrf_token": token},
                       headers={"Origin": web.gw.settings.public_url})
    assert same.status_code == 200 and len(web.mailed()) == 1

    signed = signed_in_client(web)
    assert signed.post("/app/logout", data={}).status_code == 403
    assert signed.get("/app/").status_code == 200  # still signed in


def test_asking_is_rate_limited_per_address_and_per_client(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = web.client()
    for _ in range(PER_ADDRESS):
        assert web.ask(client, OWNER).status_code == 200
    blocked = web.ask(client, OWNER)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert len(web.mailed()) == PER_ADDRESS
    assert web.ask(client, "other@example.org").status_code == 200  # another address still may ask
    for n in range(30):  # and the client is braked after its own budget
        if web.ask(client, f"n{n}@example.org").status_code == 429:
            break
    else:
        raise AssertionError("the client was never braked")


def test_logout_ends_the_session_for_every_copy_of_the_cookie(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = signed_in_client(web)
    stolen = web.client()
    stolen.cookies.set("gw_session", client.cookies["gw_session"])
    assert stolen.get("/app/").status_code == 200
    out = client.post("/app/logout", data={"csrf_token": csrf_of(client.get("/app/").text)})
    assert out.status_code == 303 and out.headers["location"] == "/app/login"
    stale = stolen.get("/app/")
    assert stale.status_code == 303 and stale.headers["location"] == "/app/login"


def test_disconnecting_a_member_ends_their_session_at_once(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    member_id, _ = connect_member(web.gw, studio, "artist@inkwell.example")
    member = signed_in_client(web, "artist@inkwell.example")
    assert member.get("/app/").status_code == 200
    assert web.gw.api(studio.token).delete(f"{PROFILES}/{member_id}").status_code in (200, 204)
    stale = member.get("/app/")
    assert stale.status_code == 303 and stale.headers["location"] == "/app/login"


def test_a_session_idle_for_fourteen_days_is_over(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = signed_in_client(web)
    with write_tx(web.gw.engine) as conn:
        conn.execute(update(WEB_SESSION).values(last_seen_at=WEB_SESSION.c.last_seen_at - IDLE_LIMIT))
    assert client.get("/app/").status_code == 303


def test_activity_is_written_only_when_due_and_keeps_the_session(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    client = signed_in_client(web)

    def last_seen() -> object:
        with read_tx(web.gw.engine) as conn:
            return conn.execute(select(WEB_SESSION.c.last_seen_at)).scalar_one()

    fresh = last_seen()
    assert client.get("/app/").status_code == 200 and last_seen() == fresh  # seen just now: nothing written
    def idle_for_most_of_the_limit() -> None:
        with write_tx(web.gw.engine) as conn:
            conn.execute(update(WEB_SESSION).values(last_seen_at=utcnow() - IDLE_LIMIT + TOUCH_EVERY))

    idle_for_most_of_the_limit()
    before = last_seen()
    assert client.get("/app/").status_code == 200
    assert last_seen() > before  # type: ignore[operator]  # the idle limit counts from this page


def test_deleting_the_account_ends_the_session(web: Web) -> None:
    from gateway.lifecycle.erasure import erase_studio

    studio = web.gw.add_studio("inkwell", "Inkwell")
    client = signed_in_client(web)
    with write_tx(web.gw.engine) as conn:
        assert erase_studio(conn, studio.id, web.gw.settings.mail_domain)
        assert conn.execute(select(func.count()).select_from(WEB_SESSION)).scalar_one() == 0
    assert client.get("/app/").status_code == 303


def test_the_inbox_lists_conversations_newest_first_with_unread_in_bold(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    for n, subject in enumerate(("Erste Anfrage", "Zweite Anfrage")):
        raw = make_mail(subject=subject, from_=f"Gast {n} <guest{n}@example.org>", to=studio.address,
                        body=f"Hallo, ich hätte gern einen Termin Nummer {n}.")
        assert web.gw.send(raw, studio.address, mail_from=f"guest{n}@example.org").code == 250
        web.gw.process()
    page = signed_in_client(web).get("/app/", headers={"Accept-Language": "en"}).text
    assert page.index("Zweite Anfrage") < page.index("Erste Anfrage")
    assert page.count('class="row unread"') == 2 and "Gast 1" in page and "Termin Nummer 1" in page


def test_support_tokens_do_not_reach_the_pages(web: Web) -> None:
    from tests.access import support_token

    web.gw.add_studio("inkwell", "Inkwell")
    token = support_token(web.gw)
    page = web.client(Authorization=f"Bearer {token}").get("/app/")
    assert page.status_code == 303 and page.headers["location"] == "/app/login"


def test_the_cli_prints_a_link_for_the_owner(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    env = gateway_subprocess_env()
    settings = web.gw.settings
    env.update(GATEWAY_DATA_DIR=str(settings.data_dir), GATEWAY_DATABASE_URL=settings.resolved_database_url,
               GATEWAY_MAIL_DOMAIN=settings.mail_domain, GATEWAY_SECRET_KEY=settings.secret_key,
               GATEWAY_PUBLIC_URL=settings.public_url)
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "studio", "login-link", "inkwell"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    client = web.client()
    assert web.sign_in(client, done.stdout.strip()).status_code == 303
    assert client.get("/app/").status_code == 200
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "studio", "login-link", "inkwell",
                              "--email", "stranger@example.org"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "not a connected profile" in refused.stderr


def test_over_https_the_cookie_is_secure_with_the_host_prefix(tmp_path: Path, database_url: str) -> None:
    from gateway.access.web_sessions import create_link, recipients
    from gateway.store.models import utcnow

    running = start_gateway(make_settings(tmp_path, database_url, public_url="https://messenger.example"))
    try:
        running.add_studio("inkwell", "Inkwell")
        with write_tx(running.engine) as conn:
            [owner] = recipients(conn, OWNER)
            link = create_link(conn, running.settings.secret(), owner, utcnow())
        client = running.api(None)  # sends cookies by hand: httpx keeps Secure ones for https
        page = client.get(f"/app/login/link?token={link.token}")
        presession = page.headers["set-cookie"].split(";", 1)[0]
        assert "secure" in page.headers["set-cookie"].lower()
        signed = client.post("/app/login/link", data={"token": link.token, "csrf_token": csrf_of(page.text)},
                             headers={"Cookie": presession, "Origin": "https://messenger.example"})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("__Host-gw_session=gwsess_")
        flags = cookie.split(", gw_presession", 1)[0].lower()
        assert "secure" in flags and "httponly" in flags and "samesite=lax" in flags and "path=/" in flags
        assert "domain=" not in flags
        session = cookie.split(";", 1)[0]
        assert client.get("/app/", headers={"Cookie": session}).status_code == 200
        # The same token under the plain name is not read over https.
        plain = "gw_session=" + session.split("=", 1)[1]
        assert client.get("/app/", headers={"Cookie": plain}).status_code == 303
        wrong_origin = client.post("/app/login", data={"email": OWNER, "csrf_token": csrf_of(page.text)},
                                   headers={"Cookie": presession, "Origin": client.base_url.scheme + "://"
                                            + client.base_url.netloc.decode()})
        assert wrong_origin.status_code == 403  # the origin is the public URL's, not the Host's
    finally:
        running.stop()


# Every page route and who reaches it: "public" pages need no session (sign-in), "session" ones
# a live session of a connected profile; everyone else gets the login page (303).
PAGES: dict[tuple[str, str], str] = {
    ("GET", "/app/login"): "public",
    ("POST", "/app/login"): "public",
    ("GET", "/app/login/link"): "public",
    ("POST", "/app/login/link"): "public",
    ("POST", "/app/logout"): "session",
    ("GET", "/app"): "session",            # /app/ (Litestar keeps paths without the slash)
    ("GET", "/app/c/{conversation_id:int}"): "session",
    ("POST", "/app/c/{conversation_id:int}/status"): "session",
    ("POST", "/app/c/{conversation_id:int}/unread"): "session",
    ("POST", "/app/c/{conversation_id:int}/delete"): "session",
    ("GET", "/app/m/{message_id:int}/delete"): "session",   # asks first (gateway/web/message_delete.py)
    ("POST", "/app/m/{message_id:int}/delete"): "session",
    ("POST", "/app/c/{conversation_id:int}/reply"): "session",
    ("GET", "/app/m/{message_id:int}/html"): "session",
    ("GET", "/app/a/{attachment_id:int}"): "session",
    ("POST", "/app/m/{message_id:int}/retry"): "session",
    ("GET", "/app/trash"): "session",
    ("POST", "/app/trash/{conversation_id:int}/restore"): "session",
    ("POST", "/app/trash/m/{message_id:int}/restore"): "session",
    ("GET", "/app/held"): "session",
    ("POST", "/app/held/{message_id:int}"): "session",
    # The studio's pages: roles per page and form in tests/test_web_studio.py STUDIO_PAGES.
    ("GET", "/app/settings"): "session",
    ("POST", "/app/settings"): "session",
    ("POST", "/app/settings/language"): "session",
    ("GET", "/app/people"): "session",
    ("POST", "/app/people"): "session",
    ("POST", "/app/people/{profile_id:int}/disconnect"): "session",
    ("GET", "/app/billing"): "session",
    ("POST", "/app/billing/checkout"): "session",
    ("GET", "/app/billing/cancel"): "session",
    ("POST", "/app/billing/cancel"): "session",
    ("GET", "/app/support"): "session",
    ("POST", "/app/support"): "session",
    ("POST", "/app/support/{grant_id:int}/revoke"): "session",
    ("GET", "/app/account"): "session",
    ("GET", "/app/account/export"): "session",
    ("POST", "/app/account/deletion"): "session",
    ("GET", "/app/static/{file_path:path}"): "public",
    ("HEAD", "/app/static/{file_path:path}"): "public",
}


def test_every_page_route_is_decided_and_sessions_decide_who_reaches_them(web: Web) -> None:
    app = web.gw.gateway._uvicorn.config.app  # type: ignore[union-attr]
    routes = {(method, route.path) for route in app.routes for handler in route.route_handlers
              for method in handler.http_methods if method != "OPTIONS" and route.path.startswith("/app")}
    assert routes == set(PAGES), "page routes nobody has decided on, or decided routes that are gone"

    studio = web.gw.add_studio("inkwell", "Inkwell")
    web.gw.add_studio("blackrose", "Black Rose")
    member_id, _ = connect_member(web.gw, studio, "artist@inkwell.example")
    owner, member = signed_in_client(web), signed_in_client(web, "artist@inkwell.example")
    other = signed_in_client(web, "owner@blackrose.example")
    assert "Inkwell" in owner.get("/app/").text and "Inkwell" in member.get("/app/").text
    assert "Black Rose" in other.get("/app/").text and "Inkwell" not in other.get("/app/").text
    assert web.gw.api(studio.token).delete(f"{PROFILES}/{member_id}").status_code in (200, 204)
    assert member.get("/app/").status_code == 303
    assert web.client().get("/app/").status_code == 303
    for (method, path), who in PAGES.items():
        if who == "session" and method == "POST":  # without a session: the login page, nothing done
            assert web.client().post(re.sub(r"\{\w+:int\}", "1", path), data={}).status_code == 303


def test_the_inbox_filters_searches_and_refuses_a_forged_page(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    for n, subject in enumerate(("Motiv Rose", "Termin Freitag")):
        raw = make_mail(subject=subject, from_=f"Gast {n} <guest{n}@example.org>", to=studio.address,
                        body="Hallo!")
        assert web.gw.send(raw, studio.address, mail_from=f"guest{n}@example.org").code == 250
        web.gw.process()
    api = web.gw.api(studio.token)
    [rose] = [c for c in api.get("/api/v1/conversations").json()["items"] if c["subject"] == "Motiv Rose"]
    assert api.post(f"/api/v1/conversations/{rose['id']}/close").is_success
    assert api.post(f"/api/v1/conversations/{rose['id']}/read").is_success
    client = signed_in_client(web)

    def subjects(query: str) -> list[str]:
        page = client.get("/app/?" + query)
        assert page.status_code == 200
        return [s for s in ("Motiv Rose", "Termin Freitag") if s in page.text]

    assert subjects("show=all") == ["Motiv Rose", "Termin Freitag"]
    assert subjects("show=closed") == ["Motiv Rose"]
    assert subjects("show=open") == ["Termin Freitag"]
    assert subjects("show=unread") == ["Termin Freitag"]
    assert subjects("q=rose") == ["Motiv Rose"]
    assert subjects("q=guest1%40example") == ["Termin Freitag"]
    assert subjects("show=bogus") == ["Motiv Rose", "Termin Freitag"]
    forged = client.get("/app/?cursor=bm90LWEtY3Vyc29y")
    assert forged.status_code == 400 and forged.headers["content-type"].startswith("text/html")


def test_a_conversation_shows_new_text_quoted_text_on_request_replies_and_why_here(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    other = web.gw.add_studio("blackrose", "Black Rose")
    body = "Geht auch Samstag?\n\nAm 1. Dezember schrieb Inkwell:\n> Freitag um 15 Uhr passt.\n"
    raw = make_mail(subject="Termin", from_="Lena <lena@example.org>", to=studio.address, body=body)
    assert web.gw.send(raw, studio.address, mail_from="lena@example.org").code == 250
    web.gw.process()
    api = web.gw.api(studio.token)
    [conversation] = api.get("/api/v1/conversations").json()["items"]
    assert api.post(f"/api/v1/conversations/{conversation['id']}/replies", json={"text": "Samstag geht."}).status_code == 202
    web.mailed()  # the outbox sends it: its state turns "sent"
    client = signed_in_client(web)
    inbox = client.get("/app/").text
    assert f'href="/app/c/{conversation["id"]}"' in inbox
    page = client.get(f"/app/c/{conversation['id']}", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    text = page.text
    assert "Geht auch Samstag?" in text and "Samstag geht." in text and "Sent" in text
    assert "<details>" in text and "Freitag um 15 Uhr" in text.split("<details>", 1)[1]  # quoted text behind the toggle
    assert "Why here: a new inquiry." in text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]

    outsider = signed_in_client(web, "owner@blackrose.example")
    refused = outsider.get(f"/app/c/{conversation['id']}")
    assert refused.status_code == 404 and "Geht auch Samstag" not in refused.text
    assert web.client().get(f"/app/c/{conversation['id']}").status_code == 303
    assert other.id != studio.id

    # Close and reopen: a form with the session's CSRF token; without it, or from another
    # studio, nothing changes.
    path = f"/app/c/{conversation['id']}"
    token = csrf_of(text)
    assert client.post(path + "/status", data={"status": "closed"}).status_code == 403
    assert outsider.post(path + "/status", data={"status": "closed", "csrf_token": csrf_of(
        outsider.get("/app/").text)}).status_code == 404
    assert api.get(f"/api/v1/conversations/{conversation['id']}").json()["status"] == "open"
    closed = client.post(path + "/status", data={"status": "closed", "csrf_token": token})
    assert closed.status_code == 303 and closed.headers["location"] == path
    assert api.get(f"/api/v1/conversations/{conversation['id']}").json()["status"] == "closed"
    assert "Reopen" in client.get(path, headers={"Accept-Language": "en"}).text
    assert client.post(path + "/status", data={"status": "open", "csrf_token": token}).status_code == 303
    assert api.get(f"/api/v1/conversations/{conversation['id']}").json()["status"] == "open"
