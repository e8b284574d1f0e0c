"""The people of a studio: the owner connects members (artists, staff) and disconnects them.

A member reads and answers the studio's conversations like the owner but manages nothing
(profiles, support access, the audit log, settings stay the owner's). Disconnecting keeps the
profile's row, so what they wrote stays attributed, and revokes their tokens in the same
transaction; `authenticate` also refuses any token of a disconnected profile, so access ends
with the commit either way.

Plain functions on a connection, scoped to one studio: another studio's profile is not found.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.access import audit
from gateway.store.tables import PROFILE, API_TOKEN
from gateway.store.paging import Order, Page, keyset_page, with_items
from gateway.access.studios import Caller, NewToken, StudioError, check_email, issue_token, single_line

OWNER, MEMBER = "owner", "member"


class ProfileConflict(StudioError):
    """The request contradicts the studio's profiles as they are (answer 409)."""


@dataclass(frozen=True)
class ProfileInfo:
    id: int
    email: str
    name: str
    role: str
    created_at: datetime
    disconnected_at: datetime | None


_COLUMNS = (PROFILE.c.id, PROFILE.c.email, PROFILE.c.name, PROFILE.c.role, PROFILE.c.created_at,
            PROFILE.c.disconnected_at)


PROFILES = Order(id=PROFILE.c.id, descending=False)


def list_profiles(conn: Connection, caller: Caller, *, limit: int, cursor: str | None = None) -> Page[ProfileInfo]:
    """The studio's profiles, oldest first: all of them for the owner, who connects and
    disconnects them; the connected ones for a member, who needs to know who else answers
    guests but not who used to. A page of `limit` after `cursor` (BadCursor if forged)."""
    query = select(*_COLUMNS).where(PROFILE.c.studio_id == caller.studio_id)
    if caller.role != OWNER:
        query = query.where(PROFILE.c.disconnected_at.is_(None))
    page = keyset_page(conn, query, PROFILES, limit=limit, cursor=cursor)
    return with_items(page, [ProfileInfo(**row._mapping) for row in page.items])


def connect_member(conn: Connection, caller: Caller, email: str, name: str, now: datetime) -> tuple[ProfileInfo, NewToken]:
    """A new member profile of the caller's studio and a first token for it (shown once).

    StudioError for a bad address or name; ProfileConflict when the address is connected to
    the studio already (the owner's included). The partial unique index on connected profiles
    decides races that both pass the check."""
    email = check_email(email)
    name = single_line(name, "name", 200)
    conflict = ProfileConflict(f"{email} is connected to this studio already")
    if conn.execute(select(PROFILE.c.id).where(PROFILE.c.studio_id == caller.studio_id, PROFILE.c.email == email,
                                               PROFILE.c.disconnected_at.is_(None))).first():
        raise conflict
    try:
        with conn.begin_nested():
            profile_id = conn.execute(insert(PROFILE).returning(PROFILE.c.id), {
                "studio_id": caller.studio_id, "email": email, "name": name, "role": MEMBER,
                "created_at": now}).scalar_one()
    except IntegrityError:
        raise conflict from None
    audit.record(conn, caller.studio_id, actor=audit.profile_actor(conn, caller), action="profile.connect",
                 target=f"profile {profile_id}", now=now)
    token = issue_token(conn, caller.studio_id, profile_id)
    return ProfileInfo(profile_id, email, name, MEMBER, now, None), token


def disconnect_profile(conn: Connection, caller: Caller, profile_id: int, now: datetime) -> bool:
    """Disconnect a member and revoke their tokens; False when the studio has no such profile.

    The owner profile cannot be disconnected (ProfileConflict): a studio without its owner
    could not manage anything any more; giving up the studio is account deletion. Idempotent:
    disconnecting again keeps the first time and records nothing new."""
    role = conn.execute(select(PROFILE.c.role).where(
        PROFILE.c.id == profile_id, PROFILE.c.studio_id == caller.studio_id)).scalar()
    if role is None:
        return False
    if role == OWNER:
        raise ProfileConflict("the owner's profile cannot be disconnected")
    changed = conn.execute(update(PROFILE).where(
        PROFILE.c.id == profile_id, PROFILE.c.studio_id == caller.studio_id, PROFILE.c.disconnected_at.is_(None)
    ).values(disconnected_at=now)).rowcount
    conn.execute(update(API_TOKEN).where(API_TOKEN.c.profile_id == profile_id, API_TOKEN.c.studio_id == caller.studio_id)
                 .values(revoked_at=func.coalesce(API_TOKEN.c.revoked_at, now)))
    if changed:
        audit.record(conn, caller.studio_id, actor=audit.profile_actor(conn, caller), action="profile.disconnect",
                     target=f"profile {profile_id}", now=now)
    return True
