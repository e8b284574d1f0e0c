"""gateway.inbound.automatic.classify: one test per rule, and human mail stays human."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.inbound.automatic import AutoInfo, classify
from gateway.inbound.mime import Address, ParsedMessage, parse

FIXTURES = Path(__file__).parent / "fixtures" / "eml"


def message(*headers: tuple[str, str], subject: str = "Termin", sender: str = "lena@example.com",
            **fields: object) -> ParsedMessage:
    return ParsedMessage(from_=Address(email=sender, name=""), subject=subject,
                         headers=[("Subject", subject), *headers], **fields)  # type: ignore[arg-type]


def test_human_reply_is_not_automatic() -> None:
    msg = parse((FIXTURES / "gmail_reply_de.eml").read_bytes())
    assert classify(msg, "lena.mueller@gmail.com") == AutoInfo(False, None)


def test_human_mail_with_auto_submitted_no() -> None:
    assert classify(message(("Auto-Submitted", "no")), "lena@example.com") == AutoInfo(False, None)


@pytest.mark.parametrize("subject", [
    "Re: Out of office hours appointment?", "Automatisch gespeichert", "Autos und Tattoos",
    "Zahlung fehlgeschlagen?",
])
def test_human_subjects_that_look_similar(subject: str) -> None:
    assert classify(message(subject=subject), "lena@example.com").automatic is False


@pytest.mark.parametrize("value,kind", [
    ("auto-replied", "auto-reply"),
    ("auto-replied; owner-email=\"x@y\"", "auto-reply"),
    ("auto-generated", "auto-generated"),
    ("auto-notified", "auto-generated"),
])
def test_auto_submitted_rfc3834(value: str, kind: str) -> None:
    assert classify(message(("Auto-Submitted", value)), "lena@example.com") == AutoInfo(True, kind)


@pytest.mark.parametrize("header", ["X-Autoreply", "X-Autorespond"])
def test_x_autoreply_headers(header: str) -> None:
    assert classify(message((header, "yes")), "lena@example.com") == AutoInfo(True, "auto-reply")


@pytest.mark.parametrize("value,automatic", [
    ("All", True), ("DR, AutoReply", True), ("OOF", True), ("None", False), ("RN, NRN", False),
])
def test_x_auto_response_suppress(value: str, automatic: bool) -> None:
    info = classify(message(("X-Auto-Response-Suppress", value)), "lena@example.com")
    assert info.automatic is automatic
    assert info.kind == ("auto-generated" if automatic else None)


@pytest.mark.parametrize("value,kind", [
    ("bulk", "bulk"), ("junk", "bulk"), ("list", "list"), ("auto_reply", "auto-reply"),
    ("Bulk", "bulk"),
])
def test_precedence(value: str, kind: str) -> None:
    assert classify(message(("Precedence", value)), "lena@example.com") == AutoInfo(True, kind)


@pytest.mark.parametrize("header", [
    ("List-Id", "Tattoo Fans <fans.lists.example>"),
    ("List-Unsubscribe", "<mailto:leave@lists.example>"),
])
def test_list_headers(header: tuple[str, str]) -> None:
    assert classify(message(header), "lena@example.com") == AutoInfo(True, "list")


@pytest.mark.parametrize("mail_from", ["", "<>", "  <>  "])
def test_null_reverse_path(mail_from: str) -> None:
    assert classify(message(), mail_from) == AutoInfo(True, "auto-generated")


def test_dsn_multipart_report_is_bounce_with_ids() -> None:
    msg = parse((FIXTURES / "dsn_bounce.eml").read_bytes())
    assert classify(msg, "") == AutoInfo(True, "bounce", ("studio-5001@ink.example",))


def test_dsn_with_rfc822_original() -> None:
    msg = parse((FIXTURES / "dsn_bounce_rfc822.eml").read_bytes())
    assert classify(msg, "") == AutoInfo(True, "bounce", ("studio-6001@ink.example",))


@pytest.mark.parametrize("sender,subject", [
    ("MAILER-DAEMON@mx.example", "Undelivered Mail Returned to Sender"),
    ("postmaster@mail.example", "Delivery Status Notification (Failure)"),
    ("mailer-daemon@googlemail.com", "Mail delivery failed: returning message to sender"),
    ("postmaster@gmx.example", "Unzustellbar: Dein Termin"),
    ("MAILER-DAEMON@web.example", "Nicht zustellbar: Dein Termin"),
])
def test_daemon_sender_with_failure_subject(sender: str, subject: str) -> None:
    info = classify(message(subject=subject, sender=sender), "bounce@relay.example")
    assert info == AutoInfo(True, "bounce")


def test_postmaster_without_failure_subject_is_human() -> None:
    info = classify(message(subject="Frage zu eurer Domain", sender="postmaster@example.org"),
                    "postmaster@example.org")
    assert info == AutoInfo(False, None)


def test_null_path_with_failure_subject_is_bounce() -> None:
    info = classify(message(subject="Undeliverable: Dein Termin", sender="x@exchange.example"), "<>")
    assert info.kind == "bounce"


@pytest.mark.parametrize("subject", [
    "Abwesenheitsnotiz: Dein Termin",
    "Automatische Antwort: Dein Termin",
    "Out of Office: Your booking",
    "Out of Office AutoReply: Your booking",
    "Autoreply: Your booking",
    "Auto-Reply: Your booking",
    "Automatic reply: Your booking",
    "Abwesend: Dein Termin",
    "Auto: Dein Termin",
    "RE: Automatic reply: Your booking",
    "AW: Abwesenheitsnotiz",
    "aw: re: AUTOMATISCHE ANTWORT: Termin",
    "Out of office",
])
def test_out_of_office_subjects(subject: str) -> None:
    assert classify(message(subject=subject), "petra@firma.example") == AutoInfo(True, "auto-reply")


def test_out_of_office_fixture() -> None:
    msg = parse((FIXTURES / "out_of_office_de.eml").read_bytes())
    assert classify(msg, "petra.schmidt@firma.example") == AutoInfo(True, "auto-reply")


def test_message_without_from() -> None:
    assert classify(ParsedMessage(from_=None), "x@y.example") == AutoInfo(False, None)
