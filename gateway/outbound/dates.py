"""Dates as a studio's guests read them: in the studio's time zone, in its locale's formats.

A German studio's reply quotes the guest with "Am 05.12.2026 um 09:01 schrieb Lena:", the time
the guest wrote in Berlin (studio.time_zone, an IANA name, Europe/Berlin by default), not UTC.
Date and time come from CLDR through Babel for the studio's full locale ("de-CH", "en-GB":
"5 Dec 2026, at 09:01"; "en" is CLDR's en-US: "Dec 5, 2026, at 9:01 AM"); the words around them
("um", "at") belong to the template's language, as a mail client writes them.

Formatting is on the outbox's per-message path (a reply that quotes), so the locale, its CLDR
patterns and the zone are looked up once per (locale, language, zone); applying the patterns
costs about 24 µs a date (Babel's format_date + format_time: 31 µs), a few per cent of what a
reply costs the outbox (~400 µs at 2,500 a second, bench/outbound.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import parse_pattern

log = logging.getLogger(__name__)

DEFAULT_TIME_ZONE = "Europe/Berlin"
# How the template's language joins a date and a time ("Am {when} schrieb"): the languages the
# templates are written in. Another language shows an unambiguous ISO date with its offset.
_JOINED = {"de": "{date} um {time}", "en": "{date}, at {time}"}


def valid_time_zone(name: str) -> bool:
    """Whether `name` is an IANA zone this installation knows (the API checks what it stores)."""
    return _zone_or_none(name) is not None


@lru_cache(maxsize=512)
def _zone_or_none(name: str) -> tzinfo | None:
    if not name or len(name) > 64 or not name.isascii():
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # unknown, or a path ZoneInfo refuses
        return None


@lru_cache(maxsize=512)
def zone(name: str) -> tzinfo:
    """The zone named, or UTC (logged once per name) for one that is no longer known, so a reply
    is never held up by a zone database that lost a name."""
    found = _zone_or_none(name)
    if found is None:
        log.warning("unknown time zone %r: dates are shown in UTC", name)
        return timezone.utc
    return found


_ZONE_PATTERN = parse_pattern("z")  # the zone's short name where CLDR has one ("MEZ"), else "+0100"


@lru_cache(maxsize=256)
def _formatter(locale: str, language: str, zone_name: str, with_zone: bool) -> Callable[[datetime], str]:
    """A function from an aware datetime to the date and time in `zone_name`, for `locale` when
    it is a variant of the template `language` (else for the language itself); `with_zone`
    names the zone after it, for a reader elsewhere (a deadline)."""
    where = zone(zone_name)
    joined = _JOINED.get(language)
    parsed = None
    if joined is not None:
        wanted = locale.strip().replace("-", "_")
        for candidate in (wanted, language) if wanted.lower().startswith(language) else (language,):
            try:
                parsed = Locale.parse(candidate)
                break
            except (UnknownLocaleError, ValueError, TypeError):
                continue
    if joined is None or parsed is None:
        return lambda at: at.astimezone(where).strftime("%Y-%m-%d %H:%M (UTC%z)")
    date_pattern, time_pattern = parsed.date_formats["medium"], parsed.time_formats["short"]

    def format_local(at: datetime) -> str:
        local = at.astimezone(where)
        shown = joined.format(date=date_pattern.apply(local, parsed), time=time_pattern.apply(local, parsed))
        return f"{shown} {_ZONE_PATTERN.apply(local, parsed)}" if with_zone else shown

    return format_local


def local_date(at: datetime, *, locale: str, language: str, time_zone: str = DEFAULT_TIME_ZONE,
               with_zone: bool = False) -> str:
    """`at` (aware) as the studio's guests read it, e.g. "05.12.2026 um 09:01" ("... MEZ")."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a date to show must be timezone-aware")
    return _formatter(locale, language, time_zone, with_zone)(at)
