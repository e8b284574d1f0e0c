"""The inquiry page's own words, German and English.

A small table until the messenger's gettext catalogs exist (gateway/web/templating.py, issue
16); then these move there. Error texts are keyed by the codes gateway/forms/answers.py gives.
"""
from __future__ import annotations

from typing import Any

LANGUAGES = ("de", "en")

TEXTS: dict[str, dict[str, str]] = {
    "de": {
        "title": "Anfrage an {studio}",
        "intro": "Schreib uns, was du dir wünschst. Wir antworten per E-Mail.",
        "required": "Pflichtfeld",
        "optional": "optional",
        "choose": "Bitte wählen",
        "yes": "Ja",
        "consent": "Ich bin einverstanden, dass {studio} meine Angaben speichert, um meine Anfrage zu beantworten.",
        "privacy": "Datenschutzerklärung",
        "submit": "Anfrage senden",
        "honeypot": "Dieses Feld bitte leer lassen",
        "fix": "Bitte prüfe die markierten Felder.",
        "thanks_title": "Danke!",
        "thanks": "Deine Anfrage ist bei {studio} angekommen. Die Antwort kommt per E-Mail.",
        "later_title": "Bitte später noch einmal versuchen",
        "later": "Gerade kommen zu viele Anfragen an. Bitte versuche es später noch einmal.",
        "not_found": "Dieses Formular gibt es nicht.",
        "too_large": "Die Dateien sind zusammen zu groß.",
        "err_required": "Bitte ausfüllen.",
        "err_too_long": "Höchstens {max} Zeichen.",
        "err_invalid_email": "Bitte eine gültige E-Mail-Adresse angeben.",
        "err_invalid_phone": "Bitte eine gültige Telefonnummer angeben.",
        "err_not_an_option": "Bitte eine der Möglichkeiten wählen.",
        "err_invalid_date": "Bitte ein gültiges Datum angeben.",
        "err_invalid_number": "Bitte eine Zahl angeben.",
        "err_out_of_range": "Bitte eine Zahl von {min} bis {max} angeben.",
        "err_too_many_files": "Höchstens {max} Dateien.",
        "err_file_too_large": "{name} ist zu groß (höchstens {max_mb} MB).",
        "err_not_an_image": "{name} ist kein Bild (JPEG, PNG, GIF, WebP, HEIC).",
        "err_consent": "Ohne dein Einverständnis können wir die Anfrage nicht annehmen.",
    },
    "en": {
        "title": "Inquiry to {studio}",
        "intro": "Tell us what you would like. We answer by email.",
        "required": "required",
        "optional": "optional",
        "choose": "Please choose",
        "yes": "Yes",
        "consent": "I agree that {studio} stores my answers to reply to my inquiry.",
        "privacy": "Privacy policy",
        "submit": "Send inquiry",
        "honeypot": "Please leave this field empty",
        "fix": "Please check the marked fields.",
        "thanks_title": "Thank you!",
        "thanks": "{studio} has received your inquiry. The answer comes by email.",
        "later_title": "Please try again later",
        "later": "Too many inquiries are arriving right now. Please try again later.",
        "not_found": "There is no such form.",
        "too_large": "The files are too large together.",
        "err_required": "Please fill this in.",
        "err_too_long": "At most {max} characters.",
        "err_invalid_email": "Please enter a valid email address.",
        "err_invalid_phone": "Please enter a valid phone number.",
        "err_not_an_option": "Please choose one of the options.",
        "err_invalid_date": "Please enter a valid date.",
        "err_invalid_number": "Please enter a number.",
        "err_out_of_range": "Please enter a number from {min} to {max}.",
        "err_too_many_files": "At most {max} files.",
        "err_file_too_large": "{name} is too large (at most {max_mb} MB).",
        "err_not_an_image": "{name} is not an image (JPEG, PNG, GIF, WebP, HEIC).",
        "err_consent": "Without your consent we cannot take the inquiry.",
    },
}


# The proof-of-work widget's own words (its `strings` attribute; English is its default).
ALTCHA_STRINGS: dict[str, dict[str, str]] = {
    "de": {"label": "Ich bin kein Roboter", "verifying": "Wird geprüft …", "verified": "Geprüft",
           "error": "Prüfung fehlgeschlagen. Bitte später erneut versuchen.", "expired": "Abgelaufen. Bitte erneut prüfen.",
           "waitAlert": "Wird geprüft … bitte einen Moment warten.", "ariaLinkLabel": "ALTCHA (neues Fenster)"},
    "en": {"label": "I'm not a robot", "verifying": "Verifying …", "verified": "Verified",
           "error": "Verification failed. Try again later.", "expired": "Expired. Please verify again.",
           "waitAlert": "Verifying … please wait.", "ariaLinkLabel": "ALTCHA (opens in a new window)"},
}


def say(language: str, key: str, **values: Any) -> str:
    return TEXTS[language][key].format(**values)


def error_text(language: str, code: str, params: dict[str, Any]) -> str:
    return say(language, f"err_{code}", **params)


def guest_language(accept_language: str, fallback: str) -> str:
    """German or English by the browser's Accept-Language (RFC 9110 12.5.4), highest q first;
    the studio's language when it names neither."""
    best: tuple[float, str] | None = None
    for index, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                continue
        lang = tag.strip().lower()[:2]
        if lang in LANGUAGES and quality > 0 and (best is None or quality > best[0]):
            best = (quality, lang)
    return best[1] if best else (fallback if fallback in LANGUAGES else "de")
