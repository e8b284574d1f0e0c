"""gateway.inbound.quotes.split_reply: one test per client style, German and English."""
from __future__ import annotations

import pytest

from gateway.inbound.quotes import split_reply

NEW = "Donnerstag passt.\n\nLena"


@pytest.mark.parametrize("attribution", [
    # Gmail, English and German
    "On Mon, 1 Jan 2024 at 10:00, Studio Nadelwerk <hallo@nadelwerk.example> wrote:",
    "Am Mo., 1. Jan. 2024 um 10:00 Uhr schrieb Studio Nadelwerk <hallo@nadelwerk.example>:",
    # Apple Mail
    "On 1 Jan 2024, at 10:00, Studio Nadelwerk <hallo@nadelwerk.example> wrote:",
    "Am 01.01.2024 um 10:00 schrieb Studio Nadelwerk <hallo@nadelwerk.example>:",
    # Thunderbird
    "On 01.01.24 10:00, Studio Nadelwerk wrote:",
    "Am 01.01.24 um 10:00 schrieb Studio Nadelwerk:",
])
def test_attribution_lines(attribution: str) -> None:
    text = f"{NEW}\n\n{attribution}\n> Hallo Lena,\n> passt Donnerstag?\n"
    assert split_reply(text) == NEW


def test_gmail_attribution_wrapped_over_two_lines_en() -> None:
    text = (f"{NEW}\n\nOn Mon, 1 Jan 2024 at 10:00, Studio Nadelwerk <\n"
            "hallo@nadelwerk.example> wrote:\n\n> Hallo\n")
    assert split_reply(text) == NEW


def test_gmail_attribution_wrapped_over_two_lines_de() -> None:
    text = (f"{NEW}\n\nAm Mo., 1. Jan. 2024 um 10:00 Uhr schrieb Studio Nadelwerk <\n"
            "hallo@nadelwerk.example>:\n\n> Hallo\n")
    assert split_reply(text) == NEW


def test_outlook_original_message_en() -> None:
    text = f"{NEW}\n\n-----Original Message-----\nFrom: Studio\nSent: Monday\nHi\n"
    assert split_reply(text) == NEW


def test_outlook_original_message_de() -> None:
    text = f"{NEW}\n\n-----Ursprüngliche Nachricht-----\nVon: Studio\nGesendet: Montag\nHallo\n"
    assert split_reply(text) == NEW


def test_outlook_header_block_en() -> None:
    text = (f"{NEW}\n\n________________________________\n"
            "From: Studio Nadelwerk <hallo@nadelwerk.example>\n"
            "Sent: Monday, January 1, 2024 10:00 AM\n"
            "To: Lena <lena@example.com>\n"
            "Subject: Your appointment\n\nHi Lena\n")
    assert split_reply(text) == NEW


def test_outlook_header_block_de() -> None:
    text = (f"{NEW}\n\nVon: Studio Nadelwerk <hallo@nadelwerk.example>\n"
            "Gesendet: Montag, 1. Januar 2024 10:00\n"
            "An: Lena <lena@example.com>\n"
            "Betreff: Dein Termin\n\nHallo Lena\n")
    assert split_reply(text) == NEW


def test_trailing_quote_lines_without_attribution() -> None:
    assert split_reply(f"{NEW}\n\n> old text\n>\n> more old text\n") == NEW


def test_inline_quotes_in_the_middle_stay() -> None:
    text = "> Passt Donnerstag?\nJa, gerne.\n> Und die Größe?\n10 cm."
    assert split_reply(text) == text


def test_signature_rfc3676() -> None:
    assert split_reply(f"{NEW}\n-- \nLena Müller\nTel. 0170 1234567\n") == NEW


def test_signature_without_trailing_space() -> None:
    assert split_reply(f"{NEW}\n--\nLena Müller\n") == NEW


@pytest.mark.parametrize("footer", [
    "Sent from my iPhone",
    "Sent from my Galaxy",
    "Von meinem iPhone gesendet",
    "Gesendet von meinem Samsung Galaxy Smartphone.",
    "Get Outlook for Android",
    "Gesendet von Mail für Windows",
])
def test_mobile_footers(footer: str) -> None:
    text = f"{NEW}\n\n{footer}\n\n> On 1 Jan 2024, at 10:00, X <x@y> wrote:\n> hi\n"
    assert split_reply(text) == NEW


def test_whole_mail_is_a_quote_returns_original() -> None:
    text = "\n> On Mon, 1 Jan 2024 at 10:00, X <x@y> wrote:\n> Hallo\n\n"
    assert split_reply(text) == text.strip()


def test_top_posted_nothing_returns_original() -> None:
    text = "On Mon, 1 Jan 2024 at 10:00, X <x@y> wrote:\n> Hallo\n"
    assert split_reply(text) == text.strip()


def test_empty_and_whitespace() -> None:
    assert split_reply("") == ""
    assert split_reply(" \n\t\n") == ""


def test_plain_message_untouched_except_outer_whitespace() -> None:
    text = "\nHallo,\n\nich hätte gern einen Termin.\nOn second thought: Freitag.\n"
    assert split_reply(text) == text.strip()


def test_crlf_input() -> None:
    assert split_reply("Ja.\r\n\r\nOn 1 Jan 2024, at 10:00, X <x@y> wrote:\r\n> a\r\n") == "Ja."
