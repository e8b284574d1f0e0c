"""The pages speak German and English completely: every text in templates/web/ and gateway/web/
has a translation in both catalogs, and the language follows the profile, else Accept-Language."""
from __future__ import annotations

from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from gateway.web.templating import LANGUAGES, negotiate, render

ROOT = Path(__file__).resolve().parent.parent
METHODS = [("templates/web/**.html", "jinja2"), ("gateway/web/**.py", "python")]
OPTIONS = {"templates/web/**.html": {"extensions": "jinja2.ext.i18n"}}


def texts_in_use() -> set[str]:
    return {message for _, _, message, _, _ in extract_from_dir(str(ROOT), METHODS, OPTIONS)
            if isinstance(message, str)}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_has_a_translation(language: str) -> None:
    path = ROOT / "gateway" / "web" / "locale" / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as source:
        catalog = read_po(source, locale=language)
    translated = {m.id for m in catalog if m.id and m.string and not m.fuzzy}
    used = texts_in_use()
    assert used, "no texts found: the extraction itself is broken"
    assert used - translated == set(), f"texts without a {language} translation (docs/operations.md)"


def test_the_language_is_the_profiles_else_the_browsers_else_german() -> None:
    assert negotiate("en-US,en;q=0.9", "de") == "de"
    assert negotiate("fr-FR, en;q=0.8, de;q=0.5") == "en"
    assert negotiate("de;q=0, en;q=0.1") == "en"
    assert negotiate("fr, it") == negotiate("") == "de"
    assert "Posteingang" in render("error.html", "de", status=404, code="")
    assert "To the inbox" in render("error.html", "en", status=404, code="")
