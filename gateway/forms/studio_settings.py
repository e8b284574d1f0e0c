"""Changing a studio's settings, for the API (PATCH /api/v1/studio) and the settings page alike.

One function checks and writes every setting, so the page and the API cannot drift apart: the
name (what guests see in acknowledgements and the messenger shows), whether new inquiries get
an automatic acknowledgement, the language of the studio's mails, the time zone its dates are
shown in, and the privacy page the inquiry form links. It lives with the inquiry form because
the privacy URL's rule is the form's (gateway/forms/consent.py) and the layers put the forms
above gateway/outbound, whose time-zone check it uses as well.

A profile's own language (profile.locale, the pages' language) is its own choice, not the
studio's: `set_profile_locale` changes only the caller's row.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import Connection, update

from gateway.access.studios import Caller, StudioError, single_line
from gateway.forms.consent import valid_privacy_url
from gateway.outbound.dates import valid_time_zone
from gateway.store.tables import PROFILE, STUDIO

LOCALES = ("de", "en")      # the languages of templates/email/ and of the pages' catalogs


@dataclass(frozen=True)
class SettingsChange:
    """What to change; None leaves a setting as it is ("" removes the privacy URL)."""

    name: str | None = None
    acknowledge_inquiries: bool | None = None
    locale: str | None = None
    time_zone: str | None = None
    privacy_url: str | None = None


class SettingsInvalid(Exception):
    """One message per refused field: (field, why). Nothing was written."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(message for _, message in errors))
        self.errors = errors


def change_settings(conn: Connection, studio_id: int, change: SettingsChange) -> None:
    """Check every field first, then write them together (SettingsInvalid: nothing written)."""
    errors: list[tuple[str, str]] = []
    values: dict[str, object] = {}
    if change.name is not None:
        try:
            values["name"] = single_line(change.name, "name", 200)
        except StudioError as exc:
            errors.append(("name", str(exc)))
    if change.acknowledge_inquiries is not None:
        values["acknowledge_inquiries"] = change.acknowledge_inquiries
    if change.locale is not None:
        if change.locale in LOCALES:
            values["locale"] = change.locale
        else:
            errors.append(("locale", f"locale must be one of {', '.join(LOCALES)}"))
    if change.time_zone is not None:
        if valid_time_zone(change.time_zone):
            values["time_zone"] = change.time_zone
        else:
            errors.append(("time_zone", (f"time_zone must be an IANA time zone such as Europe/Berlin, "
                                         f"not {change.time_zone[:80]!r}")))
    if change.privacy_url is not None:
        change = replace(change, privacy_url=change.privacy_url.strip())
        if change.privacy_url and not _privacy_url_ok(change.privacy_url):
            errors.append(("privacy_url", ("privacy_url must be an https:// (or http://) address of at most "
                                           "2000 characters")))
        else:
            values["privacy_url"] = change.privacy_url or None
    if errors:
        raise SettingsInvalid(errors)
    if values:
        conn.execute(update(STUDIO).where(STUDIO.c.id == studio_id).values(**values))


def _privacy_url_ok(url: str) -> bool:
    """valid_privacy_url, where an unparsable address ("http://[x": urlsplit raises on a broken
    IPv6 host) is refused like any other bad one instead of failing the request."""
    try:
        return valid_privacy_url(url)
    except ValueError:
        return False


def set_profile_locale(conn: Connection, caller: Caller, locale: str | None) -> None:
    """The caller's own page language; None follows the browser (Accept-Language)."""
    if locale is not None and locale not in LOCALES:
        raise SettingsInvalid([("profile_locale", f"the language must be one of {', '.join(LOCALES)}")])
    conn.execute(update(PROFILE).where(PROFILE.c.id == caller.profile_id, PROFILE.c.studio_id == caller.studio_id)
                 .values(locale=locale))
