"""The reason an owner gives for deleting their account, with personal data taken out.

The FAQ asks for a short reason with a LÖSCHEN mail, and we want to learn from it; but it is
kept after the account is gone (account_deletion.reason), so it must not identify anyone. By
rules, best effort:

1. only what the owner wrote now: quoted history, signatures and mobile footers are cut
   (gateway/inbound/quotes.split_reply, the rule the messenger uses), and so are inline quotes;
2. the closing: from the first line made of a closing formula and names ("Viele Grüße",
   "LG Tom", "Best regards,") on, because a name, a role or an address follows it;
3. email addresses, URLs and bare domains, and any run of five or more digits (phone numbers,
   postcodes, IBANs, customer numbers) become "[…]";
4. white space folded to single spaces, and at most MAX_REASON characters.

A name typed into the middle of a sentence cannot be told from other words by rules; the cap
keeps what could slip through short.
"""
from __future__ import annotations

import re
import unicodedata

from gateway.inbound.quotes import split_reply

MAX_REASON = 500
REDACTED = "[…]"

# A closing line is made only of these words and names ("Viele Grüße aus Berlin", "LG Tom",
# "Danke und viele Grüße", "Best, Jane"); "Danke für alles, wir hören auf" is a reason.
_CLOSING_WORDS = frozenset("""
    viele liebe beste herzliche freundliche sonnige schöne mit freundlichen grüße grüsse grüßen grüssen gruß
    gruss lg vg mfg bg ciao tschüss danke dank schön und euer eure dein deine aus best kind warm many regards
    wishes cheers sincerely yours thanks thank you and your from""".split())
_CLOSING_OPENERS = _CLOSING_WORDS - {"und", "and", "aus", "from", "you", "your", "euer", "eure", "dein",
                                     "deine", "schön", "dank"}
_MAX_CLOSING_WORDS = 6
_EMAIL = re.compile(r"[^\s<>()\[\]@,;:\"']+@[^\s<>()\[\]@,;:\"']+", re.IGNORECASE)
_URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)\S+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:de|com|net|org|at|ch|eu|io|info|app)\b\S*",
                  re.IGNORECASE)
# A run of digits with the separators phone numbers and IBANs are written with.
_NUMBER = re.compile(r"\+?\d[\d \t()/.\-]*\d")
_MIN_DIGITS = 5
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_reason(text: str) -> str:
    """The reason as it may be kept: see the module docstring for what is taken out."""
    text = unicodedata.normalize("NFC", _CONTROL.sub(" ", text or ""))
    kept: list[str] = []
    for line in split_reply(text).split("\n"):
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        if _is_closing(stripped):
            break
        kept.append(stripped)
    reason = " ".join(" ".join(kept).split())
    reason = _EMAIL.sub(REDACTED, reason)
    reason = _URL.sub(REDACTED, reason)
    reason = _NUMBER.sub(_redact_long_number, reason)
    if len(reason) > MAX_REASON:
        reason = reason[:MAX_REASON - 1].rstrip() + "…"
    return reason


def _is_closing(line: str) -> bool:
    words = re.findall(r"[^\W\d_]+", line)
    if not words or len(words) > _MAX_CLOSING_WORDS or words[0].lower() not in _CLOSING_OPENERS:
        return False
    return all(w.lower() in _CLOSING_WORDS or w[0].isupper() for w in words)


def _redact_long_number(match: re.Match[str]) -> str:
    digits = sum(c.isdigit() for c in match.group(0))
    return REDACTED if digits >= _MIN_DIGITS else match.group(0)
