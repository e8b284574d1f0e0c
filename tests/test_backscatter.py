"""Whom the gateway answers, and what of a sender's it shows: acknowledgements only to
authenticated senders, website forms as inquiries from their Reply-To guest, automatic mail
from strangers held, and automatic mail that opened nothing listed.

A real gateway over SMTP and HTTP. DNS: the suite's server (tests/conftest.py), where
example.org authorises 127.0.0.1 by SPF and no other test domain has records, or this
module's own zone where example.com publishes DMARC p=reject.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select, update

from gateway.store.db import read_tx, write_tx
from gateway.store.tables import MESSAGE, STUDIO
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.dns_server import Zone, dns_server
from tests.mail import make_mail, new_id


def _acknowledging(gw: RunningGateway, slug: str = "inkwell") -> Any:
    studio = gw.add_studio(slug, name="Inkwell Tattoo")
    with write_tx(gw.engine) as conn:
        conn.execute(update(STUDIO).where(STUDIO.c.id == studio.id).values(acknowledge_inquiries=True))
    return studio


def _acknowledgements(gw: RunningGateway) -> list[dict[str, Any]]:
    with read_tx(gw.engine) as conn:
        return [dict(r._mapping) for r in conn.execute(select(MESSAGE).where(
            MESSAGE.c.direction == "outbound", MESSAGE.c.auto_kind == "acknowledgement").order_by(MESSAGE.c.id))]


def _inbound(gw: RunningGateway, inbound_id: int | None) -> dict[str, Any]:
    with read_tx(gw.engine) as conn:
        return dict(conn.execute(select(MESSAGE).where(MESSAGE.c.inbound_mail_id == inbound_id)).one()._mapping)


# --- acknowledgements ----------------------------------------------------------------------

def test_an_aligned_sender_is_acknowledged_generically(gw: RunningGateway) -> None:
    studio = _acknowledging(gw)
    gw.send(make_mail(from_="Buy cheap pills at spam.example <guest@example.org>",
                      subject="Visit spam.example now"), studio.address, mail_from="guest@example.org")
    gw.process()
    [ack] = _acknowledgements(gw)
    assert ack["subject"] == "Deine Anfrage bei Inkwell Tattoo"
    assert ack["to_json"] == '[{"email": "guest@example.org", "name": ""}]'
    assert "spam.example" not in ack["text"] and ack["text"].startswith("Hallo,")


def test_no_acknowledgement_without_a_verdict(gw: RunningGateway) -> None:
    """example.net publishes nothing: SPF none, no DKIM, no DMARC. The address may be anyone's."""
    studio = _acknowledging(gw)
    reply = gw.send(make_mail(from_="Victim <victim@example.net>"), studio.address, mail_from="victim@example.net")
    gw.process()
    assert _inbound(gw, reply.inbound_id)["state"] == "visible"  # the inquiry is shown all the same
    assert _acknowledgements(gw) == []


def test_no_acknowledgement_when_spf_passes_for_another_domain(gw: RunningGateway) -> None:
    """The envelope is example.org's (SPF pass), the From someone else's: not aligned."""
    studio = _acknowledging(gw)
    gw.send(make_mail(from_="Victim <victim@example.net>"), studio.address, mail_from="bounces@example.org")
    gw.process()
    assert _acknowledgements(gw) == []


def test_a_studio_sends_at_most_its_hourly_cap(tmp_path: Path, database_url: str) -> None:
    gw = start_gateway(make_settings(tmp_path, database_url, acknowledgements_per_hour=2))
    try:
        studio = _acknowledging(gw)
        for n in range(4):  # four different aligned senders, each within the per-sender brake
            assert gw.send(make_mail(from_=f"guest{n}@example.org", subject=f"Anfrage {n}"), studio.address,
                           mail_from=f"guest{n}@example.org").code == 250
        gw.process()
        assert len(_acknowledgements(gw)) == 2
    finally:
        gw.stop()


# --- website forms -------------------------------------------------------------------------

def _form_mail(**extra: str) -> bytes:
    return make_mail(from_="Inkwell Website <wordpress@inkwell-tattoo.example>", subject="Neue Kontaktanfrage",
                     body="Name: Jana Kurz\nE-Mail: jana@example.net\nNachricht: Ich hätte gern ein Tattoo.",
                     headers={"Reply-To": "Jana Kurz <jana@example.net>", **extra})


@pytest.mark.parametrize("marks", [{}, {"Precedence": "bulk"}, {"Auto-Submitted": "auto-generated"}])
def test_a_website_form_opens_a_conversation_with_its_reply_to_guest(gw: RunningGateway,
                                                                       marks: dict[str, str]) -> None:
    studio = _acknowledging(gw)
    sent = gw.send(_form_mail(**marks), studio.address, mail_from="wordpress@inkwell-tattoo.example")
    gw.process()
    message = _inbound(gw, sent.inbound_id)
    assert (message["thread_rule"], message["state"], message["automatic"]) == ("website_form", "visible", False)
    detail = gw.api(studio.token).get(f"/api/v1/conversations/{message['conversation_id']}").json()
    assert detail["guest"]["email"] == "jana@example.net" and detail["guest"]["name"] == "Jana Kurz"
    assert detail["messages"][0]["thread_rule"] == "website_form"
    assert _acknowledgements(gw) == []  # anyone can type any address into a form


def test_a_guests_reply_to_the_studio_about_a_form_inquiry_is_hers(gw: RunningGateway) -> None:
    studio = _acknowledging(gw)
    sent = gw.send(_form_mail(), studio.address, mail_from="wordpress@inkwell-tattoo.example")
    gw.process()
    conversation_id = _inbound(gw, sent.inbound_id)["conversation_id"]
    answer = gw.api(studio.token).post(f"/api/v1/conversations/{conversation_id}/replies",
                                       json={"text": "Gern! Wann passt es dir?"})
    assert answer.status_code == 202
    assert answer.json()["to"][0]["email"] == "jana@example.net"


def test_an_auto_reply_with_a_reply_to_is_no_form(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    sent = gw.send(make_mail(from_="noreply@example.net", subject="Abwesenheitsnotiz",
                             headers={"Reply-To": "someone@example.net", "Auto-Submitted": "auto-replied"}),
                   studio.address, mail_from="noreply@example.net")
    results = gw.process()
    assert [o.rule for r in results for o in r.outcomes] == ["unthreaded-automatic"]
    assert sent.code == 250


# --- automatic mail from strangers, and automatic mail that opened nothing ---------------

def test_automatic_mail_from_a_non_participant_is_held(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    first = new_id()
    gw.send(make_mail(message_id=first), studio.address)
    gw.process()
    stranger = gw.send(make_mail(from_="Mallory <mallory@example.net>", subject="Automatische Antwort",
                                 in_reply_to=first, headers={"Auto-Submitted": "auto-replied"}),
                       studio.address, mail_from="mallory@example.net")
    own = gw.send(make_mail(subject="Abwesenheitsnotiz", in_reply_to=first,
                            headers={"Auto-Submitted": "auto-replied"}), studio.address)
    gw.process()
    assert _inbound(gw, stranger.inbound_id)["state"] == "held"
    assert _inbound(gw, own.inbound_id)["state"] == "visible"  # the guest's own out-of-office


def test_automatic_mail_that_opens_nothing_is_listed(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    other = gw.add_studio("other")
    for n in range(3):
        gw.send(make_mail(from_="news@example.com", subject=f"Newsletter {n}", headers={"List-Id": "<news.example.com>"}),
                studio.address, mail_from="news@example.com")
    gw.send(make_mail(from_="bot@example.net", subject="Out of office", headers={"Auto-Submitted": "auto-replied"}),
            studio.address, mail_from="bot@example.net")
    gw.send(make_mail(from_="news@example.com", subject="Not yours", headers={"List-Id": "<x>"}), other.address)
    gw.process()
    api = gw.api(studio.token)
    page = api.get("/api/v1/automatic", params={"limit": 3}).json()
    assert [i["subject"] for i in page["items"]] == ["Out of office", "Newsletter 2", "Newsletter 1"]
    assert page["items"][0]["kind"] == "auto-reply" and page["items"][0]["from"]["email"] == "bot@example.net"
    rest = api.get("/api/v1/automatic", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert [i["subject"] for i in rest["items"]] == ["Newsletter 0"] and rest["next_cursor"] is None
    lists = api.get("/api/v1/automatic", params={"kind": "list"}).json()["items"]
    assert len(lists) == 3
    assert api.get("/api/v1/automatic", params={"cursor": "bm9wZQ=="}).status_code == 400
    assert api.get("/api/v1/automatic").json()["items"][0]["authentication"]["spf"] == "none"
    assert gw.api(None).get("/api/v1/automatic").status_code == 401


def test_a_redelivered_automatic_mail_is_listed_once(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = make_mail(from_="news@example.com", subject="Newsletter", headers={"List-Id": "<news.example.com>"})
    gw.send(mail, studio.address)
    gw.send(mail, studio.address)
    gw.process()
    assert len(gw.api(studio.token).get("/api/v1/automatic").json()["items"]) == 1


# --- forged new inquiries: shown, never answered ----------------------------------------

@pytest.fixture
def strict_gw(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    zone = Zone()
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    with dns_server(zone) as dns:
        running = start_gateway(make_settings(tmp_path, database_url, dns_servers=dns.servers))
        try:
            yield running
        finally:
            running.stop()


def test_a_forged_inquiry_failing_dmarc_gets_no_acknowledgement(strict_gw: RunningGateway) -> None:
    studio = _acknowledging(strict_gw)
    sent = strict_gw.send(make_mail(from_="CEO <ceo@example.com>"), studio.address, mail_from="ceo@example.com")
    strict_gw.process()
    message = _inbound(strict_gw, sent.inbound_id)
    assert message["state"] == "visible" and "dmarc=fail" in message["authentication_results"]
    assert _acknowledgements(strict_gw) == []


def test_a_bounce_of_the_studios_reply_is_shown_one_naming_a_guests_mail_is_held(gw: RunningGateway) -> None:
    """A delivery report naming the studio's own reply marks it bounced and stays visible; one
    naming only the guest's Message-ID (anyone the guest wrote to knows it) is a stranger's."""
    from sqlalchemy import insert
    from tests.conftest import fixture_bytes
    studio = gw.add_studio("inkwell")
    guest_id = new_id()
    gw.send(make_mail(message_id=guest_id), studio.address)
    gw.process()
    with read_tx(gw.engine) as conn:
        conversation_id = conn.execute(select(MESSAGE.c.conversation_id)).scalar_one()
    with write_tx(gw.engine) as conn:
        conn.execute(insert(MESSAGE), {"studio_id": studio.id, "conversation_id": conversation_id,
                                       "direction": "outbound", "message_id": "reply-1@mail.test",
                                       "delivery": "sent", "subject": "Re: Tattoo Anfrage"})
    theirs = gw.send(fixture_bytes("dsn_bounce.eml").replace(b"studio-5001@ink.example", guest_id.strip("<>").encode())
                     .replace(b"20240106120000.ABCDEF", b"20240106120000.OTHER"), studio.address, mail_from="")
    gw.process()  # first: once a daemon's report was shown, the daemon counts as a participant
    ours = gw.send(fixture_bytes("dsn_bounce.eml").replace(b"studio-5001@ink.example", b"reply-1@mail.test"),
                   studio.address, mail_from="")
    gw.process()
    assert (_inbound(gw, ours.inbound_id)["state"], _inbound(gw, ours.inbound_id)["auto_kind"]) == ("visible", "bounce")
    assert _inbound(gw, theirs.inbound_id)["state"] == "held"
