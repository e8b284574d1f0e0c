"""gateway.inbound.quotes.split_reply: one test per client style, German and English."""
from __future__ import annotations

import pytest

from gateway.inbound.quotes import new_text, split_reply

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


# ------------------------------------------------------- the languages tourists write (issue 13)

@pytest.mark.parametrize("attribution", [
    # French: Gmail, Thunderbird (U+00A0 before the colon, as French typography has it)
    "Le lun. 1 janv. 2024 à 10:00, Studio Nadelwerk <hallo@nadelwerk.example> a écrit :",
    "Le 01/01/2024 à 10:00, Studio Nadelwerk a écrit\u00a0:",
    # Italian: Gmail, Thunderbird
    "Il giorno lun 1 gen 2024 alle ore 10:00 Studio Nadelwerk <hallo@nadelwerk.example> ha scritto:",
    "Il 01/01/24 10:00, Studio Nadelwerk ha scritto:",
    # Spanish: Gmail, Thunderbird
    "El lun, 1 ene 2024 a las 10:00, Studio Nadelwerk (<hallo@nadelwerk.example>) escribió:",
    "El 01/01/24 a las 10:00, Studio Nadelwerk escribió:",
    # Dutch: Gmail, Apple Mail
    "Op ma 1 jan. 2024 om 10:00 schreef Studio Nadelwerk <hallo@nadelwerk.example>:",
    "Op 1 jan. 2024 om 10:00 heeft Studio Nadelwerk <hallo@nadelwerk.example> het volgende geschreven:",
    # Polish: Gmail, Thunderbird, Apple Mail
    "pon., 1 sty 2024 o 10:00 Studio Nadelwerk <hallo@nadelwerk.example> napisał(a):",
    "W dniu 01.01.2024 o 10:00, Studio Nadelwerk pisze:",
    "Wiadomość napisana przez Studio Nadelwerk <hallo@nadelwerk.example> w dniu 01.01.2024, o godz. 10:00:",
    # Russian: Gmail (no verb), Thunderbird, Apple Mail
    "пн, 1 янв. 2024 г. в 10:00, Studio Nadelwerk <hallo@nadelwerk.example>:",
    "01.01.2024 10:00, Studio Nadelwerk пишет:",
    "1 янв. 2024 г., в 10:00, Studio Nadelwerk <hallo@nadelwerk.example> написал(а):",
    # Turkish: Gmail, Thunderbird
    "Studio Nadelwerk <hallo@nadelwerk.example>, 1 Oca 2024 Pzt, 10:00 tarihinde şunu yazdı:",
    "01.01.2024 10:00 tarihinde Studio Nadelwerk yazdı:",
    # Portuguese: Gmail Brazil, Gmail Portugal
    "Em seg., 1 de jan. de 2024 às 10:00, Studio Nadelwerk <hallo@nadelwerk.example> escreveu:",
    "Studio Nadelwerk <hallo@nadelwerk.example> escreveu no dia segunda, 1/01/2024 à(s) 10:00:",
])
def test_attribution_lines_in_tourist_languages(attribution: str) -> None:
    text = f"{NEW}\n\n{attribution}\n> Hallo Lena,\n> passt Donnerstag?\n"
    assert split_reply(text) == NEW


def test_gmail_attribution_wrapped_over_two_lines_fr() -> None:
    text = (f"{NEW}\n\nLe lun. 1 janv. 2024 à 10:00, Studio Nadelwerk <\n"
            "hallo@nadelwerk.example> a écrit :\n\n> Bonjour\n")
    assert split_reply(text) == NEW


@pytest.mark.parametrize("block", [
    "De : Studio <hallo@nadelwerk.example>\nEnvoyé : lundi 1 janvier 2024 10:00\nÀ : Lena\nObjet : Rendez-vous",
    "Da: Studio <hallo@nadelwerk.example>\nInviato: lunedì 1 gennaio 2024 10:00\nA: Lena\nOggetto: Appuntamento",
    "De: Studio <hallo@nadelwerk.example>\nEnviado: lunes, 1 de enero de 2024 10:00\nPara: Lena\nAsunto: Cita",
    "Van: Studio <hallo@nadelwerk.example>\nVerzonden: maandag 1 januari 2024 10:00\nAan: Lena\nOnderwerp: Afspraak",
    "Od: Studio <hallo@nadelwerk.example>\nWysłano: poniedziałek, 1 stycznia 2024 10:00\nDo: Lena\nTemat: Termin",
    "От: Studio <hallo@nadelwerk.example>\nОтправлено: 1 января 2024 г. 10:00\nКому: Lena\nТема: Запись",
    "Kimden: Studio <hallo@nadelwerk.example>\nGönderildi: 1 Ocak 2024 Pazartesi 10:00\nKime: Lena\nKonu: Randevu",
    ("De: Studio <hallo@nadelwerk.example>\nEnviado: segunda-feira, 1 de janeiro de 2024 10:00\nPara: Lena\n"
     "Assunto: Marcação"),
])
def test_outlook_header_block_in_tourist_languages(block: str) -> None:
    text = f"{NEW}\n\n________________________________\n{block}\n\nHallo Lena\n"
    assert split_reply(text) == NEW


@pytest.mark.parametrize("separator", [
    "-----Message d'origine-----", "-----Messaggio originale-----", "-----Mensaje original-----",
    "-----Oorspronkelijk bericht-----", "-----Wiadomość oryginalna-----", "-----Исходное сообщение-----",
    "-----Özgün İleti-----", "-----Mensagem original-----",
])
def test_outlook_original_message_in_tourist_languages(separator: str) -> None:
    assert split_reply(f"{NEW}\n\n{separator}\nDe: Studio\nHallo\n") == NEW


@pytest.mark.parametrize("footer", [
    "Envoyé de mon iPhone", "Inviato da iPhone", "Inviato dal mio Samsung Galaxy", "Enviado desde mi iPhone",
    "Verstuurd vanaf mijn iPhone", "Wysłane z mojego iPhone'a", "Отправлено с iPhone", "Enviado do meu iPhone",
])
def test_mobile_footers_in_tourist_languages(footer: str) -> None:
    assert split_reply(f"{NEW}\n\n{footer}\n") == NEW


# ------------------------------------------------------------- bottom-posting (issue 13)

def test_bottom_posted_reply_is_the_text_below_the_quote() -> None:
    text = ("On Mon, 1 Jan 2024 at 10:00, Studio Nadelwerk <hallo@nadelwerk.example> wrote:\n"
            "> Hallo Lena,\n> passt Donnerstag?\n\n" + NEW + "\n")
    assert split_reply(text) == NEW


def test_bottom_posted_below_a_wrapped_attribution_and_above_a_signature() -> None:
    text = ("Am Mo., 1. Jan. 2024 um 10:00 Uhr schrieb Studio Nadelwerk <\n"
            "hallo@nadelwerk.example>:\n\n> Hallo Lena,\n>\n> passt Donnerstag?\n\n"
            + NEW + "\n-- \nLena Müller\nTel. 0170 1234567\n")
    assert split_reply(text) == NEW


def test_bottom_posted_without_attribution() -> None:
    assert split_reply("> passt Donnerstag?\n>\n\n" + NEW + "\n\nSent from my iPhone\n") == NEW


def test_inline_answers_below_a_top_quote_stay_whole() -> None:
    text = "Le 01/01/2024 à 10:00, Studio a écrit :\n> Jeudi ?\nOui.\n> Et la taille ?\n10 cm."
    assert split_reply(text) == text


def test_bottom_posted_nothing_returns_original() -> None:
    text = "Il 01/01/24 10:00, Studio Nadelwerk ha scritto:\n> Ciao\n>\n\n-- \nLena\n"
    assert split_reply(text) == text.strip()


# -------------------------------------------------- adversarial quote markers (issue 13)

def _max_size(unit: str, width: int) -> str:
    """Lines of `width` characters made of `unit`, each ending in ":" as an attribution
    does, filling the largest text a parsed mail can carry."""
    from gateway.inbound.mime import MAX_TEXT_CHARS

    line = (unit * (width // len(unit) + 1))[:width] + ":\n"
    return (line * (MAX_TEXT_CHARS // len(line) + 1))[:MAX_TEXT_CHARS]


@pytest.mark.parametrize("text", [
    pytest.param(_max_size(unit, width), id=f"{name}-{width}")
    for name, unit in [("on", "On 1 "), ("wrote", "On 1 wrote x "), ("am-schrieb", "Am 1 schrieb x "),
                       ("napisal", "1 napisał x "), ("tarihinde", "1 tarihinde x yazdı x "),
                       ("escreveu", "Em 1 escreveu x "), ("digits", "1 ")]
    for width in (398, 78)
] + [
    pytest.param("a" * 2_000_000, id="one-line"),
    pytest.param(":\n" * 1_000_000, id="colons"),
    pytest.param("From: a\nSent: b\n" * 125_000, id="header-lines"),
    pytest.param("> x\n" * 499_999 + "ok\n", id="top-quote"),
    pytest.param("> x\ny\n" * 333_333, id="inline-quotes"),
])
def test_quote_markers_cost_linear_time_at_max_size(text: str) -> None:
    """Every pattern runs on one bounded line (or three joined ones), so a mail of the
    largest size costs time linear in its length: about 2 s here at worst, and a
    quadratic pattern would take hours. The bound guards against that, not speed."""
    import time

    started = time.perf_counter()
    reply = split_reply(text)
    assert reply
    assert time.perf_counter() - started < 30


def test_new_text_is_empty_for_a_mail_of_nothing_but_quotes_where_split_reply_keeps_it_whole() -> None:
    only_quote = "Am 20.11.2026 um 10:00 schrieb Inkwell <inkwell@example.org>:\n> Neue Nachricht\n> von Lena\n"
    assert new_text(only_quote) == "" and new_text("  \n") == ""
    assert split_reply(only_quote) == only_quote.strip()
    answered = "Freitag passt.\n\n" + only_quote
    assert new_text(answered) == split_reply(answered) == "Freitag passt."
