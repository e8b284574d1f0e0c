"""Support access: the owner lets support read the studio's conversations for a limited time.

Support staff are operators of the gateway, not studio profiles. They read a studio only
while its owner's grant is active (not revoked, not expired), only read (the conversation
list, a conversation with its messages, held messages, attachments) and name a reason each
time; every read is written to the studio's audit log in the same transaction that checks
the grant, so there is no read without its entry. Operators read from the command line
(`gateway support read`) or over HTTP with a support token (`gateway support token`).

A new grant replaces the studio's active one (to extend or shorten it), so at most one is
active and revoking it ends access; a partial unique index on the open grant makes that a
constraint of the database, not only of this code. Time comes in as `now`, so expiry is tested without
waiting; a read checks the grant when it starts, so a revocation takes effect for every
read that starts after it commits.
"""
from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from typing import Any

from sqlalchemy import ColumnElement, Connection, Row, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.access import audit
from gateway.store.tables import STUDIO
from gateway.access.studios import StudioError, hash_token, mint_token, single_line
from gateway.store.tables import SUPPORT_GRANT, SUPPORT_TOKEN
from gateway.store.paging import Order, Page, keyset_page, with_items

SUPPORT_TOKEN_PREFIX = "gws_"   # not gw_: a support token is never mistaken for a studio's
DEFAULT_GRANT = timedelta(hours=24)
MIN_GRANT = timedelta(hours=1)
MAX_GRANT = timedelta(days=7)
_OPERATOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class SupportDenied(PermissionError):
    """Support may not read this studio now (no active grant, or no such studio: the same
    answer, so operators cannot probe which studios exist)."""


@dataclass(frozen=True)
class GrantInfo:
    id: int
    profile_id: int
    note: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool


@dataclass(frozen=True)
class Operator:
    id: int
    name: str


@dataclass(frozen=True)
class NewSupportToken:
    id: int
    name: str
    prefix: str
    token: str  # shown once: only its hash is kept


def grant_duration(hours: int | None = None, days: int | None = None) -> timedelta:
    """How long a grant lasts: `hours` or `days` (not both), DEFAULT_GRANT when neither."""
    if hours is not None and days is not None:
        raise StudioError("give hours or days, not both")
    if hours is not None:
        return timedelta(hours=hours)
    return timedelta(days=days) if days is not None else DEFAULT_GRANT


def _active(now: datetime) -> ColumnElement[bool]:
    return SUPPORT_GRANT.c.revoked_at.is_(None) & (SUPPORT_GRANT.c.expires_at > now)


def _grant(row: Row[Any], now: datetime) -> GrantInfo:
    return GrantInfo(id=row.id, profile_id=row.profile_id, note=row.note, created_at=row.created_at,
                     expires_at=row.expires_at, revoked_at=row.revoked_at,
                     active=row.revoked_at is None and row.expires_at > now)


def grant_access(conn: Connection, studio_id: int, profile_id: int, actor: str, duration: timedelta,
                 note: str, now: datetime) -> GrantInfo:
    """A new grant from now for `duration`, replacing the active one; both changes audited.

    The studio's open grant (active, or expired and not yet replaced) is closed first; the
    partial unique index uq_support_grant_studio_open then admits the new one. If another
    request granted at the same moment (PostgreSQL: its insert commits while ours waits on the
    index), ours is retried once against what it committed, so the newest grant wins and the
    studio never holds two."""
    note = single_line(note, "note", 500, required=False)
    if not MIN_GRANT <= duration <= MAX_GRANT:
        raise StudioError("support access lasts at least 1 hour and at most 7 days")
    replaced: list[int] = []
    for attempt in (1, 2):
        # Read the open grants once, locked, and revoke and close exactly those: two statements
        # each with its own snapshot (PostgreSQL, READ COMMITTED) could otherwise close a grant
        # committed in between without revoking it, leaving it active beside ours.
        open_ids = conn.execute(select(SUPPORT_GRANT.c.id).where(
            SUPPORT_GRANT.c.studio_id == studio_id, SUPPORT_GRANT.c.closed_at.is_(None))
            .with_for_update()).scalars().all()
        if open_ids:
            replaced += conn.execute(update(SUPPORT_GRANT).where(SUPPORT_GRANT.c.id.in_(open_ids), _active(now))
                                    .values(revoked_at=now).returning(SUPPORT_GRANT.c.id)).scalars().all()
            conn.execute(update(SUPPORT_GRANT).where(SUPPORT_GRANT.c.id.in_(open_ids)).values(closed_at=now))
        try:
            with conn.begin_nested():
                grant_id = conn.execute(insert(SUPPORT_GRANT).returning(SUPPORT_GRANT.c.id), {
                    "studio_id": studio_id, "profile_id": profile_id, "note": note, "created_at": now,
                    "expires_at": now + duration}).scalar_one()
        except IntegrityError:
            if attempt == 2:
                raise
            continue
        break
    for replaced_id in replaced:
        audit.record(conn, studio_id, actor=actor, action="support_grant.revoke",
                     target=f"support grant {replaced_id}", reason="replaced by a new grant", now=now)
    audit.record(conn, studio_id, actor=actor, action="support_grant.create", target=f"support grant {grant_id}",
                 reason=note, now=now)
    return GrantInfo(id=grant_id, profile_id=profile_id, note=note, created_at=now, expires_at=now + duration,
                     revoked_at=None, active=True)


GRANTS = Order(id=SUPPORT_GRANT.c.id)


def list_grants(conn: Connection, studio_id: int, now: datetime, *, limit: int,
                cursor: str | None = None) -> Page[GrantInfo]:
    """The studio's grants, newest first, active and past, a page of `limit` after `cursor`."""
    page = keyset_page(conn, select(SUPPORT_GRANT).where(SUPPORT_GRANT.c.studio_id == studio_id), GRANTS,
                       limit=limit, cursor=cursor)
    return with_items(page, [_grant(row, now) for row in page.items])


def revoke_grant(conn: Connection, studio_id: int, grant_id: int, actor: str, now: datetime) -> GrantInfo | None:
    """End a grant now; None when the studio has no such grant. Idempotent: revoking again
    (or revoking an expired grant) changes and records nothing."""
    changed = conn.execute(update(SUPPORT_GRANT).where(SUPPORT_GRANT.c.id == grant_id, SUPPORT_GRANT.c.studio_id == studio_id, _active(now))
                           .values(revoked_at=now, closed_at=now)).rowcount
    if changed:
        audit.record(conn, studio_id, actor=actor, action="support_grant.revoke", target=f"support grant {grant_id}",
                     now=now)
    row = conn.execute(select(SUPPORT_GRANT).where(SUPPORT_GRANT.c.id == grant_id, SUPPORT_GRANT.c.studio_id == studio_id)).first()
    return None if row is None else _grant(row, now)


def active_grant(conn: Connection, studio_id: int, now: datetime) -> GrantInfo | None:
    row = conn.execute(select(SUPPORT_GRANT).where(SUPPORT_GRANT.c.studio_id == studio_id, _active(now))
                       .order_by(SUPPORT_GRANT.c.expires_at.desc()).limit(1)).first()
    return None if row is None else _grant(row, now)


def check_reason(reason: str) -> str:
    """Why support reads: required, one line, so the owner can tell what each read was for."""
    return single_line(reason, "reason", 500)


def open_read(conn: Connection, slug: str, *, actor: str, reason: str, action: str, target: str,
              now: datetime) -> int:
    """Check that support may read the studio now and audit the read; the studio's id.

    SupportDenied without an active grant (or without such a studio), StudioError for a
    missing reason. Call it in the transaction that reads, so a read that fails rolls its
    entry back with it (the command line does)."""
    studio_id = check_read(conn, slug, reason=reason, now=now)
    record_read(conn, studio_id, actor=actor, action=action, target=target, reason=reason, now=now)
    return studio_id


def check_read(conn: Connection, slug: str, *, reason: str, now: datetime) -> int:
    """Check, without auditing, that support may read the studio now; the studio's id.

    Over HTTP the read is audited only once the request has passed validation and produced
    its answer, just before that answer is sent (gateway/api/auth.py): a query refused as
    malformed, or an id that is not there, read nothing and is not written down as a read."""
    reason = check_reason(reason)
    studio_id = conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == slug.strip().lower())).scalar()
    if studio_id is None or active_grant(conn, studio_id, now) is None:
        raise SupportDenied(f"no active support grant for studio {slug.strip().lower()!r}; "
                            "its owner grants access under POST /api/v1/support-grants")
    return int(studio_id)


def record_read(conn: Connection, studio_id: int, *, actor: str, action: str, target: str, reason: str,
                now: datetime) -> None:
    """Write a support read (or, with action "<read>.rejected", a refused attempt) to the audit log."""
    audit.record(conn, studio_id, actor=actor, action=action, target=target, reason=check_reason(reason), now=now)


def check_operator(name: str) -> str:
    """An operator's name as the audit log shows it: 1-64 characters of letters, digits, . _ @ -."""
    if not _OPERATOR_NAME.fullmatch(name):
        raise StudioError("operator name must be 1-64 characters of letters, digits and . _ @ -")
    return name


def issue_support_token(conn: Connection, name: str, now: datetime) -> NewSupportToken:
    """A bearer token for the operator `name` (how the audit log will name them: support:<name>)."""
    name = check_operator(name)
    token, prefix = mint_token(SUPPORT_TOKEN_PREFIX)
    token_id = conn.execute(insert(SUPPORT_TOKEN).returning(SUPPORT_TOKEN.c.id), {
        "name": name, "prefix": prefix, "token_hash": hash_token(token), "created_at": now}).scalar_one()
    return NewSupportToken(id=token_id, name=name, prefix=prefix, token=token)


def revoke_support_token(conn: Connection, token_id: int, now: datetime) -> bool:
    """Revoke at once (the next request with it is 401); False when there is no such token."""
    found = conn.execute(update(SUPPORT_TOKEN).where(SUPPORT_TOKEN.c.id == token_id)
                         .values(revoked_at=func.coalesce(SUPPORT_TOKEN.c.revoked_at, now))).rowcount
    return bool(found)


def authenticate_support(conn: Connection, token: str) -> Operator | None:
    """The operator a support token belongs to, or None (unknown or revoked)."""
    if not token.startswith(SUPPORT_TOKEN_PREFIX) or len(token) > 200:
        return None
    digest = hash_token(token)
    row = conn.execute(select(SUPPORT_TOKEN.c.id, SUPPORT_TOKEN.c.name, SUPPORT_TOKEN.c.token_hash).where(
        SUPPORT_TOKEN.c.token_hash == digest, SUPPORT_TOKEN.c.revoked_at.is_(None))).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Operator(id=row.id, name=row.name)
