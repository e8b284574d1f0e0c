"""Handing mail to the relay: the envelope as RFC 5321/6531 want it, over a real SMTP server."""
from __future__ import annotations

import asyncio

from gateway.outbound.compose import OutgoingMail
from gateway.outbound.relay import RelayConnection, RelayUrl, SendResult
from tests.relay_sink import RelaySink

MESSAGE = (b"From: Inkwell <inkwell@mail.test>\r\nTo: guest\r\nSubject: Hallo\r\n\r\n"
           b"Zeile eins\r\n.Zeile mit Punkt\r\n")


def _send(sink: RelaySink, *mails: OutgoingMail) -> list[SendResult]:
    async def run() -> list[SendResult]:
        relay = RelayConnection(RelayUrl.parse(sink.url), 10, "gateway.test")
        try:
            return [await relay.send(mail) for mail in mails]
        finally:
            await relay.close()
    return asyncio.run(run())


def test_the_envelope_declares_size_and_the_body_arrives_dot_stuffed_intact() -> None:
    with RelaySink() as sink:
        [result] = _send(sink, OutgoingMail("inkwell@mail.test", ["guest@example.org"], MESSAGE))
    assert result.kind == "sent"
    [got] = sink.received
    assert got.mail_from == "inkwell@mail.test" and got.rcpt_tos == ["guest@example.org"]
    assert f"SIZE={len(MESSAGE)}" in got.mail_options and "SMTPUTF8" not in got.mail_options
    assert got.data == MESSAGE  # a line starting with "." survives the transfer


def test_a_non_ascii_address_asks_for_smtputf8_or_fails_permanently_without_it() -> None:
    mail = OutgoingMail("inkwell@mail.test", ["jörg@beispiel.de"], MESSAGE)
    with RelaySink() as sink:
        [result] = _send(sink, mail)
    assert result.kind == "sent"
    assert sink.received[0].rcpt_tos == ["jörg@beispiel.de"] and "SMTPUTF8" in sink.received[0].mail_options
    with RelaySink(smtputf8=False) as plain:
        [refused, after] = _send(plain, mail, OutgoingMail("inkwell@mail.test", ["guest@example.org"], MESSAGE))
    assert refused.kind == "permanent" and "SMTPUTF8" in refused.detail
    assert after.kind == "sent" and [r.rcpt_tos for r in plain.received] == [["guest@example.org"]]


def test_an_address_cannot_smuggle_a_command_onto_the_envelope() -> None:
    with RelaySink() as sink:
        [result] = _send(sink, OutgoingMail("inkwell@mail.test", ["guest@example.org\r\nRCPT TO:<spy@evil.test>"],
                                            MESSAGE))
    assert result.kind == "sent"
    assert [r.rcpt_tos for r in sink.received] == [["guest@example.org"]]


def test_the_maildir_is_taken_as_another_worker_process_left_it_half_made(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`gateway serve`'s two worker processes make the Maildir at once: the one that finds the
    folder already made (its tmp/new/cur not yet) still starts, and its mail lands."""
    from gateway.outbound.relay import MaildirTransport

    box = tmp_path / "outbox-maildir"
    box.mkdir()   # the other process got this far
    first = MaildirTransport(box)
    second = MaildirTransport(box)   # and a second start over a complete one
    result = asyncio.run(first.send(OutgoingMail("inkwell@mail.test", ["guest@example.org"], MESSAGE)))
    assert result.kind == "sent", result
    assert len(list((box / "new").iterdir())) == 1
    assert asyncio.run(second.send(OutgoingMail("inkwell@mail.test", ["guest@example.org"], MESSAGE))).kind == "sent"
