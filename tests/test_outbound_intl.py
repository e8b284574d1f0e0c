"""Guests the world over: non-ASCII addresses (RFC 6530-6532) answered end to end.

A guest writes over SMTPUTF8 from an address with umlauts; the studio's reply reaches that
address through a real relay (or the Maildir), DKIM-signed, and where the relay cannot carry
such an address the reply fails with a reason the messenger shows.
"""
from __future__ import annotations

from email import message_from_bytes, message_from_string, policy
from email.message import EmailMessage
from pathlib import Path

import dkim

from tests.conftest import MAIL_DOMAIN, RunningGateway
from tests.mail import new_id
from tests.relay_sink import RelaySink
from tests.test_outbound import SELECTOR, dkim_key, outbound_gateway, reply, send_due  # noqa: F401 (fixture)

JUERGEN = "jürgen.müller@example.de"


def _guest_writes(running: RunningGateway, sender: str, name: str = "Jürgen Müller") -> tuple[str, int]:
    """A first mail from `sender` over SMTPUTF8, as a German mail client sends it (RFC 6532
    headers in UTF-8); the studio's token and the conversation's id."""
    studio = running.add_studio("inkwell", name="Inkwell Tattoo")
    raw = (f"From: {name} <{sender}>\r\nTo: {studio.address}\r\nSubject: Termin\r\n"
           f"Message-ID: {new_id()}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\nHallo, habt ihr im Dezember Zeit?\r\n").encode()
    assert running.send(raw, studio.address, mail_from=sender).code == 250
    running.process()
    [item] = running.api(studio.token).get("/api/v1/conversations").json()["items"]
    return studio.token, item["id"]


def _utf8(data: bytes) -> EmailMessage:
    """An RFC 6532 message parsed as such: the stdlib's bytes parser reads headers as ASCII with
    surrogates, so the text is decoded first (a relay or a mailbox hands on the same bytes)."""
    return message_from_string(data.decode("utf-8"), policy=policy.SMTPUTF8)  # type: ignore[return-value]


def _last(running: RunningGateway, token: str, conversation_id: int) -> dict[str, object]:
    return running.api(token).get(f"/api/v1/conversations/{conversation_id}").json()["messages"][-1]


def test_a_guest_with_umlauts_in_the_address_gets_the_reply_signed_over_smtputf8(
        tmp_path: Path, database_url: str, dkim_key: tuple[Path, str]) -> None:  # noqa: F811
    key_file, dns_record = dkim_key
    with RelaySink() as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url, dkim_selector=SELECTOR,
                                   dkim_private_key_file=key_file)
        try:
            token, conversation_id = _guest_writes(running, JUERGEN)
            reply(running, token, conversation_id, text="Hallo Jürgen,\n\nja, am 12.")
            assert send_due(running) == 1
            assert _last(running, token, conversation_id)["delivery"] == "sent"
        finally:
            running.stop()
    [mail] = sink.received
    assert mail.rcpt_tos == [JUERGEN] and "SMTPUTF8" in mail.mail_options
    msg = _utf8(mail.data)
    assert msg["To"].addresses[0].addr_spec == JUERGEN
    assert msg["To"].addresses[0].display_name == "Jürgen Müller"
    assert "ja, am 12." in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return dns_record.encode() if name == f"{SELECTOR}._domainkey.{MAIL_DOMAIN}.".encode() else b""

    assert dkim.verify(mail.data, dnsfunc=dns)


def test_a_relay_without_smtputf8_fails_the_reply_permanently_with_a_reason_the_studio_sees(
        tmp_path: Path, database_url: str) -> None:
    with RelaySink(smtputf8=False) as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url)
        try:
            token, conversation_id = _guest_writes(running, JUERGEN)
            reply(running, token, conversation_id)
            assert send_due(running) == 1
            message = _last(running, token, conversation_id)
        finally:
            running.stop()
    assert sink.received == []
    assert message["delivery"] == "failed"
    assert "SMTPUTF8" in str(message["delivery_error"]) and "Unicode" not in str(message["delivery_error"])


def test_without_a_relay_the_reply_to_a_non_ascii_address_lands_in_the_maildir(
        tmp_path: Path, database_url: str) -> None:
    running = outbound_gateway(tmp_path, database_url, None)
    try:
        token, conversation_id = _guest_writes(running, JUERGEN)
        queued = reply(running, token, conversation_id)
        assert send_due(running) == 1
        assert _last(running, token, conversation_id)["delivery"] == "sent"
    finally:
        running.stop()
    [file] = list((running.settings.data_dir / "outbox-maildir" / "new").iterdir())
    msg = _utf8(file.read_bytes())
    assert msg["To"].addresses[0].addr_spec == JUERGEN and msg["Message-ID"] == f"<{queued['message_id']}>"


def test_an_international_domain_alone_is_sent_as_its_ascii_form_through_any_relay(
        tmp_path: Path, database_url: str) -> None:
    """Only the local part needs SMTPUTF8: a domain has an ASCII form (IDNA, RFC 5891), which
    every relay carries."""
    with RelaySink(smtputf8=False) as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url)
        try:
            token, conversation_id = _guest_writes(running, "lena@müller-tattoo.de", name="Lena")
            reply(running, token, conversation_id)
            assert send_due(running) == 1
            assert _last(running, token, conversation_id)["delivery"] == "sent"
        finally:
            running.stop()
    [mail] = sink.received
    assert mail.rcpt_tos == ["lena@xn--mller-tattoo-dlb.de"] and "SMTPUTF8" not in mail.mail_options
    assert mail.data.isascii()
    assert message_from_bytes(mail.data, policy=policy.default)["To"].addresses[0].addr_spec == \
        "lena@xn--mller-tattoo-dlb.de"


def test_dates_in_a_reply_are_in_the_studios_time_zone_set_through_the_api(
        tmp_path: Path, database_url: str) -> None:
    """Issue 13: "Am 05.12.2026 um 08:01 schrieb" was UTC; the studio is in Berlin, or wherever
    its owner says (PATCH /api/v1/studio {"time_zone": ...})."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    with RelaySink() as sink:
        running = outbound_gateway(tmp_path, database_url, sink.url)
        try:
            token, conversation_id = _guest_writes(running, "lena@example.org", name="Lena")
            owner = running.api(token)
            assert owner.get("/api/v1/studio").json()["time_zone"] == "Europe/Berlin"
            for bad in ("Mars/Olympus", "../../etc/passwd", "", "x" * 300):
                refused = owner.patch("/api/v1/studio", json={"time_zone": bad})
                assert refused.status_code == 400 and "time_zone" in refused.text, bad
            guest_mail = owner.get(f"/api/v1/conversations/{conversation_id}").json()["messages"][0]
            received = datetime.fromisoformat(guest_mail["received_at"].replace("Z", "+00:00"))

            reply(running, token, conversation_id, text="Gern!")
            assert send_due(running) == 1   # the default zone: Berlin
            changed = owner.patch("/api/v1/studio", json={"time_zone": "America/New_York"})
            assert changed.status_code == 200 and changed.json()["time_zone"] == "America/New_York"
            assert changed.json()["acknowledge_inquiries"] is False  # the other setting untouched
            reply(running, token, conversation_id, text="Noch etwas.")
            assert send_due(running) == 1
        finally:
            running.stop()
    for mail, zone in zip(sink.received, ("Europe/Berlin", "America/New_York")):
        local = received.astimezone(ZoneInfo(zone))
        msg = mail.message
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"Am {local:%d.%m.%Y} um {local:%H:%M} schrieb Lena:" in text, (zone, text)
        assert msg["Date"].datetime.utcoffset() == local.utcoffset()  # the studio's own offset
