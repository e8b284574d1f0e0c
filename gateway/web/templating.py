"""The pages' Jinja2 environment (templates/web/), in German and English through gettext.

Texts live in gettext catalogs (gateway/web/locale/<lang>/LC_MESSAGES/messages.po), extracted
with Babel's Jinja2 extractor (`make web-messages`, see docs/operations.md) and used through
Jinja2's i18n extension (`{% trans %}`, `_()`). The .po files are the source; they are compiled
in memory with Babel when the process first renders a page (a few milliseconds for our few
hundred strings), so no generated .mo file is committed or can go stale beside its .po.

The language is the profile's choice (profile.locale) when signed in and set, else the best
match in the browser's Accept-Language, else German (the studios are in Germany).
"""
from __future__ import annotations

import gettext
import io
from datetime import date, datetime, time, timezone
from functools import cache, lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2
from babel import Locale
from babel.dates import DateTimePattern, get_date_format, get_datetime_format, get_time_format
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from gateway.outbound.dates import zone

LANGUAGES = ("de", "en")
DEFAULT_LANGUAGE = "de"
_LOCALE_DIR = Path(__file__).resolve().parent / "locale"


def _template_root() -> Traversable:
    """The folder holding web/: from a wheel (gateway/templates/, a namespace package) or from a
    source checkout, where an editable install cannot resolve it (see gateway/outbound/render.py)."""
    try:
        return resources.files("gateway.templates")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "templates"


def negotiate(accept_language: str, choice: str | None = None) -> str:
    """The page language: `choice` (the profile's) when we have it, else the Accept-Language
    entry with the highest q we have (RFC 9110 §12.5.4), else DEFAULT_LANGUAGE."""
    if choice in LANGUAGES:
        return choice  # type: ignore[return-value]
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        language = tag.strip().lower().split("-", 1)[0]
        if language in LANGUAGES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The compiled catalog of one language (compiled from its .po once per process)."""
    po = _LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
    with po.open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def _loader() -> jinja2.BaseLoader:
    root = _template_root() / "web"
    if isinstance(root, Path):
        return jinja2.FileSystemLoader(str(root))
    return jinja2.FunctionLoader(lambda name: (root / name).read_text(encoding="utf-8"))


@cache
def environment(language: str) -> jinja2.Environment:
    """One environment per language: the catalog is installed once, not per render, and a
    rendering thread never sees another language's strings."""
    env = jinja2.Environment(loader=_loader(), autoescape=True, undefined=jinja2.StrictUndefined,
                             extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.globals["lang"] = language
    return env


def render(template: str, language: str, **context: Any) -> str:
    return environment(language).get_template(template).render(**context)


@cache
def _formats(language: str) -> tuple[Locale, DateTimePattern, DateTimePattern]:
    """CLDR's short time and medium date patterns, parsed once: Babel's format_time and
    format_date parse them again for every call, most of an inbox page's 50 rows' cost."""
    locale = Locale.parse(language)
    return locale, get_time_format("short", locale=locale), get_date_format("medium", locale=locale)


@lru_cache(maxsize=8192)
def _formatted(language: str, today: bool, key: tuple[int, ...]) -> str:
    """One minute of a day (today) or one date (before), as CLDR's short time or medium date
    shows it: a short time depends on nothing but the hour and minute, a medium date on nothing
    but the day, so each is formatted once per process (bench/web_inbox.py: Babel's pattern
    per row was a tenth of the inbox page's CPU). Bounded: 1,440 minutes and a few years of dates."""
    locale, time_format, date_format = _formats(language)
    if today:
        return time_format.apply(time(*key), locale)
    return date_format.apply(date(*key), locale)


class RowTimes:
    """`short_time` for the many rows of one page: the zone and today's date looked up once."""

    def __init__(self, time_zone: str, language: str, now: datetime | None = None) -> None:
        self._zone = zone(time_zone)
        self._today = (now or datetime.now(timezone.utc)).astimezone(self._zone).date()
        self._language = language

    def __call__(self, moment: datetime) -> str:
        local = moment.astimezone(self._zone)
        day = local.date()
        if day == self._today:
            return _formatted(self._language, True, (local.hour, local.minute))
        return _formatted(self._language, False, (day.year, day.month, day.day))


def short_time(moment: datetime, time_zone: str, language: str, now: datetime | None = None) -> str:
    """A row's time in the studio's zone: the time today, else the date (CLDR, the page's language)."""
    return RowTimes(time_zone, language, now)(moment)


def long_time(moment: datetime, time_zone: str, language: str) -> str:
    """A moment that may lie days away (a grant's end, a log entry): its date and time in the
    studio's zone, CLDR's medium date and short time joined by the locale's own pattern."""
    if moment.tzinfo is None:  # stored as UTC
        moment = moment.replace(tzinfo=timezone.utc)
    local = moment.astimezone(zone(time_zone))
    locale, time_format, date_format = _formats(language)
    joined = str(get_datetime_format("medium", locale=locale))
    return joined.replace("{1}", date_format.apply(local, locale)).replace("{0}", time_format.apply(local, locale))
