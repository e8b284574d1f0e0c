"""How each profile hears about guest mail: immediately, in an hourly digest, or not at all.

No row means the default of the profile's role: the owner hears at once (a studio that never
opened the settings still learns about its inquiries), members hear nothing until they choose.
Quiet hours are wall-clock times in the studio's time zone; mail arriving then waits for the
next digest sent outside them. A profile whose notifications keep bouncing is paused (its
mailbox is gone or full): mailing it on would only teach receivers that we send to dead
addresses. Any change of its preferences (a PATCH) resumes it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from sqlalchemy import Connection, Integer, and_, bindparam, insert, select, text, update

from gateway.outbound.dates import zone
from gateway.store.prepared import Prepared
from gateway.store.models import TOLD_BOUNCED
from gateway.store.tables import MESSAGE, NOTIFICATION_PREFERENCE, PROFILE

MODES = ("immediately", "hourly", "off")
PAUSE_AFTER_BOUNCES = 3   # bounced (or refused) notification mails since the last resume
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True)
class Preferences:
    mode: str
    quiet_from: str | None
    quiet_to: str | None
    paused: bool

    def as_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "quiet_from": self.quiet_from, "quiet_to": self.quiet_to, "paused": self.paused}


class InvalidPreference(ValueError):
    """A value the settings cannot take; `field` names it for the 422."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def default_mode(role: str) -> str:
    return "immediately" if role == "owner" else "off"


def in_quiet_hours(now: datetime, time_zone: str, quiet_from: str | None, quiet_to: str | None) -> bool:
    """Whether `now` falls in [quiet_from, quiet_to) on the studio's wall clock; a span over
    midnight (22:00-07:00) wraps. Without both ends there are no quiet hours."""
    if not quiet_from or not quiet_to or quiet_from == quiet_to:
        return False
    local = now.astimezone(zone(time_zone)).time()
    start, end = time.fromisoformat(quiet_from), time.fromisoformat(quiet_to)
    if start < end:
        return start <= local < end
    return local >= start or local < end




def _bounced(since: bool, sqlite: bool) -> Prepared:
    """Notification mails to a profile that bounced or failed: from the few such mails
    (ix_message_told_bounced) to whether one told this profile (ix_notification_mail), not
    from every notification the profile got in 30 days. SQLite is told the indexes: without
    statistics it walks the profile's rows instead. Written as SQL because Core renders no
    index hint for SQLite."""
    def hint(index: str) -> str:
        return f" INDEXED BY {index}" if sqlite else ""
    told_bounced = TOLD_BOUNCED.replace("conversation_id", "message.conversation_id").replace(
        "delivery", "message.delivery")
    sql = (f"SELECT count(*) FROM message{hint('ix_message_told_bounced')} WHERE {told_bounced}"
           + (" AND message.received_at > :since" if since else "")
           + f" AND EXISTS (SELECT 1 FROM notification{hint('ix_notification_mail')}"
             " WHERE notification.mail_ref = message.id AND notification.profile_id = :profile_id)")
    binds = [bindparam("profile_id", type_=Integer())]
    if since:
        binds.append(bindparam("since", type_=MESSAGE.c.received_at.type))
    return Prepared(text(sql).bindparams(*binds))


# Asked for every profile of a studio with each chunk of guest mail the processor threads
# (gateway/outbound/notifications.py): bound by Prepared, not built and cached by Core each time.
_BOUNCED_EVER = {dialect: _bounced(False, dialect == "sqlite") for dialect in ("sqlite", "postgresql")}
_BOUNCED_SINCE = {dialect: _bounced(True, dialect == "sqlite") for dialect in ("sqlite", "postgresql")}


def bounced_since(conn: Connection, profile_id: int, since: datetime | None) -> int:
    """Notification mails to the profile that bounced or were refused since `since`."""
    dialect = "sqlite" if conn.dialect.name == "sqlite" else "postgresql"
    if since is None:
        found = _BOUNCED_EVER[dialect].execute(conn, profile_id=profile_id).fetchone()
    else:
        found = _BOUNCED_SINCE[dialect].execute(conn, profile_id=profile_id, since=since).fetchone()
    return int(found[0] or 0)


def preferences(conn: Connection, studio_id: int, profile_id: int) -> Preferences | None:
    """The profile's preferences (None: not a connected profile of this studio)."""
    row = conn.execute(
        select(PROFILE.c.role, NOTIFICATION_PREFERENCE.c.mode, NOTIFICATION_PREFERENCE.c.quiet_from,
               NOTIFICATION_PREFERENCE.c.quiet_to, NOTIFICATION_PREFERENCE.c.resumed_at)
        .select_from(PROFILE.outerjoin(NOTIFICATION_PREFERENCE, and_(
            NOTIFICATION_PREFERENCE.c.profile_id == PROFILE.c.id)))
        .where(PROFILE.c.id == profile_id, PROFILE.c.studio_id == studio_id, PROFILE.c.disconnected_at.is_(None))
    ).first()
    if row is None:
        return None
    paused = bounced_since(conn, profile_id, row.resumed_at) >= PAUSE_AFTER_BOUNCES
    return Preferences(row.mode or default_mode(row.role), row.quiet_from, row.quiet_to, paused)


def check_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The PATCH body's known fields, checked; an unknown field or a bad value names itself."""
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "mode":
            if value not in MODES:
                raise InvalidPreference("mode", f"mode must be one of {', '.join(MODES)}")
        elif name in ("quiet_from", "quiet_to"):
            if value is not None and (not isinstance(value, str) or not _HHMM.match(value)):
                raise InvalidPreference(name, f"{name} must be a time as HH:MM (00:00 to 23:59) or null")
        else:
            raise InvalidPreference(name, f"unknown field {name!r}: mode, quiet_from, quiet_to")
        checked[name] = value
    return checked


def update_preferences(conn: Connection, studio_id: int, profile_id: int, changes: dict[str, Any],
                       now: datetime) -> Preferences | None:
    """Apply checked changes (see `check_changes`); a change also resumes a paused profile."""
    current = preferences(conn, studio_id, profile_id)
    if current is None:
        return None
    values = {"mode": current.mode, "quiet_from": current.quiet_from, "quiet_to": current.quiet_to,
              **changes, "resumed_at": now}
    exists = conn.execute(select(NOTIFICATION_PREFERENCE.c.profile_id)
                          .where(NOTIFICATION_PREFERENCE.c.profile_id == profile_id)).first()
    if exists is None:
        conn.execute(insert(NOTIFICATION_PREFERENCE).values(profile_id=profile_id, studio_id=studio_id, **values))
    else:
        conn.execute(update(NOTIFICATION_PREFERENCE)
                     .where(NOTIFICATION_PREFERENCE.c.profile_id == profile_id).values(**values))
    return preferences(conn, studio_id, profile_id)
