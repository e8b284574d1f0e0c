"""Account deletion (issue 6): LÖSCHEN to the helpdesk or the API asks, only the mailed code deletes.

Everything runs over real sockets: mail in over SMTP, the confirmation out through the outbox to
a real SMTP sink, the confirmation over HTTP, on SQLite and PostgreSQL. Time is moved by the
app's injected clock, never slept.
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select
from sqlmodel import SQLModel

from gateway.inbound import directory
from gateway.store.tables import ACCOUNT_DELETION
from gateway.lifecycle.account_deletion import MAX_REQUESTS_PER_DAY
from gateway.store.db import read_tx, write_tx
from gateway.lifecycle.deletion_log import deletion_log
from gateway.store.tables import GUEST, INBOUND
from gateway.lifecycle.helpdesk_mail import is_deletion_subject
from gateway.inbound.intake import Envelope, store_batch
from gateway.store.models import utcnow
from gateway.access.studios import add_studio
from tests.conftest import MAIL_DOMAIN, RunningGateway, StudioInfo, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.relay_sink import Received, RelaySink
from tests.test_api_tokens import add_member
from tests.test_erasure import PHOTO, _blob_exists, _rows_of
from tests.test_outbound import send_due

HELPDESK = f"helpdesk@{MAIL_DOMAIN}"
OWNER = "owner@inkwell.example"          # RunningGateway.add_studio's owner address for "inkwell"
PUBLIC_URL = "https://gateway.example"
CONFIRM = "/api/v1/account/deletion/confirm"
REQUEST = "/api/v1/account/deletion"
CONVERSATIONS = "/api/v1/conversations"
CODE = re.compile(r"\b[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}-[A-Z2-7]{4}\b")
MARKER = "INKWELL-ONLY-7f3a"              # in every byte the deleted studio receives
SKETCH = b"%PDF-1.4 " + MARKER.encode() + bytes(300)


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as relay:
        yield relay


@pytest.fixture
def hd(tmp_path: Path, database_url: str, sink: RelaySink) -> Iterator[RunningGateway]:
    """A gateway with a helpdesk, sending through the sink; processor and outbox driven by hand."""
    running = start_gateway(make_settings(tmp_path, database_url, helpdesk_address=HELPDESK,
                                          smtp_relay_url=sink.url, public_url=PUBLIC_URL))
    yield running
    running.stop()


def ask_by_mail(gw: RunningGateway, *, subject: str = "LÖSCHEN", from_: str = OWNER, envelope: str | None = None,
                body: str = "Wir hören auf.", headers: dict[str, str] | None = None,
                message_id: str | None = None) -> None:
    raw = make_mail(subject=subject, from_=from_, to=HELPDESK, body=body, headers=headers, message_id=message_id)
    assert gw.send(raw, HELPDESK, mail_from=envelope or from_).code == 250
    gw.process()


def sent(gw: RunningGateway, sink: RelaySink) -> list[Received]:
    """Everything the outbox sends now, in addition to what it sent before."""
    before = len(sink.received)
    send_due(gw)
    return sink.received[before:]


def code_of(mail: Received) -> str:
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    match = CODE.search(text)
    assert match, text
    return match.group(0)


def confirm(gw: RunningGateway, code: str) -> Any:
    return gw.api(None).post(CONFIRM, json={"code": code})


def set_clock(gw: RunningGateway, ahead: timedelta) -> None:
    assert gw.gateway.app is not None
    gw.gateway.app.state.clock = lambda: utcnow() + ahead


def inquiries(gw: RunningGateway, ink: StudioInfo, other: StudioInfo) -> None:
    """Mail for both studios: a photo sent to both (shared bytes), a sketch only inkwell has."""
    both = make_mail(subject="Same photo", attachments=[("arm.png", "image/png", PHOTO)],
                     to=f"{ink.address}, {other.address}")
    assert gw.send(both, [ink.address, other.address]).code == 250
    mine = make_mail(subject="Sketch " + MARKER, body="Only for inkwell: " + MARKER,
                     attachments=[("s.pdf", "application/pdf", SKETCH)])
    assert gw.send(mine, ink.address).code == 250
    assert {r.status for r in gw.process()} == {"done"}


def everywhere(gw: RunningGateway, needle: str) -> list[str]:
    """Every table.column, over the whole schema, whose text or bytes contain `needle`."""
    found = []
    with read_tx(gw.engine) as conn:
        for table in SQLModel.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if (isinstance(value, str) and needle.lower() in value.lower()) or \
                            (isinstance(value, bytes) and needle.lower().encode() in value.lower()):
                        found.append(f"{table.name}.{column}")
    return found


def requests(gw: RunningGateway) -> list[Any]:
    with read_tx(gw.engine) as conn:
        return conn.execute(select(ACCOUNT_DELETION).order_by(ACCOUNT_DELETION.c.id)).all()


# ------------------------------------------------------------------ by mail, from the owner

def test_loeschen_from_the_owner_mails_a_code_and_only_the_code_deletes_everything(
        hd: RunningGateway, sink: RelaySink) -> None:
    for known in list(directory._directories):   # RCPT caches "inkwell exists" for the whole test:
        known.ttl = 3600.0                         # only the deletion itself can make it answer 550
    ink, other = hd.add_studio("inkwell", name="Inkwell Tattoo"), hd.add_studio("needle")
    inquiries(hd, ink, other)
    sent(hd, sink)   # the owners' notifications of those inquiries (gateway/outbound/notifications.py)
    before_ink, before_other = _rows_of(hd, ink.id), _rows_of(hd, other.id)

    ask_by_mail(hd, body="Wir hören auf, zu teuer. Ruft an: +49 170 1234567 oder anna@inkwell.example\n\n"
                         "Viele Grüße\nAnna Schmidt\nHauptstr. 5, 10115 Berlin")
    [mail] = sent(hd, sink)
    assert mail.rcpt_tos == [OWNER] and mail.mail_from == HELPDESK
    msg = mail.message
    assert msg["From"] == f"Helpdesk <{HELPDESK}>" and msg["To"] == f"Inkwell Tattoo <{OWNER}>"
    assert msg["Subject"] == "Bitte bestätigen: Löschung von Inkwell Tattoo"
    assert msg["Auto-Submitted"] == "auto-replied"
    code = code_of(mail)
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Inkwell Tattoo (inkwell@mail.test)" in text and code in html
    assert f"{PUBLIC_URL}/account/deletion/confirm?code={code}" in text

    assert _rows_of(hd, ink.id) == before_ink, "a request deletes nothing"
    assert everywhere(hd, code) == [], "the code is stored nowhere, only its hash"
    helpdesk = hd.api(issue_token(hd))   # the operator sees the request and the mail, the code masked
    [thread] = helpdesk.get(CONVERSATIONS).json()["items"]
    shown = helpdesk.get(f"{CONVERSATIONS}/{thread['id']}").json()["messages"]
    assert [(m["direction"], m["subject"]) for m in shown] == [
        ("inbound", "LÖSCHEN"), ("outbound", "Bitte bestätigen: Löschung von Inkwell Tattoo")]
    assert "••••-••••-••••-••••" in shown[1]["text"] and shown[1]["to"] == [{"email": OWNER, "name": "Inkwell Tattoo"}]
    [request] = requests(hd)
    assert (request.studio_ref, request.channel, request.status) == (ink.id, "email", "pending")
    assert request.reason == "Wir hören auf, zu teuer. Ruft an: […] oder […]"

    answer = confirm(hd, code.lower().replace("-", " "))   # as typed, in any case and spacing
    assert answer.status_code == 200 and answer.json() == {"status": "deleted"}

    assert set(_rows_of(hd, ink.id).values()) == {0}
    assert _rows_of(hd, other.id) == before_other
    assert _blob_exists(hd, PHOTO), "the other studio's copy of the shared photo stays"
    assert everywhere(hd, MARKER) == [], "no row and no byte of the studio remains"
    assert everywhere(hd, OWNER) == [], "nor the owner's address: the LÖSCHEN mail was theirs too"
    assert [(r.status, r.reason) for r in requests(hd)] == [("deleted", request.reason)]
    assert hd.api(ink.token).get(CONVERSATIONS).status_code == 401
    assert hd.api(other.token).get(CONVERSATIONS).status_code == 200
    assert hd.send(make_mail(subject="Termin?"), ink.address).code == 550
    assert confirm(hd, code).status_code == 409, "a code works once"
    assert [(e.kind, e.studio_id) for e in deletion_log(hd.settings).entries()][0] == ("studio", ink.id)


SUBJECTS = ["LÖSCHEN", "Löschen", "LOESCHEN", "loeschen", "lÖsChEn", "  LÖSCHEN  ", "Re: LÖSCHEN",
            "AW: Löschen", "Fwd: LOESCHEN", "Re: AW: Fwd: re: loeschen", "AW[2]: Löschen"]
ENCODED = ["=?utf-8?b?TMOWU0NIRU4=?=", "=?iso-8859-1?q?L=F6schen?=", "Re: =?utf-8?q?l=C3=B6schen?="]


@pytest.mark.parametrize("subject", SUBJECTS + ENCODED)
def test_every_way_of_writing_the_subject_asks(hd: RunningGateway, sink: RelaySink, subject: str) -> None:
    hd.add_studio("inkwell")
    raw = (f"From: {OWNER}\r\nTo: {HELPDESK}\r\nSubject: {subject}\r\nMessage-ID: {new_id()}\r\n"
           "Date: Fri, 20 Nov 2026 10:00:00 +0000\r\n\r\nbitte\r\n")
    assert hd.send(raw, HELPDESK, mail_from=OWNER).code == 250
    hd.process()
    [mail] = sent(hd, sink)
    assert mail.rcpt_tos == [OWNER] and CODE.search(mail.data.decode())


@pytest.mark.parametrize("subject", ["Löschen bitte", "LÖSCHEN!", "Konto löschen", "Re: Bitte bestätigen: "
                                     "Löschung von Inkwell", "LÖSCHEN LÖSCHEN", "", "Lösche"])
def test_other_subjects_do_not_ask(subject: str) -> None:
    assert not is_deletion_subject(subject)


def test_a_forged_owner_address_gets_the_code_only_to_the_real_owner(hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    ask_by_mail(hd, from_="Owner <OWNER@Inkwell.Example>", envelope="attacker@evil.example",
                headers={"Reply-To": "attacker@evil.example", "Sender": "attacker@evil.example"})
    [mail] = sent(hd, sink)
    assert mail.rcpt_tos == [OWNER] and "evil" not in mail.message["To"]
    assert all("evil" not in r for m in sink.received for r in m.rcpt_tos)
    assert _rows_of(hd, ink.id)["studio"] == 1, "nothing deleted without the code"


def test_loeschen_from_an_address_that_owns_nothing_deletes_nothing_and_reveals_nothing(
        hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    _, member_token = add_member(hd, ink)   # a member of the studio is not its owner
    ask_by_mail(hd, from_="artist@inkwell.example", body="Bitte alles löschen.")
    ask_by_mail(hd, from_="stranger@example.net", body="Bitte alles löschen.")
    assert sent(hd, sink) == [], "nothing is mailed to anyone, so nobody learns whether an account exists"
    assert requests(hd) == [] and _rows_of(hd, ink.id)["studio"] == 1
    assert hd.api(member_token).get(CONVERSATIONS).status_code == 200

    # Not lost: both are ordinary helpdesk conversations, answered with the same messenger API.
    helpdesk = hd.api(issue_token(hd))
    items = helpdesk.get(CONVERSATIONS).json()["items"]
    assert sorted(i["guest"]["email"] for i in items) == ["artist@inkwell.example", "stranger@example.net"]
    stranger = next(i for i in items if i["guest"]["email"] == "stranger@example.net")
    answer = helpdesk.post(f"{CONVERSATIONS}/{stranger['id']}/replies", json={"text": "Welches Konto meinst du?"})
    assert answer.status_code == 202
    [mail] = sent(hd, sink)
    assert mail.rcpt_tos == ["stranger@example.net"] and mail.message["Subject"] == "Re: LÖSCHEN"


def test_an_owner_of_several_studios_gets_one_code_per_studio(hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell", name="Inkwell Tattoo")
    second = hd.add_studio("inkwell-berlin", name="Inkwell Berlin", owner=OWNER.upper())
    ask_by_mail(hd)
    mails = sent(hd, sink)
    assert sorted(m.message["Subject"] for m in mails) == ["Bitte bestätigen: Löschung von Inkwell Berlin",
                                                          "Bitte bestätigen: Löschung von Inkwell Tattoo"]
    berlin = next(m for m in mails if "Berlin" in m.message["Subject"])
    assert confirm(hd, code_of(berlin)).status_code == 200
    assert _rows_of(hd, second.id)["studio"] == 0 and _rows_of(hd, ink.id)["studio"] == 1
    with read_tx(hd.engine) as conn:  # the address still owns a studio: its helpdesk thread stays
        assert conn.execute(select(GUEST.c.id).where(func.lower(GUEST.c.email) == OWNER)).first() is not None


def test_a_code_is_refused_after_48_hours_and_accepted_before(hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    ask_by_mail(hd)
    code = code_of(sent(hd, sink)[0])
    set_clock(hd, timedelta(hours=48, seconds=1))
    assert confirm(hd, code).status_code == 410
    assert _rows_of(hd, ink.id)["studio"] == 1
    set_clock(hd, timedelta(hours=47, minutes=59))
    assert confirm(hd, code).status_code == 200
    assert _rows_of(hd, ink.id)["studio"] == 0


def test_requests_are_capped_per_day_and_a_retried_delivery_asks_once(hd: RunningGateway, sink: RelaySink) -> None:
    hd.add_studio("inkwell")
    first = new_id()
    ask_by_mail(hd, message_id=first)
    ask_by_mail(hd, message_id=first)            # the same mail again: a duplicate, not a new request
    assert len(requests(hd)) == 1
    for _ in range(MAX_REQUESTS_PER_DAY + 1):
        ask_by_mail(hd)
    assert len(requests(hd)) == MAX_REQUESTS_PER_DAY
    assert len(sent(hd, sink)) == MAX_REQUESTS_PER_DAY


# ------------------------------------------------------------------ the API

def test_the_owner_asks_in_the_api_and_members_may_not(hd: RunningGateway, sink: RelaySink) -> None:
    with write_tx(hd.engine) as conn:
        studio_id, token = add_studio(conn, "inkwell", "Inkwell Tattoo", OWNER, "en")
    ink = StudioInfo(studio_id, "inkwell", token)
    other = hd.add_studio("needle")
    before_other = _rows_of(hd, other.id)
    _, member_token = add_member(hd, ink)
    assert hd.api(member_token).post(REQUEST, json={}).status_code == 403
    assert hd.api(None).post(REQUEST, json={}).status_code == 401
    assert sent(hd, sink) == [] and requests(hd) == []

    answer = hd.api(ink.token).post(REQUEST, json={"reason": "Moving abroad, call me at 0049 170 7654321"})
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == CONFIRM  # where the mailed code goes next
    assert answer.json()["status"] == "confirmation_sent" and answer.json()["sent_to"] == OWNER
    [mail] = sent(hd, sink)
    assert mail.rcpt_tos == [OWNER] and mail.message["Subject"] == "Please confirm: deletion of Inkwell Tattoo"
    assert "Nothing is deleted until you confirm" in mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    [request] = requests(hd)
    assert (request.channel, request.reason) == ("api", "Moving abroad, call me at […]")
    assert _rows_of(hd, ink.id)["studio"] == 1

    assert confirm(hd, code_of(mail)).status_code == 200
    assert set(_rows_of(hd, ink.id).values()) == {0} and _rows_of(hd, other.id) == before_other
    assert hd.api(ink.token).post(REQUEST, json={}).status_code == 401
    assert hd.api(member_token).get(CONVERSATIONS).status_code == 401
    assert hd.send(make_mail(subject="Hallo"), "inkwell@mail.test").code == 550


def test_without_a_helpdesk_the_api_cannot_mail_a_code(gw: RunningGateway) -> None:
    ink = gw.add_studio("inkwell")
    answer = gw.api(ink.token).post(REQUEST)    # no body: the reason is optional
    assert answer.status_code == 409 and "GATEWAY_HELPDESK_ADDRESS" in answer.json()["detail"]
    assert _rows_of(gw, ink.id)["studio"] == 1


def test_billing_is_cancelled_first_and_its_failure_deletes_nothing(hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    ask_by_mail(hd)
    code = code_of(sent(hd, sink)[0])
    assert hd.gateway.app is not None
    calls: list[tuple[int, int]] = []

    def failing(studio_id: int) -> None:
        raise RuntimeError("Stripe is down")

    hd.gateway.app.state.cancel_subscription_for_deletion = failing
    assert confirm(hd, code).status_code == 503
    assert _rows_of(hd, ink.id)["studio"] == 1 and requests(hd)[0].status == "pending"

    def recording(studio_id: int) -> None:
        calls.append((studio_id, _rows_of(hd, ink.id)["studio"]))

    hd.gateway.app.state.cancel_subscription_for_deletion = recording
    assert confirm(hd, code).status_code == 200, "the code stays valid after a failed attempt"
    assert calls == [(ink.id, 1)], "called once, with the studio, before anything was erased"


def test_guessing_codes_is_braked_per_address(hd: RunningGateway, sink: RelaySink) -> None:
    hd.add_studio("inkwell")
    ask_by_mail(hd)
    code = code_of(sent(hd, sink)[0])
    for _ in range(10):
        assert confirm(hd, "AAAA-BBBB-CCCC-DDDD").status_code == 404
    blocked = confirm(hd, code)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert requests(hd)[0].status == "pending"


def test_the_mailed_link_opens_a_page_that_deletes_only_when_its_button_is_pressed(
        hd: RunningGateway, sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    ask_by_mail(hd)
    code = code_of(sent(hd, sink)[0])
    browser = hd.api(None)
    page = browser.get(f"/account/deletion/confirm?code={code}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'value="{code}"' in page.text and 'method="post"' in page.text
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert _rows_of(hd, ink.id)["studio"] == 1, "opening the link (as mail scanners do) deletes nothing"
    done = browser.post("/account/deletion/confirm", data={"code": code})
    assert done.status_code == 200 and "gelöscht" in done.text
    assert _rows_of(hd, ink.id)["studio"] == 0
    again = browser.post("/account/deletion/confirm", data={"code": code})
    assert again.status_code == 409 and "<script" not in again.text


# ------------------------------------------------------------------ mail after the deletion

def test_mail_accepted_around_the_deletion_is_not_kept_and_recreates_nothing(hd: RunningGateway,
                                                                            sink: RelaySink) -> None:
    ink = hd.add_studio("inkwell")
    loeschen_id = new_id()
    ask_by_mail(hd, message_id=loeschen_id)
    code = code_of(sent(hd, sink)[0])
    waiting = make_mail(subject="Waiting " + MARKER, attachments=[("s.pdf", "application/pdf", SKETCH)])
    assert hd.send(waiting, ink.address).code == 250            # accepted, not yet threaded
    assert confirm(hd, code).status_code == 200

    # Another process's directory still said yes for a few seconds: its acceptor stored this.
    late = make_mail(subject="Late " + MARKER, message_id=new_id())
    with write_tx(hd.engine) as conn:
        store_batch(conn, [(late, Envelope("guest@example.org", [ink.address]))], hd.settings,
                    hd.settings.secret())
    results = hd.process()
    assert [r.status for r in results] == ["discarded"]
    assert everywhere(hd, MARKER) == [], "neither kept nor quarantined with the studio's bytes"
    with read_tx(hd.engine) as conn:
        assert conn.execute(select(func.count()).select_from(INBOUND)
                            .where(INBOUND.c.status == "quarantined")).scalar_one() == 0

    ask_by_mail(hd, message_id=loeschen_id)                   # the LÖSCHEN mail retried by its server
    assert hd.send(make_mail(subject="Hallo"), ink.address).code == 550
    assert _rows_of(hd, ink.id)["studio"] == 0 and len(requests(hd)) == 1
    assert sent(hd, sink) == []


# ------------------------------------------------------------------ the helpdesk itself

def issue_token(gw: RunningGateway) -> str:
    from gateway.lifecycle.helpdesk import issue_helpdesk_token

    return issue_helpdesk_token(gw.engine, gw.settings)


def test_the_helpdesk_studio_exists_from_the_start_and_cannot_be_deleted(hd: RunningGateway,
                                                                        sink: RelaySink) -> None:
    token = issue_token(hd)
    assert hd.api(token).get("/api/v1/studio").json()["address"] == HELPDESK
    assert hd.api(token).post(REQUEST, json={}).status_code == 409
    ask_by_mail(hd, from_=HELPDESK)                        # its own address owns only the helpdesk
    assert requests(hd) == [] and sent(hd, sink) == []


def test_gateway_helpdesk_token_prints_a_working_owner_token(hd: RunningGateway, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    from gateway.settings import get_settings

    for name, value in {"DATA_DIR": str(hd.settings.data_dir), "DATABASE_URL": hd.settings.resolved_database_url,
                        "MAIL_DOMAIN": MAIL_DOMAIN, "HELPDESK_ADDRESS": HELPDESK}.items():
        monkeypatch.setenv(f"GATEWAY_{name}", value)
    get_settings.cache_clear()
    try:
        assert main(["helpdesk", "token"]) == 0
        token = capsys.readouterr().out.split("(shown once): ")[1].strip()
        assert main(["helpdesk", "deletions", "--json"]) == 0
        assert capsys.readouterr().out.strip() == "[]"
    finally:
        get_settings.cache_clear()
    assert hd.api(token).get(CONVERSATIONS).status_code == 200


def test_the_helpdesk_address_must_be_a_studio_address_of_the_mail_domain(tmp_path: Path) -> None:
    for bad in ("helpdesk@other.example", "help+desk@mail.test", "help desk@mail.test"):
        with pytest.raises(ValueError, match="GATEWAY_HELPDESK_ADDRESS"):
            make_settings(tmp_path, "sqlite://", helpdesk_address=bad)
    assert make_settings(tmp_path, "sqlite://", helpdesk_address=" HelpDesk@Mail.Test ").helpdesk_slug == "helpdesk"
