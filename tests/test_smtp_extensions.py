"""SMTP extensions over a real socket (issue 13): PIPELINING is offered, and a non-ASCII
address is taken only inside an SMTPUTF8 transaction (RFC 6531)."""
from __future__ import annotations

from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import INBOUND
from tests.conftest import RunningGateway
from tests.mail import make_mail
from tests.test_hostile_smtp import RawSession


def _stored_senders(gw: RunningGateway) -> list[str]:
    with read_tx(gw.engine) as conn:
        return list(conn.execute(select(INBOUND.c.mail_from).order_by(INBOUND.c.id)).scalars())


def test_pipelining_and_smtputf8_are_advertised(gw: RunningGateway) -> None:
    with gw.smtp() as client:
        client.ehlo()
        assert client.has_extn("pipelining")      # RFC 2920: Postfix pipelines only when offered
        assert client.has_extn("smtputf8")


def test_non_ascii_sender_without_smtputf8_is_refused_553_5_6_7(gw: RunningGateway) -> None:
    gw.add_studio("inkwell")
    session = RawSession(gw.smtp_port)
    try:
        session.write(b"EHLO client.example\r\n")
        assert session.reply()[0] == 250
        session.write("MAIL FROM:<jürgen.müller@example.de>\r\n".encode())
        code, text = session.reply()
        assert (code, text[:5]) == (553, b"5.6.7")
        # the session goes on, and the same sender with the parameter is taken
        session.write("MAIL FROM:<jürgen.müller@example.de> SMTPUTF8\r\n".encode())
        assert session.reply()[0] == 250
        session.write(b"RCPT TO:<inkwell@mail.test>\r\nDATA\r\n")
        assert [session.reply()[0] for _ in range(2)] == [250, 354]
        session.write(make_mail() + b".\r\n")
        assert session.reply()[0] == 250
    finally:
        session.close()
    assert _stored_senders(gw) == ["jürgen.müller@example.de"]


def test_non_ascii_recipient_without_smtputf8_is_refused_553_5_6_7(gw: RunningGateway) -> None:
    gw.add_studio("inkwell")
    session = RawSession(gw.smtp_port)
    try:
        session.write(b"EHLO client.example\r\nMAIL FROM:<guest@example.org>\r\n")
        assert [session.reply()[0] for _ in range(2)] == [250, 250]
        session.write("RCPT TO:<inkwëll@mail.test>\r\n".encode())
        code, text = session.reply()
        assert (code, text[:5]) == (553, b"5.6.7")
        session.write(b"RCPT TO:<inkwell@mail.test>\r\n")
        assert session.reply()[0] == 250
    finally:
        session.close()


def test_smtputf8_sender_over_smtplib_is_accepted(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    reply = gw.send(make_mail(), studio.address, mail_from="jürgen.müller@example.de")  # adds SMTPUTF8
    assert reply.code == 250
    assert _stored_senders(gw) == ["jürgen.müller@example.de"]
