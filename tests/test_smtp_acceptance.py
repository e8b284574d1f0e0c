"""What the SMTP server answers, and that `250` means the message is durably stored."""
from __future__ import annotations

import smtplib
import socket

from sqlalchemy import select

from gateway.store.tables import BLOB
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND, MESSAGE
from tests.conftest import MAIL_DOMAIN, RunningGateway, send_on
from tests.mail import make_mail, new_id


def test_new_inquiry_is_stored_raw_before_250_and_becomes_a_conversation(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = make_mail(to=studio.address)
    reply = gw.send(raw, studio.address)
    assert reply.code == 250 and reply.text.startswith("2.0.0")
    assert reply.inbound_id is not None
    with read_tx(gw.engine) as conn:  # stored before any processing happened
        row = conn.execute(select(INBOUND, BLOB.c.data).join(BLOB, BLOB.c.sha256 == INBOUND.c.raw_sha256)
                           .where(INBOUND.c.id == reply.inbound_id)).one()
    assert row.status == "pending" and row.data == raw and row.mail_from == "guest@example.org"

    results = gw.process()
    assert [r.status for r in results] == ["done"]
    items = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
    assert len(items) == 1
    assert items[0]["subject"] == "Tattoo Anfrage"
    guest = items[0]["guest"]
    assert isinstance(guest.pop("id"), int) and guest == {"email": "guest@example.org", "name": "Lena Müller"}
    assert items[0]["message_count"] == 1 and items[0]["status"] == "open"


def test_unknown_recipient_and_foreign_domain_get_550_5_1_1(gw: RunningGateway) -> None:
    gw.add_studio("inkwell")
    assert gw.send(make_mail(), f"nobody@{MAIL_DOMAIN}").code == 550
    reply = gw.send(make_mail(), "inkwell@other.example")
    assert reply.code == 550 and reply.text.startswith("5.1.1")


def test_plus_address_reaches_the_studio(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    assert gw.send(make_mail(), f"inkwell+instagram@{MAIL_DOMAIN}").code == 250
    assert len(gw.process()) == 1
    assert len(gw.api(studio.token).get("/api/v1/conversations").json()["items"]) == 1


def test_one_message_for_two_studios_opens_a_conversation_in_each(gw: RunningGateway) -> None:
    a, b = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    raw = make_mail(to=f"{a.address}, {b.address}")
    assert gw.send(raw, [a.address, b.address, f"nobody@{MAIL_DOMAIN}"]).code == 250
    gw.process()
    for studio in (a, b):
        items = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
        assert [i["subject"] for i in items] == ["Tattoo Anfrage"]


def test_recipient_cap_answers_452_4_5_3(gw: RunningGateway) -> None:
    gw.add_studio("inkwell")
    with gw.smtp() as client:
        client.ehlo()
        client.mail("guest@example.org")
        codes = [client.rcpt(f"inkwell+{i}@{MAIL_DOMAIN}")[0] for i in range(101)]
        assert codes[:100] == [250] * 100
        code, msg = client.rcpt(f"inkwell+x@{MAIL_DOMAIN}")
    assert codes[100] == 452 and code == 452 and msg.startswith(b"4.5.3")


def test_size_is_advertised_and_enforced_with_552(tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, start_gateway

    running = start_gateway(make_settings(tmp_path, database_url, smtp_max_message_size=100_000))
    try:
        studio = running.add_studio("inkwell")
        with running.smtp() as client:
            client.ehlo()
            assert client.has_extn("size") and client.esmtp_features["size"] == "100000"
            assert client.has_extn("8bitmime") and client.has_extn("smtputf8")
            big = make_mail(body="x" * 200 + "\n" + ("y" * 70 + "\n") * 2000)
            reply = send_on(client, big, studio.address)
            assert reply.code == 552
            assert send_on(client, make_mail(), studio.address).code == 250  # session still usable
        with read_tx(running.engine) as conn:
            assert len(conn.execute(select(INBOUND.c.id)).all()) == 1
    finally:
        running.stop()


def test_utf8_sender_and_8bit_body_are_kept_byte_for_byte(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = ("From: Jörg <jörg@bücher.example>\r\nTo: inkwell@mail.test\r\nSubject: Größe\r\n"
           "Message-ID: <8bit@bücher.example>\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\nÄrmel, Öl, Übermaß\r\n").encode()
    reply = gw.send(raw, studio.address, mail_from="jörg@bücher.example")
    assert reply.code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(BLOB.c.data).join(INBOUND, INBOUND.c.raw_sha256 == BLOB.c.sha256)).scalar() == raw
        message = conn.execute(select(MESSAGE)).one()
    assert message.subject == "Größe" and "Übermaß" in message.text


def test_same_delivery_twice_is_stored_once_and_answered_250_both_times(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = make_mail(message_id=new_id())
    first, second = gw.send(raw, studio.address), gw.send(raw, studio.address)
    assert first.code == second.code == 250
    results = gw.process()
    assert [o.rule for r in results for o in r.outcomes] == ["new", "duplicate"]
    with read_tx(gw.engine) as conn:
        assert len(conn.execute(select(MESSAGE.c.id)).all()) == 1


def test_reused_message_id_with_other_content_is_still_stored(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mid = new_id()
    gw.send(make_mail(message_id=mid, body="Erste Nachricht"), studio.address)
    gw.send(make_mail(message_id=mid, body="Ganz andere Nachricht", subject="Anderes Thema"), studio.address)
    gw.process()
    with read_tx(gw.engine) as conn:
        texts = sorted(r.text.strip() for r in conn.execute(select(MESSAGE.c.text)))
    assert texts == ["Erste Nachricht", "Ganz andere Nachricht"]


def test_mail_without_message_id_gets_a_stable_synthesised_one(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = make_mail(message_id="")
    assert b"Message-ID" not in raw
    gw.send(raw, studio.address)
    gw.send(raw, studio.address)
    gw.process()
    with read_tx(gw.engine) as conn:
        ids = [r.message_id for r in conn.execute(select(MESSAGE.c.message_id))]
    assert len(ids) == 1 and ids[0].startswith("synth.") and ids[0].endswith("@" + MAIL_DOMAIN)


def test_many_messages_on_one_connection(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    with gw.smtp() as client:
        replies = [send_on(client, make_mail(subject=f"Anfrage {i}", from_=f"g{i}@example.org"), studio.address)
                   for i in range(30)]
    assert {r.code for r in replies} == {250}
    assert len({r.inbound_id for r in replies}) == 30
    assert len(gw.process()) == 30


def test_smuggled_end_of_data_is_not_read_as_a_second_message(gw: RunningGateway) -> None:
    """SMTP smuggling: a bare-LF `.` must not end DATA, so the hidden MAIL is only text."""
    studio = gw.add_studio("inkwell")
    hidden = (b"\n.\r\nMAIL FROM:<admin@bank.example>\r\nRCPT TO:<inkwell@mail.test>\r\nDATA\r\n"
              b"From: admin@bank.example\r\nSubject: smuggled\r\n\r\nsmuggled\r\n\r\n.\n"
              b"\r\n")
    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as sock:
        stream = sock.makefile("rwb")
        assert stream.readline().startswith(b"220")
        for command in (b"EHLO test\r\n", b"MAIL FROM:<guest@example.org>\r\n",
                        b"RCPT TO:<inkwell@mail.test>\r\n", b"DATA\r\n"):
            stream.write(command)
            stream.flush()
            while (line := stream.readline())[3:4] == b"-":
                pass
        assert line.startswith(b"354")
        stream.write(b"Subject: real\r\n\r\nbody" + hidden + b"tail\r\n.\r\n")
        stream.flush()
        assert stream.readline().startswith(b"250")
        stream.write(b"QUIT\r\n")
        stream.flush()
        assert stream.readline().startswith(b"221")
    with read_tx(gw.engine) as conn:
        assert len(conn.execute(select(INBOUND.c.id)).all()) == 1
    gw.process()
    items = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
    assert [i["subject"] for i in items] == ["real"]


def test_connection_cap_answers_421(tmp_path, database_url) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_settings, start_gateway

    running = start_gateway(make_settings(tmp_path, database_url, smtp_max_connections=2))
    try:
        first, second = running.smtp(), running.smtp()
        with socket.create_connection(("127.0.0.1", running.smtp_port), timeout=30) as third:
            assert third.makefile("rb").readline().startswith(b"421 4.7.0")
        first.quit()
        with running.smtp() as again:  # a freed slot is usable at once
            assert again.noop()[0] == 250
        second.quit()
    finally:
        running.stop()


def test_noop_flood_is_cut_off(gw: RunningGateway) -> None:
    with gw.smtp() as client:
        codes = [client.noop()[0] for _ in range(31)]  # GATEWAY_SMTP_MAX_COMMANDS_WITHOUT_PROGRESS=30
        assert codes[:30] == [250] * 30 and codes[30] == 421
        try:
            client.noop()
        except smtplib.SMTPServerDisconnected:
            pass


def test_flood_check_reads_the_sender_from_any_from_header_form() -> None:
    from gateway.inbound.headers import peek

    cases = {
        b"From: Lena <Lena@Example.org>": "lena@example.org",
        b"From: lena@example.org": "lena@example.org",
        b'From: "M\xc3\xbcller, Lena" <lena@example.org>': "lena@example.org",
        b"From: lena@example.org (Lena)": "lena@example.org",
        b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>": "joerg@example.org",
    }
    for header, email in cases.items():
        assert peek(header + b"\r\nSubject: x\r\n\r\nbody").from_email == email, header
