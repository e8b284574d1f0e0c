"""Notifications to profiles (issue 16): who hears about guest mail, the digest, answering by mail.

A real gateway over SMTP and HTTP, its outbox sending into a real SMTP sink, on SQLite and
PostgreSQL. The digest is driven directly with a clock; nothing sleeps.
"""
from __future__ import annotations

import json
import re
import threading
from datetime import timedelta
from email.utils import make_msgid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, update

from gateway.mail.addresses import (notification_address, notification_token, reply_token, verify_notification_token,
                                    verify_reply_token)
from gateway.inbound.intake import Envelope, store_batch
from gateway.inbound.processor import ProcessorThread, process_pending
from gateway.lifecycle.purge import purge
from gateway.outbound.notifications import HOLD_WHILE_BUSY, queue_told, send_digests
from gateway.outbound.notify_preferences import PAUSE_AFTER_BOUNCES, bounced_since
from gateway.outbound.webhooks import WebhookSender
from gateway.runtime import REACTIONS
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import AUTOMATIC_MAIL, CONVERSATION, GUEST, MESSAGE, NOTIFICATION, OUTBOUND_JOB, PROFILE, STUDIO, STUDIO_EVENT
from tests.access import connect_member
from tests.conftest import MAIL_DOMAIN, RunningGateway, StudioInfo, fixture_bytes, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.dns_server import Zone, dns_server
from tests.form_posts import PNG, answers, issued, post
from tests.https_receiver import Receiver
from tests.relay_sink import Received, RelaySink
from tests.test_outbound import send_due
from tests.test_outgoing_webhooks import hook_settings, register
from tests.test_web_login import signed_in_client
from tests.web import Web, csrf_of, serving

PUBLIC_URL = "https://gateway.example"
OWNER = "owner@inkwell.example"      # RunningGateway.add_studio's owner address for "inkwell"
MINE = "/api/v1/profiles/me/notifications"
SKETCH = b"%PDF-1.4 sketch" + bytes(3000)


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as relay:
        yield relay


@pytest.fixture
def gw(tmp_path: Path, database_url: str, sink: RelaySink) -> Iterator[RunningGateway]:
    """SMTP + HTTP, sending through the sink; processor, outbox and digest driven by hand."""
    running = start_gateway(make_settings(tmp_path, database_url, smtp_relay_url=sink.url, public_url=PUBLIC_URL))
    yield running
    running.stop()


def studio_owner(conn: Any, studio_id: int) -> int:
    return int(conn.execute(select(PROFILE.c.id).where(PROFILE.c.studio_id == studio_id,
                                                       PROFILE.c.role == "owner")).scalar_one())


def sent(gw: RunningGateway, sink: RelaySink, later: timedelta = timedelta(0)) -> list[Received]:
    """What one outbox round sends now (or with the clock moved `later` ahead)."""
    before = len(sink.received)
    send_due(gw, later=later)
    return sink.received[before:]


def inquiry(gw: RunningGateway, studio: StudioInfo, *, guest: str = "guest@example.org", subject: str = "Tattoo Anfrage",
            body: str = "Hallo, ich hätte gern einen Termin.", attachments: list[Any] | None = None,
            in_reply_to: str | None = None) -> str:
    message_id = new_id()
    raw = make_mail(from_=f"Lena Müller <{guest}>", subject=subject, body=body, message_id=message_id,
                    attachments=attachments, in_reply_to=in_reply_to)
    assert gw.send(raw, studio.address, mail_from=guest).code == 250
    gw.process()
    return message_id


def body_of(mail: Received) -> str:
    return mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def conversations(gw: RunningGateway) -> list[int]:
    with read_tx(gw.engine) as conn:
        return list(conn.execute(select(CONVERSATION.c.id).order_by(CONVERSATION.c.id)).scalars())


def answer(notification: Received, *, from_: str = OWNER, body: str = "Freitag um 14 Uhr passt.",
           attachments: list[Any] | None = None, headers: dict[str, str] | None = None,
           to: str | None = None) -> tuple[bytes, str]:
    """A profile's answer to a notification, quoting it as a mail client does."""
    original = notification.message
    to = to or str(original["Reply-To"]).split("<")[-1].rstrip(">")
    quoted = "\n".join(f"> {line}" for line in body_of(notification).splitlines())
    text = f"{body}\n\nAm 20.11.2026 um 10:00 schrieb Inkwell <inkwell@{MAIL_DOMAIN}>:\n{quoted}\n"
    raw = make_mail(from_=from_, to=to, subject=f"Re: {original['Subject']}", body=text,
                    in_reply_to=str(original["Message-ID"]), attachments=attachments, headers=headers)
    return raw, to


# --- who hears what -------------------------------------------------------------------------

def test_an_inquiry_notifies_the_owner_once_and_members_who_chose_off_get_none(gw: RunningGateway,
                                                                              sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell", name="Inkwell")
    connect_member(gw, studio, "artist@inkwell.example")            # members: off until they choose
    inquiry(gw, studio, body="Ich möchte eine Rose am Arm.", attachments=[("skizze.pdf", "application/pdf", SKETCH)])
    [mail] = sent(gw, sink)
    [conversation_id] = conversations(gw)
    assert mail.rcpt_tos == [OWNER]
    message = mail.message
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Subject"] == "Neue Nachricht von Lena Müller: Tattoo Anfrage"   # the studio's language (de)
    token = str(message["Reply-To"]).split("+", 1)[1].split("@", 1)[0]
    assert verify_notification_token(gw.settings.secret(), studio.id, token)[0] == conversation_id  # type: ignore[index]
    text = body_of(mail)
    assert "Ich möchte eine Rose am Arm." in text
    assert "skizze.pdf (2.9 KB)" in text
    assert f"{PUBLIC_URL}/app/c/{conversation_id}" in text
    assert sent(gw, sink) == []                                      # once
    with read_tx(gw.engine) as conn:   # the studio's event stream tells of guest mail, not of notifications
        assert conn.execute(select(STUDIO_EVENT.c.seq).where(STUDIO_EVENT.c.type == "delivery.updated")).all() == []


def test_notifications_wait_while_guest_mail_waits_and_go_out_once_it_is_threaded(gw: RunningGateway,
                                                                                  sink: RelaySink) -> None:
    """Intake first (gateway/outbound/notifications.py): in a burst, the notification of a
    threaded message is held while more guest mail waits to be threaded, and released (every
    held one, at once) by the chunk that finds nothing more waiting."""
    studio = gw.add_studio("inkwell", name="Inkwell")
    for n in range(3):
        raw = make_mail(from_=f"Gast {n} <gast{n}@example.org>", subject=f"Anfrage {n}", message_id=new_id())
        assert gw.send(raw, studio.address, mail_from=f"gast{n}@example.org").code == 250
    assert len(process_pending(gw.engine, gw.settings, REACTIONS, limit=1, chunk=1)) == 1  # two still wait
    assert sent(gw, sink) == []                                          # held, not lost:
    assert [m.rcpt_tos for m in sent(gw, sink, later=HOLD_WHILE_BUSY)] == [[OWNER]]  # due within the bound
    assert len(process_pending(gw.engine, gw.settings, REACTIONS, limit=1, chunk=1)) == 1  # one still waits
    assert len(process_pending(gw.engine, gw.settings, REACTIONS, limit=1, chunk=1)) == 1  # none waits now
    assert [m.rcpt_tos for m in sent(gw, sink)] == [[OWNER], [OWNER]]    # the held one and the last, at once


def test_the_processor_says_when_a_burst_is_threaded_and_then_every_noted_mail_is_queued(
        gw: RunningGateway, sink: RelaySink) -> None:
    """The worker's processor calls on_idle once nothing more waits (gateway/runtime.py wakes
    its outbox with it): by then each message of the burst is threaded, and the outbox's feed
    queues the mail of every one at once."""
    studio = gw.add_studio("inkwell")
    for n in range(3):
        raw = make_mail(from_=f"Gast {n} <gast{n}@example.org>", subject=f"Anfrage {n}", message_id=new_id())
        assert gw.send(raw, studio.address, mail_from=f"gast{n}@example.org").code == 250
    idle = threading.Event()
    processor = ProcessorThread(gw.engine, gw.settings, REACTIONS, on_idle=idle.set)
    processor.start()
    try:
        assert idle.wait(60)
        assert processor.processed == 3
    finally:
        processor.stop()
    assert queue_told(gw.engine, gw.settings, utcnow()) == 3
    assert [m.rcpt_tos for m in sent(gw, sink)] == [[OWNER]] * 3


def test_an_auto_reply_produces_no_notification(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    ooo = fixture_bytes("out_of_office_de.eml").replace(b"hallo@nadelwerk.example", studio.address.encode())
    assert gw.send(ooo, studio.address, mail_from="petra.schmidt@firma.example").code == 250
    gw.process()
    assert sent(gw, sink) == []
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(NOTIFICATION)).all() == []


def test_the_storm_limit_holds_and_the_rest_waits_for_the_digest(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    first = inquiry(gw, studio)
    for n in range(4):
        inquiry(gw, studio, body=f"Noch etwas ({n})", in_reply_to=first)
    assert len(conversations(gw)) == 1
    assert [m.rcpt_tos for m in sent(gw, sink)] == [[OWNER]]         # one in five minutes
    assert send_digests(gw.engine, gw.settings, utcnow()) == 1       # the rest: one digest
    [digest] = sent(gw, sink)
    assert digest.message["Auto-Submitted"] == "auto-generated"
    assert digest.message["Reply-To"].addresses[0].addr_spec == f"inkwell+digest@{MAIL_DOMAIN}"
    assert send_digests(gw.engine, gw.settings, utcnow()) == 0
    with write_tx(gw.engine) as conn:   # five minutes later the next message is told at once again
        conn.execute(update(NOTIFICATION).values(created_at=utcnow() - timedelta(minutes=6)))
    inquiry(gw, studio, body="Und noch eine Frage", in_reply_to=first)
    assert len(sent(gw, sink)) == 1


def test_the_hourly_digest_gathers_three_conversations(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    assert owner.patch(MINE, json={"mode": "hourly"}).json()["mode"] == "hourly"
    for n, guest in enumerate(("a@example.org", "b@example.org", "c@example.org")):
        inquiry(gw, studio, guest=guest, subject=f"Anfrage {n}")
    assert sent(gw, sink) == []
    assert send_digests(gw.engine, gw.settings, utcnow()) == 1
    [digest] = sent(gw, sink)
    text = body_of(digest)
    links = re.findall(rf"{re.escape(PUBLIC_URL)}/app/c/(\d+)", text)
    assert sorted(int(x) for x in links) == conversations(gw)
    assert digest.message["Subject"] == "Inkwell: 3 Unterhaltungen mit neuer Post"
    # Answering the digest: it names no one guest. The SMTP edge refuses it with a bounce that
    # says where to answer; nothing is stored, sent or opened.
    raw, to = answer(digest)
    refused = gw.send(raw, to, mail_from=OWNER)
    assert (refused.code, to) == (550, f"inkwell+digest@{MAIL_DOMAIN}")
    assert "answer the conversation's own notification, or in the messenger" in refused.text
    gw.process()
    assert sent(gw, sink) == [] and len(conversations(gw)) == 3
    # Through a provider's webhook nothing refuses it at RCPT: it is listed, never threaded.
    with write_tx(gw.engine) as conn:
        store_batch(conn, [(raw, Envelope(OWNER, [to]))], gw.settings, gw.settings.secret())
    gw.process()
    assert sent(gw, sink) == [] and len(conversations(gw)) == 3
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(AUTOMATIC_MAIL.c.from_email)).scalars().all() == [OWNER]


def test_quiet_hours_hold_mail_for_the_next_digest_outside_them(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    with write_tx(gw.engine) as conn:
        conn.execute(update(STUDIO).where(STUDIO.c.id == studio.id).values(time_zone="UTC"))
    now = utcnow()
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    assert gw.api(studio.token).patch(MINE, json={"quiet_from": start, "quiet_to": end}).status_code == 200
    inquiry(gw, studio)
    assert sent(gw, sink) == []
    assert send_digests(gw.engine, gw.settings, now) == 0                         # still quiet
    assert send_digests(gw.engine, gw.settings, now + timedelta(hours=2)) == 1    # after them
    assert send_due(gw, later=timedelta(hours=2)) == 1
    assert [m.rcpt_tos for m in sink.received] == [[OWNER]]


# --- preferences ----------------------------------------------------------------------------

def test_preferences_default_by_role_and_invalid_values_are_422_naming_the_field(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _, member_token = connect_member(gw, studio)
    owner, member = gw.api(studio.token), gw.api(member_token)
    assert owner.get(MINE).json() == {"mode": "immediately", "quiet_from": None, "quiet_to": None, "paused": False}
    assert member.get(MINE).json()["mode"] == "off"
    for body, field in (({"mode": "sometimes"}, "mode"), ({"quiet_from": "25:00"}, "quiet_from"),
                        ({"quiet_to": "7 Uhr"}, "quiet_to")):
        refused = member.patch(MINE, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "invalid_notification_preference"
        assert [e["field"] for e in refused.json()["errors"]] == [field]
    changed = member.patch(MINE, json={"mode": "hourly", "quiet_from": "22:00", "quiet_to": "07:00"}).json()
    assert changed == {"mode": "hourly", "quiet_from": "22:00", "quiet_to": "07:00", "paused": False}
    assert owner.get(MINE).json()["mode"] == "immediately"           # each profile its own


# --- answering by mail ----------------------------------------------------------------------

def test_notification_and_reply_addresses_cannot_pass_as_each_other() -> None:
    secret = b"k" * 32
    reply = reply_token(secret, 1, 7)
    note = notification_token(secret, 1, 7, 3)
    assert verify_notification_token(secret, 1, reply) is None        # a guest's address is no profile's
    assert verify_reply_token(secret, 1, note) is None                 # nor the reverse
    # Not even with the MAC moved over: each is signed for its own purpose.
    assert verify_reply_token(secret, 1, "c7-" + note.rsplit("-", 1)[1]) is None
    assert verify_notification_token(secret, 1, "n7p3-" + reply.rsplit("-", 1)[1]) is None
    assert verify_notification_token(secret, 1, note) == (7, 3)
    assert verify_notification_token(secret, 2, note) is None           # another studio's


def test_the_owners_answer_reaches_the_guest_threaded_and_without_the_quoted_notification(
        gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell", name="Inkwell")
    guest_message_id = inquiry(gw, studio)
    [notification] = sent(gw, sink)
    raw, to = answer(notification, attachments=[("termin.pdf", "application/pdf", SKETCH)])
    assert gw.send(raw, to, mail_from=OWNER).code == 250
    gw.process()
    [reply] = sent(gw, sink)
    assert reply.rcpt_tos == ["guest@example.org"]
    assert reply.message["In-Reply-To"] == guest_message_id
    assert reply.message["From"].addresses[0].addr_spec == studio.address
    text = body_of(reply)
    assert "Freitag um 14 Uhr passt." in text
    assert "schrieb Inkwell" not in text and "Neue Nachricht" not in text and "/app/c/" not in text
    assert [p.get_filename() for p in reply.message.iter_attachments()] == ["termin.pdf"]
    assert len(conversations(gw)) == 1
    with read_tx(gw.engine) as conn:   # the profile's own copy is not shown as guest mail
        inbound = conn.execute(select(MESSAGE.c.state).where(MESSAGE.c.direction == "inbound",
                                                             MESSAGE.c.from_email == OWNER)).scalar_one()
    assert inbound == "rejected"


def held_answer(gw: RunningGateway, sink: RelaySink, studio: StudioInfo, sender: str) -> tuple[str, str]:
    """Answer the studio's first notification from `sender`: nothing may reach the guest; the
    answer's (state, thread_rule)."""
    inquiry(gw, studio)
    [notification] = sent(gw, sink)
    raw, to = answer(notification, from_=sender)
    assert gw.send(raw, to, mail_from=sender).code == 250
    gw.process()
    assert sent(gw, sink) == []
    with read_tx(gw.engine) as conn:
        return tuple(conn.execute(select(MESSAGE.c.state, MESSAGE.c.thread_rule)  # type: ignore[return-value]
                                  .where(MESSAGE.c.from_email == sender)).one())


def test_an_answer_from_a_strangers_address_is_held_with_its_reason(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    assert held_answer(gw, sink, studio, "mallory@example.org") == ("held", "notify_answer_stranger")


def test_an_answer_from_a_disconnected_profile_is_held(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    member_id, member_token = connect_member(gw, studio, "artist@inkwell.example")
    assert gw.api(member_token).patch(MINE, json={"mode": "immediately"}).status_code == 200
    inquiry(gw, studio)
    mails = sent(gw, sink)
    [to_member] = [m for m in mails if m.rcpt_tos == ["artist@inkwell.example"]]
    assert gw.api(studio.token).delete(f"/api/v1/profiles/{member_id}").status_code == 204
    raw, to = answer(to_member, from_="artist@inkwell.example")
    assert gw.send(raw, to, mail_from="artist@inkwell.example").code == 250
    gw.process()
    assert sent(gw, sink) == []
    with read_tx(gw.engine) as conn:
        rule = conn.execute(select(MESSAGE.c.thread_rule).where(
            MESSAGE.c.from_email == "artist@inkwell.example", MESSAGE.c.direction == "inbound")).scalar_one()
    assert rule == "notify_answer_disconnected"


def test_an_answer_failing_authentication_for_the_profiles_domain_is_held(tmp_path: Path, database_url: str,
                                                                         sink: RelaySink) -> None:
    """example.com lets only 192.0.2.1 send (SPF -all) and asks for DMARC p=reject: an answer in
    the owner's name from here is an explicit failure, held for the profile to confirm."""
    zone = Zone()
    zone.txt("example.com", "v=spf1 ip4:192.0.2.1 -all")
    zone.txt("_dmarc.example.com", "v=DMARC1; p=reject")
    with dns_server(zone) as dns:
        running = start_gateway(make_settings(tmp_path, database_url, dns_servers=dns.servers,
                                              smtp_relay_url=sink.url, public_url=PUBLIC_URL))
        try:
            studio = running.add_studio("inkwell", owner="owner@example.com")
            assert held_answer(running, sink, studio, "owner@example.com") == ("held", "notify_answer_unauthenticated")
        finally:
            running.stop()


def test_a_forged_notification_address_is_never_sent(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    other = gw.add_studio("blackrose")
    inquiry(gw, studio)
    [notification] = sent(gw, sink)
    [conversation_id] = conversations(gw)
    owner_profile = int(re.search(r"p(\d+)-", str(notification.message["Reply-To"])).group(1))  # type: ignore[union-attr]
    wrong_mac = f"inkwell+n{conversation_id}p{owner_profile}-{'a' * 16}@{MAIL_DOMAIN}"
    # Signed by us, but for the other studio: it names nothing of inkwell's.
    foreign = notification_address(gw.settings.secret(), "inkwell", other.id, conversation_id, owner_profile,
                                   MAIL_DOMAIN)
    for to in (wrong_mac, foreign):
        raw, _ = answer(notification, to=to)
        assert gw.send(raw, to, mail_from=OWNER).code == 250
        gw.process()
    assert sent(gw, sink) == []
    assert conversations(gw) == [conversation_id]                      # none opened
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.direction == "inbound",
                                                       MESSAGE.c.from_email == OWNER)).all() == []


def test_an_auto_reply_to_a_notification_address_never_reaches_the_guest(gw: RunningGateway,
                                                                          sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    inquiry(gw, studio)
    [notification] = sent(gw, sink)
    raw, to = answer(notification, body="Ich bin im Urlaub.", headers={"Auto-Submitted": "auto-replied"})
    assert gw.send(raw, to, mail_from=OWNER).code == 250
    gw.process()
    assert sent(gw, sink) == []
    assert len(conversations(gw)) == 1


# --- bounces --------------------------------------------------------------------------------

def _bounce(gw: RunningGateway, studio: StudioInfo, message_id: str) -> None:
    dsn = (fixture_bytes("dsn_bounce.eml").replace(b"studio-5001@ink.example", message_id.strip("<>").encode())
           .replace(b"20240106120000.ABCDEF", make_msgid().strip("<>").split("@")[0].encode())
           .replace(b"hallo@nadelwerk.example", studio.address.encode()))
    assert gw.send(dsn, studio.address, mail_from="").code == 250
    gw.process()


def test_a_bouncing_profile_is_paused_and_a_change_resumes_it(gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    for n in range(3):
        inquiry(gw, studio, guest=f"g{n}@example.org", subject=f"Anfrage {n}")
        [notification] = sent(gw, sink)
        _bounce(gw, studio, str(notification.message["Message-ID"]))
    assert len(conversations(gw)) == 3                                  # a bounce opens none
    assert owner.get(MINE).json()["paused"] is True
    inquiry(gw, studio, guest="g9@example.org", subject="Noch eine")
    assert sent(gw, sink) == []
    assert owner.patch(MINE, json={"mode": "immediately"}).json()["paused"] is False
    inquiry(gw, studio, guest="g10@example.org", subject="Und noch eine")
    assert len(sent(gw, sink)) == 1


# --- confirming a held answer ---------------------------------------------------------------

def test_a_held_answer_is_sent_once_when_its_profile_confirms_it_and_rejecting_sends_nothing(
        gw: RunningGateway, sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell", name="Inkwell")
    _, artist_token = connect_member(gw, studio, "artist@inkwell.example")
    _, second_token = connect_member(gw, studio, "second@inkwell.example", name="Second")
    artist, second, owner = gw.api(artist_token), gw.api(second_token), gw.api(studio.token)
    assert artist.patch(MINE, json={"mode": "immediately"}).status_code == 200
    guest_message_id = inquiry(gw, studio)
    mails = sent(gw, sink)
    [to_artist] = [m for m in mails if m.rcpt_tos == ["artist@inkwell.example"]]
    [to_owner] = [m for m in mails if m.rcpt_tos == [OWNER]]
    # The artist answers from a private address: not the profile's, so held for confirming.
    raw, to = answer(to_artist, from_="artist.private@example.org",
                     attachments=[("termin.pdf", "application/pdf", SKETCH)])
    assert gw.send(raw, to, mail_from="artist.private@example.org").code == 250
    gw.process()
    assert sent(gw, sink) == []
    [held] = owner.get("/api/v1/held").json()["items"]
    refused = second.post(f"/api/v1/held/{held['id']}/accept")        # not the profile it answers for
    assert refused.status_code == 403 and refused.json()["code"] == "not_your_answer"
    assert sent(gw, sink) == []
    confirmed = artist.post(f"/api/v1/held/{held['id']}/accept")
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "sent"
    [reply] = sent(gw, sink)
    assert reply.rcpt_tos == ["guest@example.org"]
    assert reply.message["In-Reply-To"] == guest_message_id
    assert reply.message["From"].addresses[0].addr_spec == studio.address
    text = body_of(reply)
    assert "Freitag um 14 Uhr passt." in text and "schrieb Inkwell" not in text and "/app/c/" not in text
    assert [p.get_filename() for p in reply.message.iter_attachments()] == ["termin.pdf"]
    assert owner.post(f"/api/v1/held/{held['id']}/accept").status_code == 409   # once
    assert sent(gw, sink) == []
    [conversation_id] = conversations(gw)
    shown = owner.get(f"/api/v1/conversations/{conversation_id}").json()["messages"]
    assert [m["direction"] for m in shown] == ["inbound", "outbound"]         # the reply, not the mail it came in
    # A stranger's answer to the owner's notification, rejected by a member: nothing goes out.
    raw, to = answer(to_owner, from_="mallory@example.org")
    assert gw.send(raw, to, mail_from="mallory@example.org").code == 250
    gw.process()
    [held] = owner.get("/api/v1/held").json()["items"]
    assert second.post(f"/api/v1/held/{held['id']}/reject").json()["state"] == "rejected"
    assert sent(gw, sink) == []


def answered_and_held(web: Web, sender: str, **answer_kwargs: Any) -> StudioInfo:
    """A studio whose owner's notification of an inquiry is answered by `sender`, over SMTP and
    processed; the answer is held (nothing mailed), for the messenger to show. The studio."""
    studio = web.gw.add_studio("inkwell", name="Inkwell")
    inquiry(web.gw, studio)
    [notification] = web.mailed()
    raw, to = answer(notification, from_=sender, **answer_kwargs)
    assert web.gw.send(raw, to, mail_from=sender).code == 250
    web.gw.process()
    assert web.mailed() == []
    return studio


def test_the_owner_confirms_a_held_answer_in_the_messenger_and_the_guest_gets_it(tmp_path: Path,
                                                                                  database_url: str) -> None:
    with serving(tmp_path, database_url) as web:
        studio = answered_and_held(web, "owner.phone@example.org")
        client = signed_in_client(web)
        [held] = web.gw.api(studio.token).get("/api/v1/held").json()["items"]
        page = client.get("/app/held")
        assert "Freitag um 14 Uhr passt." in page.text
        accepted = client.post(f"/app/held/{held['id']}", data={"decision": "accept", "csrf_token": csrf_of(page.text)})
        assert accepted.status_code == 303 and accepted.headers["location"] == f"/app/c/{held['conversation_id']}"
        [reply] = web.mailed()
        assert reply.rcpt_tos == ["guest@example.org"] and "Freitag um 14 Uhr passt." in body_of(reply)
        assert web.gw.api(studio.token).get("/api/v1/held").json()["items"] == []


def test_a_quote_only_answer_stays_held_and_the_messenger_says_why_it_cannot_be_sent(tmp_path: Path,
                                                                                    database_url: str) -> None:
    with serving(tmp_path, database_url) as web:
        studio = answered_and_held(web, OWNER, body="")   # nothing but the quoted notification
        [held] = web.gw.api(studio.token).get("/api/v1/held").json()["items"]
        client = signed_in_client(web)
        page = client.get("/app/held", headers={"Accept-Language": "en"})
        assert "holds nothing but the quoted notification: there is nothing to send to the guest" in page.text
        assert 'value="accept"' not in page.text and 'value="reject"' in page.text  # nothing to accept
        assert "nur die zitierte Benachrichtigung" in client.get("/app/held").text  # and in German
        refused = client.post(f"/app/held/{held['id']}", headers={"Accept-Language": "en"},
                              data={"decision": "accept", "csrf_token": csrf_of(page.text)})
        assert refused.status_code == 400 and "This answer cannot be sent to the guest; it is still held." in refused.text
        assert web.mailed() == []
        assert [h["id"] for h in web.gw.api(studio.token).get("/api/v1/held").json()["items"]] == [held["id"]]
        rejected = client.post(f"/app/held/{held['id']}", data={"decision": "reject", "csrf_token": csrf_of(page.text)})
        assert rejected.status_code == 303 and web.gw.api(studio.token).get("/api/v1/held").json()["items"] == []


# --- form inquiries ---------------------------------------------------------------------------

def test_a_form_inquiry_notifies_the_owner_and_reaches_the_webhook_endpoints(tmp_path: Path, database_url: str,
                                                                             sink: RelaySink) -> None:
    """The form's submission is announced as threaded mail is (gateway/events.announce): the
    same reactions, so the owner hears of it and the studio's endpoints get its message.created."""
    (tmp_path / "tls").mkdir()
    receiver = Receiver(tmp_path / "tls").start()
    running = start_gateway(hook_settings(tmp_path, database_url, receiver, smtp_relay_url=sink.url,
                                          public_url=PUBLIC_URL))
    try:
        studio = running.add_studio("inkwell", name="Inkwell")
        register(running, studio, receiver.url())
        web = running.api(None)
        assert post(web, "inkwell", answers(_issued=issued(studio.id)), [("rose.png", PNG)]).status_code == 200
        [conversation_id] = conversations(running)
        mails = sent(running, sink)
        assert sorted(m.rcpt_tos[0] for m in mails) == ["lena@example.org", OWNER]   # confirmation, notification
        [notification] = [m for m in mails if m.rcpt_tos == [OWNER]]
        assert notification.message["Subject"] == "Neue Nachricht von Lena Rose: Anfrage über das Formular"
        text = body_of(notification)
        assert "A small rose, fine line" in text and "rose.png" in text
        assert f"{PUBLIC_URL}/app/c/{conversation_id}" in text
        assert WebhookSender(running.engine, running.settings).run_round() >= 1
        events = [json.loads(p.body) for p in receiver.wait_for(1)]
        assert {"type": "message.created", "conversation_id": conversation_id, "direction": "inbound"}.items() \
            <= events[0].items()
    finally:
        running.stop()
        receiver.stop()


# --- retention ------------------------------------------------------------------------------

def test_the_purge_drops_notifications_after_30_days_but_keeps_what_the_pause_counts(gw: RunningGateway,
                                                                                      sink: RelaySink) -> None:
    studio = gw.add_studio("inkwell")
    inquiry(gw, studio, guest="a@example.org", subject="Told")
    [told] = sent(gw, sink)
    inquiry(gw, studio, guest="b@example.org", subject="Bounced")
    [bounced] = sent(gw, sink)
    _bounce(gw, studio, str(bounced.message["Message-ID"]))
    month_ago = utcnow() - timedelta(days=31)
    with write_tx(gw.engine) as conn:
        conn.execute(update(NOTIFICATION).values(created_at=month_ago))
        conn.execute(update(MESSAGE).where(MESSAGE.c.conversation_id.is_(None)).values(received_at=month_ago))
    inquiry(gw, studio, guest="c@example.org", subject="Fresh")
    [fresh] = sent(gw, sink)
    assert purge(gw.engine, gw.settings).notifications == 2               # the told one's row and mail
    with read_tx(gw.engine) as conn:
        kept = set(conn.execute(select(MESSAGE.c.message_id).where(MESSAGE.c.auto_kind == "notification")).scalars())
        assert kept == {str(bounced.message["Message-ID"]).strip("<>"), str(fresh.message["Message-ID"]).strip("<>")}
        assert conn.execute(select(func.count()).select_from(NOTIFICATION)).scalar() == 2
        assert conn.execute(select(func.count()).select_from(OUTBOUND_JOB).join(
            MESSAGE, MESSAGE.c.id == OUTBOUND_JOB.c.message_id).where(
            MESSAGE.c.message_id == str(told.message["Message-ID"]).strip("<>"))).scalar() == 0
        assert bounced_since(conn, studio_owner(conn, studio.id), None) == 1   # still counts for the pause
    assert purge(gw.engine, gw.settings).notifications == 0               # repeatable


# --- erased before it was told ----------------------------------------------------------------

def _erase_guest(gw: RunningGateway, studio: StudioInfo, guest: str) -> None:
    with read_tx(gw.engine) as conn:
        guest_id = conn.execute(select(GUEST.c.id).where(GUEST.c.studio_id == studio.id,
                                                         GUEST.c.email == guest)).scalar_one()
    assert gw.api(studio.token).post(f"/api/v1/guests/{guest_id}/erase").status_code == 200


def test_a_guest_erased_before_the_notification_went_out_is_not_told_and_is_no_bounce(
        gw: RunningGateway, sink: RelaySink) -> None:
    """Erasing a guest (or purging a message) before its notification is sent leaves nothing to
    tell: no mail is sent, and nothing counts towards the profile's pause (PAUSE_AFTER_BOUNCES
    erasures once paused a healthy mailbox: each mail failed when it found no body)."""
    studio = gw.add_studio("inkwell")
    for n in range(PAUSE_AFTER_BOUNCES):
        inquiry(gw, studio, guest=f"g{n}@example.org", subject=f"Anfrage {n}")
        _erase_guest(gw, studio, f"g{n}@example.org")
        assert sent(gw, sink) == []
    with read_tx(gw.engine) as conn:
        assert bounced_since(conn, studio_owner(conn, studio.id), None) == 0
        assert conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.delivery == "failed")).all() == []
    assert gw.api(studio.token).get(MINE).json()["paused"] is False
    inquiry(gw, studio, guest="later@example.org")
    assert [m.rcpt_tos for m in sent(gw, sink)] == [[OWNER]]


def test_a_notification_queued_before_its_guest_was_erased_is_withdrawn_not_failed(
        gw: RunningGateway, sink: RelaySink) -> None:
    """The mail was queued already when the guest was erased: the outbox finds no body to
    render and withdraws it (`cancelled`), which is no failure of the profile's mailbox."""
    studio = gw.add_studio("inkwell")
    inquiry(gw, studio, guest="g@example.org")
    assert queue_told(gw.engine, gw.settings, utcnow()) == 1
    _erase_guest(gw, studio, "g@example.org")
    assert sent(gw, sink) == []
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(MESSAGE.c.delivery, OUTBOUND_JOB.c.status).join(
            OUTBOUND_JOB, OUTBOUND_JOB.c.message_id == MESSAGE.c.id)).all() == [("cancelled", "cancelled")]
        assert bounced_since(conn, studio_owner(conn, studio.id), None) == 0
    assert sent(gw, sink) == []                                          # and never tried again
