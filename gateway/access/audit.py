"""The audit log of a studio: who read its conversations or changed who may, when and why.

Append-only by construction: this module is the only writer and it only inserts; there is no
update or delete anywhere, and rows go only when the whole studio is erased. An entry names
the kind and id of what was touched ("conversation 12"), never a subject, a message body or
a secret, so the log can be shown to the owner and kept without becoming a copy of the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert, select

from gateway.store.tables import PROFILE
from gateway.access.studios import Caller
from gateway.store.tables import AUDIT_ENTRY
from gateway.store.paging import Order, Page, keyset_page, with_items



@dataclass(frozen=True)
class AuditRecord:
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    reason: str



def record(conn: Connection, studio_id: int, *, actor: str, action: str, target: str = "", reason: str = "",
           now: datetime) -> None:
    """Append an entry in the caller's transaction, so it stands or falls with what it records."""
    conn.execute(insert(AUDIT_ENTRY), {"studio_id": studio_id, "created_at": now, "actor": actor[:400],
                                 "action": action, "target": target[:100], "reason": reason[:500]})


def profile_actor(conn: Connection, caller: Caller) -> str:
    """How the log names a studio profile: role and address ("owner:lena@inkwell.example"),
    which stay readable after the profile is disconnected."""
    email = conn.execute(select(PROFILE.c.email).where(
        PROFILE.c.id == caller.profile_id, PROFILE.c.studio_id == caller.studio_id)).scalar_one()
    return f"{caller.role}:{email}"


ENTRIES = Order(id=AUDIT_ENTRY.c.id)


def list_entries(conn: Connection, studio_id: int, *, limit: int, cursor: str | None = None) -> Page[AuditRecord]:
    """The studio's entries newest first, `limit` at a time after `cursor` (BadCursor if forged).

    Ordered by id, which only grows: a page boundary stays put while new entries arrive."""
    page = keyset_page(conn, select(AUDIT_ENTRY).where(AUDIT_ENTRY.c.studio_id == studio_id), ENTRIES,
                       limit=limit, cursor=cursor)
    return with_items(page, [AuditRecord(id=r.id, created_at=r.created_at, actor=r.actor, action=r.action,
                                         target=r.target, reason=r.reason) for r in page.items])
