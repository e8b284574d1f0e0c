"""gateway.lifecycle.deletion_reason: the reason kept after an account is gone holds no personal data."""
from __future__ import annotations

import pytest

from gateway.lifecycle.deletion_reason import MAX_REASON, clean_reason

OWNER_MAIL = """Hallo Helpdesk,

wir schließen das Studio, seit 2019 war es schön. Erreichbar unter +49 (0)30 123 456 78,
anna.schmidt@inkwell.example oder https://inkwell.example/kontakt und www.inkwell.de.
IBAN DE89 3704 0044 0532 0130 00.

Viele Grüße
Anna Schmidt
Inkwell Tattoo · Hauptstraße 5 · 10115 Berlin

Am 20.11.2026 um 10:00 schrieb Helpdesk <helpdesk@mail.test>:
> Wie können wir helfen?
"""


def test_addresses_numbers_links_closing_and_quote_are_taken_out() -> None:
    reason = clean_reason(OWNER_MAIL)
    assert reason == ("Hallo Helpdesk, wir schließen das Studio, seit 2019 war es schön. Erreichbar unter […], "
                      "[…] oder […] und […] IBAN DE[…].")
    for personal in ("Anna", "Schmidt", "Hauptstraße", "10115", "@", "inkwell.", "123", "0532", "Wie können"):
        assert personal not in reason


@pytest.mark.parametrize("text, expected", [
    ("Zu teuer.\n-- \nAnna\n0170 1234567", "Zu teuer."),                      # RFC 3676 signature
    ("Passt nicht mehr.\n\nLG Tom", "Passt nicht mehr."),
    ("Too expensive.\n\nBest regards,\nJane Doe\nCEO", "Too expensive."),
    ("Danke für alles, wir hören auf", "Danke für alles, wir hören auf"),     # a long line is no closing
    ("LÖSCHEN", "LÖSCHEN"),
    ("", ""),
    ("> only a quote", ""),
    ("Filiale 12, seit 2019", "Filiale 12, seit 2019"),                         # short numbers stay
    ("Danke!\nTom", ""),
    ("Viele Grüße aus Berlin\nAnna", ""),
    ("Mit freundlichen Grüßen\nAnna Schmidt", ""),
    ("Mit dem Studio hören wir auf.", "Mit dem Studio hören wir auf."),
    ("Ruf an: 0170-98 76 54", "Ruf an: […]"),
])
def test_each_rule(text: str, expected: str) -> None:
    assert clean_reason(text) == expected


def test_length_is_capped() -> None:
    reason = clean_reason("sehr " * 500)
    assert len(reason) == MAX_REASON and reason.endswith("…")
