"""Studio replies over real sockets: API → outbox → relay (a real SMTP sink) → guest → back.

The outbox is driven explicitly (`send_due`), as the worker's loop would run it; clocks are
injected, never slept.
"""
from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Iterator

import dkim
import pytest
from sqlalchemy import select, update

from gateway.mail.addresses import parse_studio_address, verify_reply_token
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import CONVERSATION, STUDIO
from gateway.store.models import utcnow
from gateway.outbound.outbox import Outbox
from gateway.runtime import LATE_BODIES, OUTBOX_FEEDS
from gateway.store.tables import OUTBOUND_JOB
from gateway.outbound.replies import create_reply
from gateway.outbound.signing import generate_keypair
from tests.conftest import MAIL_DOMAIN, SECRET, RunningGateway, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.relay_sink import RelaySink, free_port

SELECTOR = "gw2026"


def send_due(running: RunningGateway, *, later: timedelta = timedelta(0)) -> int:
    """One outbox round, as the worker runs it, with the clock moved `later` ahead."""
    outbox = Outbox(running.engine, running.settings, late_bodies=LATE_BODIES, feeds=OUTBOX_FEEDS,
                    clock=lambda: utcnow() + later)

    async def round_() -> int:
        try:
            return await outbox.run_once()
        finally:
            for transport in outbox.transports:
                await transport.close()

    return asyncio.run(round_())


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as relay:
        yield relay


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, str]:
    pair = generate_keypair("rsa")
    path = tmp_path / "dkim.pem"
    path.write_bytes(pair.private_pem)
    path.chmod(0o600)
    return path, pair.dns_record


def outbound_gateway(tmp_path: Path, database_url: str, relay_url: str | None, **overrides: Any) -> RunningGateway:
    settings = make_settings(tmp_path, database_url, smtp_relay_url=relay_url, **overrides)
    return start_gateway(settings)


def inquiry(running: RunningGateway, studio_slug: str = "inkwell") -> tuple[Any, str, dict[str, Any]]:
    studio = running.add_studio(studio_slug, name="Inkwell Tattoo")
    first = new_id()
    assert running.send(make_mail(message_id=first, subject="Tattoo Anfrage"), studio.address).code == 250
    running.process()
    api = running.api(studio.token)
    [item] = api.get("/api/v1/conversations").json()["items"]
    return studio, first, item


def reply(running: RunningGateway, token: str, conversation_id: int, text: str = "Hallo Lena,\n\nFreitag um 14 Uhr passt.") -> dict[str, Any]:
    answer = running.api(token).post(f"/api/v1/conversations/{conversation_id}/replies", json={"text": text})
    assert answer.status_code == 202, answer.text
    return answer.json()


@pytest.mark.parametrize("client", ["full_headers", "reply_address_only", "subject_only"])
def test_reply_reaches_the_guest_signed_and_threaded_and_the_answer_comes_back(
        tmp_path: Path, database_url: str, sink: RelaySink, dkim_key: tuple[Path, str], client: str) -> None:
    key_file, dns_record = dkim_key
    running = outbound_gateway(tmp_path, database_url, sink.url, dkim_selector=SELECTOR,
                               dkim_private_key_file=key_file)
    try:
        studio, first, conversation = inquiry(running)
        queued = reply(running, studio.token, conversation["id"])
        assert queued["direction"] == "outbound" and queued["delivery"] == "queued"
        assert send_due(running) == 1

        [mail] = sink.received
        assert mail.mail_from == f"inkwell@{MAIL_DOMAIN}" and mail.rcpt_tos == ["guest@example.org"]
        msg = mail.message
        assert msg["From"] == f"Inkwell Tattoo <inkwell@{MAIL_DOMAIN}>"
        assert getaddresses([msg["To"]])[0][1] == "guest@example.org"
        assert msg["Message-ID"] == f"<{queued['message_id']}>"
        assert msg["In-Reply-To"] == first and first in msg["References"]
        assert msg["Subject"] == "Re: Tattoo Anfrage" and msg["Date"]
        assert msg["Auto-Submitted"] is None  # a human reply is not automatic mail
        reply_to = getaddresses([msg["Reply-To"]])[0][1]
        address = parse_studio_address(reply_to, MAIL_DOMAIN)
        assert address and verify_reply_token(SECRET.encode(), studio.id, address.detail) == conversation["id"]
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        assert "Freitag um 14 Uhr passt." in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]

        def dns(name: bytes, timeout: int = 5) -> bytes:
            return dns_record.encode() if name == f"{SELECTOR}._domainkey.{MAIL_DOMAIN}.".encode() else b""

        assert dkim.verify(mail.data, dnsfunc=dns)
        detail = running.api(studio.token).get(f"/api/v1/conversations/{conversation['id']}").json()
        assert detail["messages"][-1]["delivery"] == "sent" and detail["messages"][-1]["sent_at"]

        if client == "full_headers":
            answer, rcpt = make_mail(subject="Re: Tattoo Anfrage", in_reply_to=msg["Message-ID"],
                                     references=[first, msg["Message-ID"]], to=reply_to, body="Super, danke!"), reply_to
        elif client == "reply_address_only":
            answer, rcpt = make_mail(subject="Noch eine Frage", to=reply_to, body="Super, danke!"), reply_to
        else:
            answer, rcpt = make_mail(subject="AW: Re: Tattoo Anfrage", body="Super, danke!"), studio.address
        assert running.send(answer, rcpt).code == 250
        running.process()
        detail = running.api(studio.token).get(f"/api/v1/conversations/{conversation['id']}").json()
        assert [m["direction"] for m in detail["messages"]] == ["inbound", "outbound", "inbound"]
        assert detail["messages"][-1]["text"] == "Super, danke!"
    finally:
        running.stop()


def test_relay_down_keeps_the_reply_queued_then_sends_it_exactly_once(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    running = outbound_gateway(tmp_path, database_url, f"smtp://127.0.0.1:{port}")
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        assert send_due(running) == 1  # tried: connection refused
        message = running.api(studio.token).get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][-1]
        assert message["delivery"] == "queued" and "unreachable" in message["delivery_error"]
        assert send_due(running) == 0  # backoff: not due yet
        with RelaySink(port=port) as relay:
            assert send_due(running, later=timedelta(hours=2)) == 1
            assert send_due(running, later=timedelta(hours=4)) == 0  # a restarted worker finds nothing to send
            assert len(relay.received) == 1
        message = running.api(studio.token).get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][-1]
        assert message["delivery"] == "sent" and message["delivery_error"] is None
        with read_tx(running.engine) as conn:
            assert conn.execute(select(OUTBOUND_JOB.c.attempts)).scalar_one() == 2
    finally:
        running.stop()


@pytest.mark.parametrize("answer, delivery, later, expected", [
    ("550 5.7.1 Relaying denied", "failed", timedelta(0), "550 5.7.1 Relaying denied"),
    ("451 4.3.0 Try again later", "queued", timedelta(0), "451 4.3.0 Try again later"),
    ("451 4.3.0 Try again later", "failed", timedelta(days=3), "gave up after 1 attempts"),
])
def test_relay_refusals(tmp_path: Path, database_url: str, sink: RelaySink, answer: str, delivery: str,
                        later: timedelta, expected: str) -> None:
    sink.answer = answer
    running = outbound_gateway(tmp_path, database_url, sink.url)
    try:
        studio, _, conversation = inquiry(running)
        reply(running, studio.token, conversation["id"])
        send_due(running, later=later)
        message = running.api(studio.token).get(f"/api/v1/conversations/{conversation['id']}").json()["messages"][-1]
        assert message["delivery"] == delivery and expected in message["delivery_error"]
        assert sink.received == []
    finally:
        running.stop()


def test_without_a_relay_mail_goes_to_a_maildir(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None)
    try:
        studio, _, conversation = inquiry(running)
        queued = reply(running, studio.token, conversation["id"])
        assert send_due(running) == 1
        files = list((running.settings.data_dir / "outbox-maildir" / "new").iterdir())
        assert len(files) == 1 and f"<{queued['message_id']}>".encode() in files[0].read_bytes()
    finally:
        running.stop()


def test_no_value_can_inject_a_header(tmp_path: Path, database_url: str, sink: RelaySink) -> None:
    running = outbound_gateway(tmp_path, database_url, sink.url)
    try:
        studio = running.add_studio("inkwell")
        # Encoded words that decode to CR LF inside the subject and the sender's name.
        raw = ("From: =?utf-8?q?Eve=0D=0ABcc=3A_x=40evil.example?= <guest@example.org>\r\n"
               f"To: {studio.address}\r\nSubject: =?utf-8?q?Termin=0D=0ABcc:_victim@example.net?=\r\n"
               f"Message-ID: {new_id()}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n\r\nHallo\r\n")
        assert running.send(raw, studio.address).code == 250
        running.process()
        with write_tx(running.engine) as conn:
            conn.execute(update(STUDIO).values(name="Ink\r\nBcc: studio-victim@example.net"))
            [conversation_id] = conn.execute(select(CONVERSATION.c.id)).scalars()
        reply(running, studio.token, conversation_id, text="Hallo\r\nBcc: not-a-header@example.net\r\n\r\nbis bald")
        assert send_due(running) == 1
        [mail] = sink.received
        head = mail.data.split(b"\r\n\r\n", 1)[0]
        assert b"\nBcc:" not in head and b"\r\nBcc" not in head.replace(b"\r\n ", b" ")
        assert mail.rcpt_tos == ["guest@example.org"]
        assert mail.message["Subject"].startswith("Re: Termin")
    finally:
        running.stop()


def test_reply_api_refuses_bad_input_and_other_studios(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None)
    try:
        studio, _, conversation = inquiry(running)
        other = running.add_studio("nadelwerk")
        path = f"/api/v1/conversations/{conversation['id']}/replies"
        assert running.api(other.token).post(path, json={"text": "hi"}).status_code == 404
        assert running.api(None).post(path, json={"text": "hi"}).status_code == 401
        for body in ({"text": ""}, {"text": "   \n "}, {"text": "a\x00b"}, {"nope": 1}, {"text": "x" * 100_001}):
            answer = running.api(studio.token).post(path, json=body)
            assert answer.status_code == 400 and answer.json()["detail"], body
        oversized = running.api(studio.token).post(path, content=b'{"text": "' + b"x" * 700_000 + b'"}',
                                                   headers={"Content-Type": "application/json"})
        assert oversized.status_code == 413 and oversized.json()["detail"]
        with read_tx(running.engine) as conn:
            assert conn.execute(select(OUTBOUND_JOB.c.id)).all() == []
    finally:
        running.stop()


def test_two_workers_on_postgres_send_each_of_200_replies_once(tmp_path: Path, pg_database_url: str,
                                                              sink: RelaySink) -> None:
    settings = make_settings(tmp_path, pg_database_url, smtp_relay_url=sink.url, outbound_connections=3)
    running = start_gateway(settings)
    try:
        studio, _, conversation = inquiry(running)
        with write_tx(running.engine) as conn:
            ids = [create_reply(conn, studio_id=studio.id, conversation_id=conversation["id"], text=f"Antwort {i}",
                                settings=settings).message_id for i in range(200)]  # type: ignore[union-attr]
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                while send_due(running):
                    pass
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors
        sent_ids = sorted(r.message["Message-ID"].strip("<>") for r in sink.received)
        assert sent_ids == sorted(ids)
        with read_tx(running.engine) as conn:
            assert set(conn.execute(select(OUTBOUND_JOB.c.status)).scalars()) == {"sent"}
    finally:
        running.stop()


def test_composed_mail_parses_back_exactly_with_non_ascii_and_long_values(tmp_path: Path, database_url: str,
                                                                         sink: RelaySink) -> None:
    from email import message_from_bytes, policy

    from gateway.inbound.mime import parse

    running = outbound_gateway(tmp_path, database_url, sink.url)
    try:
        studio = running.add_studio("inkwell", name="Nadelwerk Ünterwelt, Köln")
        subject = "Anfrage: großes Rückenmotiv mit Schriftzug „Für immer“ – wann hättet ihr Zeit für ein Gespräch?"
        assert running.send(make_mail(subject=subject, from_="Jürgen \"Jo\" Groß <guest@example.org>"),
                            studio.address).code == 250
        running.process()
        [item] = running.api(studio.token).get("/api/v1/conversations").json()["items"]
        text = "Hallo Jürgen,\n\n" + "gerne! Wir melden uns mit einem Termin. " * 30 + "\n\n=3D Gruß =?utf-8?q?x?="
        reply(running, studio.token, item["id"], text=text)
        assert send_due(running) == 1
        [mail] = sink.received
        assert all(len(line) <= 998 for line in mail.data.split(b"\r\n"))
        assert b"\n" not in mail.data.replace(b"\r\n", b"")
        msg = message_from_bytes(mail.data, policy=policy.default)
        assert msg.defects == [] and all(p.defects == [] for p in msg.walk())
        assert msg["Subject"] == "Re: " + subject
        assert msg["From"].addresses[0].display_name == "Nadelwerk Ünterwelt, Köln"
        assert msg["To"].addresses[0].display_name == 'Jürgen "Jo" Groß'
        plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert " ".join(text.split()) in " ".join(plain.split())  # QP round trip, "=3D" and "=?" kept literal
        parsed = parse(mail.data)
        assert parsed.parser == "flanker" and parsed.subject == "Re: " + subject
        assert parsed.text.startswith("Hallo Jürgen,") and parsed.html and "Jürgen" in parsed.html
    finally:
        running.stop()


def test_acknowledgement_of_new_inquiries_is_automatic_once_a_day_and_never_for_automatic_mail(
        tmp_path: Path, database_url: str, sink: RelaySink) -> None:
    running = outbound_gateway(tmp_path, database_url, sink.url)
    try:
        studio = running.add_studio("inkwell", name="Inkwell Tattoo")
        owner = running.api(studio.token)
        assert owner.get("/api/v1/studio").json()["acknowledge_inquiries"] is False
        running.send(make_mail(subject="Vorher", from_="Ann <ann@example.org>"), studio.address)
        running.process()
        assert send_due(running) == 0  # off by default

        changed = owner.patch("/api/v1/studio", json={"acknowledge_inquiries": True})
        assert changed.status_code == 200 and changed.json()["acknowledge_inquiries"] is True
        first = new_id()
        running.send(make_mail(subject="Anfrage Unterarm", message_id=first), studio.address)
        running.send(make_mail(subject="Noch eine Idee"), studio.address)  # same guest, same day
        running.send(make_mail(subject="Abwesend", from_="bot@example.net",
                               headers={"Auto-Submitted": "auto-replied"}), studio.address)
        running.send(make_mail(subject="Newsletter", from_="news@example.com",
                               headers={"List-Id": "<news.example.com>", "Precedence": "bulk"}), studio.address)
        running.process()
        assert send_due(running) == 1
        [ack] = sink.received
        msg = ack.message
        assert ack.rcpt_tos == ["guest@example.org"]
        assert msg["Auto-Submitted"] == "auto-replied" and msg["X-Auto-Response-Suppress"] == "All"
        # The studio's own subject and a generic greeting: nothing of the sender's is echoed.
        assert msg["In-Reply-To"] == first and msg["Subject"] == "Deine Anfrage bei Inkwell Tattoo"
        assert msg["To"] == "guest@example.org"
        plain = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert "anfrage" in plain.lower() and plain.startswith("Hallo,")
        assert "Lena" not in plain and "Unterarm" not in plain
        items = owner.get("/api/v1/conversations", params={"q": "Anfrage Unterarm"}).json()["items"]
        detail = owner.get(f"/api/v1/conversations/{items[0]['id']}").json()
        assert [m["automatic"] for m in detail["messages"]] == [False, True]
        assert detail["unread"] is True  # an automatic answer is not the studio reading it
    finally:
        running.stop()


def test_only_the_owner_changes_studio_settings(tmp_path: Path, database_url: str) -> None:
    from gateway.store.models import Profile
    from gateway.access.studios import create_token

    running = outbound_gateway(tmp_path, database_url, None)
    try:
        studio = running.add_studio("inkwell")
        with write_tx(running.engine) as conn:
            profile_id = conn.execute(Profile.__table__.insert().returning(Profile.__table__.c.id), {  # type: ignore[attr-defined]
                "studio_id": studio.id, "email": "artist@inkwell.example", "name": "Artist", "role": "member",
                "created_at": utcnow()}).scalar_one()
            member = create_token(conn, studio.id, profile_id)
        answer = running.api(member).patch("/api/v1/studio", json={"acknowledge_inquiries": True})
        assert answer.status_code == 403
        assert running.api(member).get("/api/v1/studio").json()["acknowledge_inquiries"] is False
    finally:
        running.stop()


def test_reply_with_attachments_reaches_the_guest_intact(tmp_path: Path, database_url: str, sink: RelaySink) -> None:
    import hashlib

    from gateway.inbound.mime import parse

    running = outbound_gateway(tmp_path, database_url, sink.url, max_attachment_size=50_000)
    try:
        studio, _, conversation = inquiry(running)
        sketch = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20
        pdf = b"%PDF-1.4\n" + b"\x00\xff" * 3000
        answer = running.api(studio.token).post(
            f"/api/v1/conversations/{conversation['id']}/replies/upload", data={"text": "Anbei der Entwurf."},
            files=[("files", ("Entwurf Rücken.png", sketch, "image/png")),
                   ("files", ("../../Preise \"2027\".pdf", pdf, "application/pdf; name=x"))])
        assert answer.status_code == 202, answer.text
        queued = answer.json()
        assert [(a["filename"], a["content_type"], a["size"]) for a in queued["attachments"]] == [
            ("Entwurf Rücken.png", "image/png", len(sketch)), ('Preise "2027".pdf', "application/pdf", len(pdf))]
        assert send_due(running) == 1
        [mail] = sink.received
        assert mail.message.get_content_type() == "multipart/mixed"
        parsed = parse(mail.data)
        assert parsed.text.startswith("Anbei der Entwurf.")
        assert [(a.filename, a.content_type, hashlib.sha256(a.data).hexdigest()) for a in parsed.attachments] == [
            ("Entwurf Rücken.png", "image/png", hashlib.sha256(sketch).hexdigest()),
            ("Preise _2027_.pdf", "application/pdf", hashlib.sha256(pdf).hexdigest())]
        too_big = running.api(studio.token).post(
            f"/api/v1/conversations/{conversation['id']}/replies/upload", data={"text": "zu groß"},
            files=[("files", ("big.bin", b"\x00" * (running.settings.max_attachment_size + 1), "application/octet-stream"))])
        assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
    finally:
        running.stop()


def test_replies_take_attachments_as_multipart_on_the_same_route(tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None, max_attachment_size=50_000)
    try:
        studio, _, conversation = inquiry(running)
        path = f"/api/v1/conversations/{conversation['id']}/replies"
        api = running.api(studio.token)
        sketch = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        answer = api.post(path, data={"text": "Anbei die Skizze."},
                          files=[("files", ("Skizze.png", sketch, "image/png"))])
        assert answer.status_code == 202, answer.text
        assert answer.json()["text"] == "Anbei die Skizze."
        assert [(a["filename"], a["size"]) for a in answer.json()["attachments"]] == [("Skizze.png", len(sketch))]
        plain = api.post(path, data={"text": "Ohne Anhang."}, files=[("other", ("x.txt", b"x", "text/plain"))])
        assert plain.status_code == 202 and plain.json()["attachments"] == []
        assert api.post(path, data={"nope": "x"}, files=[("files", ("a.txt", b"a", "text/plain"))]).status_code == 400
        too_big = api.post(path, data={"text": "zu groß"},
                           files=[("files", ("big.bin", b"\x00" * 50_001, "application/octet-stream"))])
        assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
        schema = running.api(None).get("/schema/openapi.json").json()
        body = schema["paths"]["/api/v1/conversations/{conversation_id}/replies"]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}
        assert body["multipart/form-data"]["schema"]["properties"]["files"]["items"]["format"] == "binary"
        detail = api.get(f"/api/v1/conversations/{conversation['id']}").json()
        assert [m["text"] for m in detail["messages"][1:]] == ["Anbei die Skizze.", "Ohne Anhang."]
    finally:
        running.stop()
