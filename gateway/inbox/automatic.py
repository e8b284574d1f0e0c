"""What a studio reads of its automatic mail: bounces, auto-replies, list and bulk mail that
opened no conversation (gateway/inbound/threader.py records them in `automatic_mail`).

None of it is chat, and none of it is answered; but nothing accepted may be invisible, so the
studio can look (GET /api/v1/automatic): a newsletter it subscribed to, an out-of-office from
someone it never wrote to, a bounce for mail it never sent. Newest first, paged like the
conversation list; another studio's rows are never found.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone

import msgspec
from sqlalchemy import Connection, select

from gateway.inbox.reading import AuthenticationOut, BadCursor, PersonOut, authentication_out
from gateway.store.tables import AUTOMATIC_MAIL

KINDS = ("bounce", "auto-reply", "bulk", "list", "auto-generated")


class AutomaticOut(msgspec.Struct):
    id: int
    kind: str                       # bounce | auto-reply | bulk | list | auto-generated
    from_: PersonOut = msgspec.field(name="from")
    subject: str
    message_id: str
    received_at: datetime
    inbound_id: int | None           # the stored raw mail (`gateway quarantine`-style tools)
    authentication: AuthenticationOut | None = None


class AutomaticList(msgspec.Struct):
    items: list[AutomaticOut]
    next_cursor: str | None = None


def _encode(received_at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{received_at.isoformat()}|{row_id}".encode()).decode()


def _decode(cursor: str) -> tuple[datetime, int]:
    try:
        at, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)), int(row_id)
    except (ValueError, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API handed out") from None


def list_automatic(conn: Connection, studio_id: int, *, limit: int = 50, kind: str | None = None,
                   cursor: str | None = None) -> AutomaticList:
    """Newest first; `next_cursor` fetches the page after this one (BadCursor if forged)."""
    t = AUTOMATIC_MAIL
    query = select(t).where(t.c.studio_id == studio_id)
    if kind is not None:
        query = query.where(t.c.auto_kind == kind)
    if cursor is not None:
        after_at, after_id = _decode(cursor)
        query = query.where((t.c.received_at < after_at) | ((t.c.received_at == after_at) & (t.c.id < after_id)))
    rows = conn.execute(query.order_by(t.c.received_at.desc(), t.c.id.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return AutomaticList(
        items=[AutomaticOut(id=r.id, kind=r.auto_kind, from_=PersonOut(email=r.from_email, name=r.from_name),
                            subject=r.subject, message_id=r.message_id, received_at=r.received_at,
                            inbound_id=r.inbound_mail_id, authentication=authentication_out(r.authentication_results))
               for r in rows],
        next_cursor=_encode(rows[-1].received_at, rows[-1].id) if more else None)
