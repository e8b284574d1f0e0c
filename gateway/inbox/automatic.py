"""What a studio reads of its automatic mail: bounces, auto-replies, list and bulk mail that
opened no conversation (gateway/inbound/threader.py records them in `automatic_mail`).

None of it is chat, and none of it is answered; but nothing accepted may be invisible, so the
studio can look (GET /api/v1/automatic): a newsletter it subscribed to, an out-of-office from
someone it never wrote to, a bounce for mail it never sent. Newest first, paged like the
conversation list; another studio's rows are never found.
"""
from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import Connection, select

from gateway.inbox.reading import AuthenticationOut, PersonOut, authentication_out
from gateway.store.paging import Order, keyset_page
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


ORDER = Order(id=AUTOMATIC_MAIL.c.id, sort=AUTOMATIC_MAIL.c.received_at)


def list_automatic(conn: Connection, studio_id: int, *, limit: int = 50, kind: str | None = None,
                   cursor: str | None = None) -> AutomaticList:
    """Newest first; `next_cursor` fetches the page after this one (BadCursor if forged)."""
    t = AUTOMATIC_MAIL
    query = select(t).where(t.c.studio_id == studio_id)
    if kind is not None:
        query = query.where(t.c.auto_kind == kind)
    page = keyset_page(conn, query, ORDER, limit=limit, cursor=cursor)
    return AutomaticList(
        items=[AutomaticOut(id=r.id, kind=r.auto_kind, from_=PersonOut(email=r.from_email, name=r.from_name),
                            subject=r.subject, message_id=r.message_id, received_at=r.received_at,
                            inbound_id=r.inbound_mail_id, authentication=authentication_out(r.authentication_results))
               for r in page.items],
        next_cursor=page.next_cursor)
