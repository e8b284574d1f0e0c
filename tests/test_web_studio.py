"""The studio's pages (settings, people), the page role matrix, and the live inbox (issue 15):
over real HTTP against a real gateway that mails sign-in links into a relay sink, with a real
SSE stream signed in by the pages' session cookie; SQLite and PostgreSQL."""
from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from html import unescape
from zoneinfo import ZoneInfo
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert, select

from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import PROFILE, STUDIO
from gateway.web.studio_pages import PEOPLE_PAGE
from tests.access import GRANTS, PROFILES, connect_member, support_token
from tests.billing_support import Billing, billing_settings
from tests.conftest import start_gateway
from tests.mail import make_mail
from tests.relay_sink import RelaySink, free_port
from tests.sse import EventReader
from tests.stripe_emulator import StripeEmulator
from tests.web import HELPDESK, Web, csrf_of, off_thread, serving

OWNER, MEMBER, OTHER = "owner@inkwell.example", "artist@inkwell.example", "owner@blackrose.example"
BEAT = 0.3


@pytest.fixture
def web(tmp_path: Path, database_url: str) -> Iterator[Web]:
    """tests/web.py's gateway with a short heartbeat, so a stream notices a logout quickly."""
    with serving(tmp_path, database_url, events_heartbeat=BEAT) as running:
        yield running


def signed_in(web: Web, email: str = OWNER) -> httpx.Client:
    client = web.client(**{"Accept-Language": "en"})
    assert web.sign_in(client, web.link_for(client, email)).status_code == 303
    return client


def post(client: httpx.Client, path: str, data: dict[str, str], page: str) -> httpx.Response:
    return client.post(path, data={**data, "csrf_token": csrf_of(client.get(page).text)})


def studio_row(web: Web, slug: str = "inkwell") -> object:
    with read_tx(web.gw.engine) as conn:
        return conn.execute(select(STUDIO).where(STUDIO.c.slug == slug)).one()


SETTINGS = {"name": "Inkwell Tattoo", "acknowledge": "on", "locale": "en", "time_zone": "Europe/Vienna",
            "privacy_url": "https://inkwell.example/privacy"}


def test_the_owner_changes_the_studios_settings_through_the_apis_rules(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    page = owner.get("/app/settings")
    assert page.status_code == 200 and 'name="time_zone"' in page.text
    saved = post(owner, "/app/settings", {**SETTINGS, "acknowledge": ""}, "/app/settings")
    assert saved.status_code == 303 and saved.headers["location"] == "/app/settings?saved=1"
    row = studio_row(web)
    assert (row.name, row.acknowledge_inquiries, row.locale, row.time_zone, row.privacy_url) == (
        "Inkwell Tattoo", False, "en", "Europe/Vienna", "https://inkwell.example/privacy")
    assert "Inkwell Tattoo" in owner.get("/app/settings").text
    # The API shows and changes the same: one domain function (gateway/forms/studio_settings.py).
    api = web.gw.api(studio.token)
    assert api.get("/api/v1/studio").json()["name"] == "Inkwell Tattoo"
    assert api.patch("/api/v1/studio", json={"name": "Inkwell", "locale": "de"}).json()["locale"] == "de"
    for refused in ({"name": "two\nlines"}, {"name": "  "}, {"locale": "fr"}, {"privacy_url": "http://[x"}):
        answer = api.patch("/api/v1/studio", json=refused)
        assert answer.status_code == 400 and answer.json()["code"] == "validation_failed", refused

    # A refused field re-renders the page saying why, and nothing is written.
    bad = post(owner, "/app/settings", {**SETTINGS, "time_zone": "Mars/Olympus", "privacy_url": "javascript:x"},
               "/app/settings")
    assert bad.status_code == 400 and "Mars/Olympus" in bad.text and 'aria-invalid="true"' in bad.text
    assert studio_row(web).time_zone == "Europe/Vienna" and studio_row(web).name == "Inkwell"
    broken = post(owner, "/app/settings", {**SETTINGS, "privacy_url": "http://[x"}, "/app/settings")
    assert broken.status_code == 400 and 'id="privacy_url-error"' in broken.text  # refused, not a 500


def test_a_profile_sets_the_language_of_its_own_pages(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    connect_member(web.gw, studio, MEMBER)
    member = signed_in(web, MEMBER)
    assert "Settings" in member.get("/app/settings").text
    assert post(member, "/app/settings/language", {"profile_locale": "de"}, "/app/settings").status_code == 303
    assert "Einstellungen" in member.get("/app/settings").text  # despite Accept-Language: en
    with read_tx(web.gw.engine) as conn:
        assert conn.execute(select(PROFILE.c.locale).where(PROFILE.c.email == MEMBER)).scalar_one() == "de"
    assert post(member, "/app/settings/language", {"profile_locale": ""}, "/app/settings").status_code == 303
    assert "Settings" in member.get("/app/settings").text
    assert post(member, "/app/settings/language", {"profile_locale": "xx"}, "/app/settings").status_code == 400


def test_the_owner_connects_and_disconnects_members_and_the_members_session_ends(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    connected = post(owner, "/app/people", {"email": MEMBER, "name": "Artist"}, "/app/people")
    assert connected.status_code == 303
    again = post(owner, "/app/people", {"email": MEMBER, "name": "Artist"}, "/app/people")
    assert again.status_code == 409 and "connected to the studio already" in again.text
    assert post(owner, "/app/people", {"email": "not an address", "name": "X"}, "/app/people").status_code == 400
    member = signed_in(web, MEMBER)  # signs in with the address, as the page says
    assert member.get("/app/").status_code == 200
    with read_tx(web.gw.engine) as conn:
        member_id = conn.execute(select(PROFILE.c.id).where(PROFILE.c.email == MEMBER)).scalar_one()
        owner_id = conn.execute(select(PROFILE.c.id).where(PROFILE.c.email == OWNER)).scalar_one()
    assert post(owner, f"/app/people/{member_id}/disconnect", {}, "/app/people").status_code == 303
    assert member.get("/app/").status_code == 303  # the member's session is over at once
    assert "Disconnected" in owner.get("/app/people").text
    assert post(owner, f"/app/people/{owner_id}/disconnect", {}, "/app/people").status_code == 409


def test_the_people_page_pages_through_a_large_studio(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    with write_tx(web.gw.engine) as conn:  # more members than a page shows
        conn.execute(insert(PROFILE), [{"studio_id": studio.id, "email": f"artist{n:03}@inkwell.example",
                                        "name": f"Artist {n:03}", "role": "member", "created_at": utcnow()}
                                       for n in range(PEOPLE_PAGE + 5)])
    first = owner.get("/app/people")
    assert first.status_code == 200 and OWNER in first.text and "artist000@" in first.text
    assert f"artist{PEOPLE_PAGE - 1:03}@" not in first.text  # the owner is the first of the page
    more = re.search(r'href="(/app/people\?cursor=[^"]+)">More people', first.text)
    assert more
    second = owner.get(unescape(more.group(1)))
    assert second.status_code == 200 and f"artist{PEOPLE_PAGE - 1:03}@" in second.text
    assert f"artist{PEOPLE_PAGE + 4:03}@" in second.text and "artist000@" not in second.text
    assert "More people" not in second.text
    assert owner.get("/app/people?cursor=bm90LWEtY3Vyc29y").status_code == 400


# The page role matrix: every page and form of the studio's pages, for the owner, a member, a
# signed-out browser and another studio's owner. Status codes: 200/303 reached, 403 refused
# (the 403 page), 303 to the login page for no session, 404 for another studio's rows.
STUDIO_PAGES: list[tuple[str, str, dict[str, str], dict[str, int]]] = [
    ("GET", "/app/settings", {}, {"owner": 200, "member": 200, "other": 200, "anonymous": 303}),
    ("POST", "/app/settings", SETTINGS, {"owner": 303, "member": 403, "other": 303, "anonymous": 303}),
    ("POST", "/app/settings/language", {"profile_locale": "en"},
     {"owner": 303, "member": 303, "other": 303, "anonymous": 303}),
    ("GET", "/app/people", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("POST", "/app/people", {"email": "new@inkwell.example", "name": "New"},
     {"owner": 303, "member": 403, "other": 303, "anonymous": 303}),
    ("POST", "/app/people/{member}/disconnect", {}, {"owner": 303, "member": 403, "other": 404, "anonymous": 303}),
    # Billing: this gateway has no Stripe, so the owner's checkout is 503; there is no plan to cancel (409).
    ("GET", "/app/billing", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("POST", "/app/billing/checkout", {"plan": "monthly"}, {"owner": 503, "member": 403, "other": 503, "anonymous": 303}),
    ("GET", "/app/billing/cancel", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("POST", "/app/billing/cancel", {}, {"owner": 409, "member": 403, "other": 409, "anonymous": 303}),
    ("GET", "/app/support", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("POST", "/app/support", {"duration": "24h", "note": "bitte helfen"},
     {"owner": 303, "member": 403, "other": 303, "anonymous": 303}),
    ("POST", "/app/support/{grant}/revoke", {}, {"owner": 303, "member": 403, "other": 404, "anonymous": 303}),
    ("GET", "/app/account", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("GET", "/app/account/export", {}, {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
    ("POST", "/app/account/deletion", {"reason": "zu teuer"},
     {"owner": 200, "member": 403, "other": 200, "anonymous": 303}),
]


def test_the_page_role_matrix_of_the_studios_pages(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    web.gw.add_studio("blackrose", "Black Rose")
    connect_member(web.gw, studio, MEMBER)
    target_id, _ = connect_member(web.gw, studio, "target@inkwell.example")
    grant_id = web.gw.api(studio.token).post(GRANTS, json={"hours": 2}).json()["id"]
    clients = {"owner": signed_in(web), "member": signed_in(web, MEMBER), "other": signed_in(web, OTHER),
               "anonymous": web.client()}
    for method, path, data, expected in STUDIO_PAGES:
        for who in ("member", "other", "anonymous", "owner"):  # the owner last: it changes things
            client = clients[who]
            url = path.replace("{member}", str(target_id)).replace("{grant}", str(grant_id))
            if method == "GET":
                answer = client.get(url)
            else:
                csrf = csrf_of(client.get("/app/settings").text) if who != "anonymous" else ""
                answer = client.post(url, data={**data, "csrf_token": csrf})
            assert answer.status_code == expected[who], (who, method, path, answer.status_code)
            if answer.status_code == 303 and who == "anonymous":
                assert answer.headers["location"] == "/app/login"
            if answer.status_code == 403:
                assert "Only the studio's owner can open this page." in answer.text
            if method == "GET" and answer.status_code == 200 and "export" not in path:
                assert (OTHER in answer.text) == (who == "other") and (OWNER in answer.text) == (who == "owner")
    # What the others did changed nothing of Inkwell's: the other studio changed its own.
    assert studio_row(web).name == "Inkwell Tattoo"  # the owner's own change, last
    assert studio_row(web, "blackrose").name == "Inkwell Tattoo"  # the other owner changed theirs
    with read_tx(web.gw.engine) as conn:
        gone = conn.execute(select(PROFILE.c.disconnected_at).where(PROFILE.c.id == target_id)).scalar_one()
        new = conn.execute(select(PROFILE.c.studio_id).where(PROFILE.c.email == "new@inkwell.example")).scalars()
    assert gone is not None and sorted(new) == sorted({studio.id, studio_row(web, "blackrose").id})
    # The owner's pages have no link for a member.
    for owners_page in ("/app/people", "/app/billing", "/app/support", "/app/account"):
        assert f'href="{owners_page}"' in clients["owner"].get("/app/settings").text
        assert f'href="{owners_page}"' not in clients["member"].get("/app/settings").text
    # Without a CSRF token every form is 403 and nothing changes.
    assert clients["owner"].post("/app/settings", data={**SETTINGS, "name": "Forged"}).status_code == 403
    assert studio_row(web).name == "Inkwell Tattoo"
    # Support access never reaches the pages: a support token is no session.
    token = support_token(web.gw)
    assert web.client(Authorization=f"Bearer {token}").get("/app/settings").status_code == 303


def inquiry(web: Web, subject: str) -> None:
    studio = web.gw.studios["inkwell"]
    raw = make_mail(subject=subject, from_="Lena <lena@example.org>", to=studio.address, body="Hallo!")
    assert web.gw.send(raw, studio.address, mail_from="lena@example.org").code == 250
    web.gw.process()


def test_the_event_stream_takes_the_pages_session_and_closes_on_logout(web: Web) -> None:
    web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    cookie = {"Cookie": f"gw_session={owner.cookies['gw_session']}"}
    reader = EventReader(web.gw.base_url, None, headers=cookie)
    assert reader.status == 200
    inquiry(web, "Termin am Freitag")
    assert reader.next()["event"] == "message.created"
    # The inbox's live refresh fetches its list alone; a reset asks htmx to reload the page.
    rows = owner.get("/app/?show=all&q=&part=rows")
    assert rows.status_code == 200 and "Termin am Freitag" in rows.text and "<html" not in rows.text
    assert owner.get("/app/?part=reload").headers["hx-refresh"] == "true"
    # The page's stream goes on from the last event the page was read at: mail that arrives
    # between rendering and connecting is not lost.
    connect_to = re.search(r'sse-connect="/api/v1/events\?last_event_id=(\d+)"', owner.get("/app/").text)
    assert connect_to
    inquiry(web, "Zwischen Seite und Stream")
    late_reader = EventReader(web.gw.base_url, None, headers=cookie, query={"last_event_id": connect_to.group(1)})
    caught = late_reader.next()
    assert caught["event"] == "message.created" and int(caught["id"]) == int(connect_to.group(1)) + 1
    late_reader.close()
    # A forged or ended session is 401, as a wrong token is; logout closes an open stream.
    assert EventReader(web.gw.base_url, None, headers={"Cookie": "gw_session=gwsess_forged"}).status == 401
    out = owner.post("/app/logout", data={"csrf_token": csrf_of(owner.get("/app/").text)})
    assert out.status_code == 303
    assert reader.ended.wait(10), "the stream stayed open after its session ended"
    assert EventReader(web.gw.base_url, None, headers=cookie).status == 401
    late = owner.get("/app/?part=rows")  # a refresh asked just before the stream closed
    assert late.headers["hx-redirect"] == "/app/login" and "Termin" not in late.text
    # The cookie opens only the stream: the rest of the API still wants a bearer token.
    assert httpx.get(web.gw.base_url + "/api/v1/conversations", headers=cookie).status_code == 401


def test_disconnecting_a_member_closes_the_members_stream(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    member_id, _ = connect_member(web.gw, studio, MEMBER)
    member = signed_in(web, MEMBER)
    reader = EventReader(web.gw.base_url, None, headers={"Cookie": f"gw_session={member.cookies['gw_session']}"})
    assert reader.status == 200
    assert web.gw.api(studio.token).delete(f"{PROFILES}/{member_id}").status_code in (200, 204)
    assert reader.ended.wait(10), "the stream stayed open after its member was disconnected"


def test_support_access_is_granted_and_revoked_from_the_page_and_audited(web: Web) -> None:
    studio = web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    # Kathmandu is UTC+5:45: a time shown in UTC would have other minutes than the studio's.
    assert post(owner, "/app/settings", {**SETTINGS, "time_zone": "Asia/Kathmandu"}, "/app/settings").status_code == 303
    assert "Support cannot read anything now." in owner.get("/app/support").text
    assert post(owner, "/app/support", {"duration": "3d", "note": "Mails kommen doppelt"}, "/app/support").status_code == 303
    [grant] = web.gw.api(studio.token).get(GRANTS).json()["items"]
    assert grant["active"] and grant["note"] == "Mails kommen doppelt"
    page = owner.get("/app/support").text
    assert 'id="grant-active"' in page and "Owner owner@inkwell.example" in page  # the log in words, not codes
    assert f"granted support access</span> <span>(grant {grant['id']})" in page and "support_grant" not in page
    ends = datetime.fromisoformat(grant["expires_at"].replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Kathmandu"))
    until = re.search(r"Support can read until ([^<]+?)\.", page)
    assert until and "UTC" not in until.group(1)
    assert ends.strftime("%b %-d, %Y") in until.group(1) and ends.strftime("%-I:%M") in until.group(1)
    [entry] = [e for e in web.gw.api(studio.token).get("/api/v1/audit").json()["items"]
               if e["action"] == "support_grant.create"]
    logged = datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Kathmandu"))
    assert "<time datetime=" in page and logged.strftime("%-I:%M") in page
    assert post(owner, "/app/support", {"duration": "30d"}, "/app/support").status_code == 400  # the API's bounds
    assert post(owner, f"/app/support/{grant['id']}/revoke", {}, "/app/support").status_code == 303
    assert not web.gw.api(studio.token).get(GRANTS).json()["items"][0]["active"]
    assert "ended support access" in owner.get("/app/support").text


def test_the_owner_downloads_the_export_and_asks_for_deletion_by_mailed_code(web: Web) -> None:
    import io
    import zipfile

    web.gw.add_studio("inkwell", "Inkwell")
    inquiry(web, "Termin am Freitag")
    owner = signed_in(web)
    download = owner.get("/app/account/export")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert download.headers["content-disposition"].startswith('attachment; filename="inkwell-export-')
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert "Termin am Freitag" in archive.read("export.json").decode()

    asked = post(owner, "/app/account/deletion", {"reason": "Wir schließen das Studio"}, "/app/account")
    assert asked.status_code == 200 and OWNER in asked.text and 'id="deletion-sent"' in asked.text
    [mail] = [m for m in web.mailed() if m.rcpt_tos == [OWNER]]
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "/account/deletion/confirm" in text
    assert studio_row(web).name == "Inkwell"  # nothing deleted before the code is confirmed



@pytest.fixture
def billed(tmp_path: Path, database_url: str) -> Iterator[tuple[Web, Billing]]:
    """The pages' gateway (helpdesk, relay sink) on the Stripe emulator (tests/billing_support.py)."""
    emulator = StripeEmulator()
    base = emulator.start()
    sink = off_thread(RelaySink().__enter__)
    port = free_port()
    gw = start_gateway(billing_settings(tmp_path, database_url, base, helpdesk_address=HELPDESK,
                                        smtp_relay_url=sink.url, public_url=f"http://127.0.0.1:{port}"),
                       http_port=port)
    try:
        yield Web(gw, sink), Billing(gw, emulator)
    finally:
        gw.stop()
        emulator.stop()
        off_thread(lambda: sink.__exit__(None, None, None))


def test_billing_checks_out_through_stripe_and_cancels_with_the_plans_rule_shown_first(
        billed: tuple[Web, Billing]) -> None:
    web, billing = billed
    studio = web.gw.add_studio("inkwell", "Inkwell")
    owner = signed_in(web)
    free = owner.get("/app/billing")
    assert free.status_code == 200 and '<dd id="plan">Free</dd>' in free.text
    checkout = post(owner, "/app/billing/checkout", {"plan": "yearly"}, "/app/billing")
    assert len(billing.stripe.calls("POST", "/v1/checkout/sessions")) == 1 and checkout.status_code == 200
    assert 'http-equiv="refresh" content="0;url=https://checkout.stripe.test/c/pay/' in checkout.text

    billing.subscribe(studio.id, "yearly")
    paid = owner.get("/app/billing")
    assert '<dd id="plan">Yearly</dd>' in paid.text and 'href="/app/billing/cancel"' in paid.text
    rule = owner.get("/app/billing/cancel")
    assert "not refunded" in rule.text and "runs until the end of the paid period" in rule.text
    assert billing.stripe.calls("POST", "/v1/subscriptions/") == []  # showing the rule cancels nothing
    done = post(owner, "/app/billing/cancel", {}, "/app/billing/cancel")
    assert done.status_code == 303 and done.headers["location"] == "/app/billing?cancelled=1"
    [cancelled] = billing.stripe.calls("POST", "/v1/subscriptions/")
    assert cancelled.params["cancel_at_period_end"] == "true"  # yearly: to the period's end, no refund
    assert "Nothing will be charged again." in owner.get("/app/billing?cancelled=1").text
