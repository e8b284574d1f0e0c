"""A studio's guests: look one up, and erase one for good on request.

A guest's erasure (their right to be forgotten, asked of the studio) is immediate and
irrevocable: no trash, no 30 days, not restorable on any plan. gateway/lifecycle/erasure.py removes
their conversations, the mail they wrote into others', the bytes, and their contact; the
deletion log gets its entry first (fsync'd before the erasure commits), so a backup restored
later erases them again. The answer counts what went, for the studio's own records.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from gateway.eventlog import CONVERSATION_UPDATED, record_many
from gateway.lifecycle.deletion_log import DeletionLog
from gateway.store.tables import ATTACHMENT, GUEST, MESSAGE
from gateway.lifecycle.erasure import erase_guest, guest_messages
from gateway.store.tables import CONVERSATION
from gateway.access.visibility import LIVE_CONVERSATION


@dataclass(frozen=True)
class GuestInfo:
    id: int
    email: str
    name: str
    created_at: datetime
    conversation_count: int   # shown (not deleted) conversations


@dataclass(frozen=True)
class GuestErased:
    id: int
    conversations: int        # deleted ones included: erasure takes everything
    messages: int
    attachments: int
    erased_at: datetime


def get_guest(conn: Connection, studio_id: int, guest_id: int) -> GuestInfo | None:
    row = conn.execute(select(GUEST.c.id, GUEST.c.email, GUEST.c.name, GUEST.c.created_at).where(
        GUEST.c.studio_id == studio_id, GUEST.c.id == guest_id)).first()
    if row is None:
        return None
    count = conn.execute(select(func.count()).select_from(CONVERSATION).where(
        CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id, LIVE_CONVERSATION)).scalar_one()
    return GuestInfo(id=row.id, email=row.email, name=row.name, created_at=row.created_at, conversation_count=count)


def erase_guest_data(conn: Connection, studio_id: int, guest_id: int, erasures: DeletionLog,
                     now: datetime, *, mail_domain: str) -> GuestErased | None:
    """Erase the guest in the caller's transaction; None if the studio has no such guest."""
    guest = conn.execute(select(GUEST.c.email).where(GUEST.c.studio_id == studio_id, GUEST.c.id == guest_id)).first()
    if guest is None:
        return None
    theirs = guest_messages(studio_id, guest_id, guest.email)
    conversations = conn.execute(select(func.count()).select_from(CONVERSATION).where(
        CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id)).scalar_one()
    messages = conn.execute(select(func.count()).select_from(MESSAGE).where(theirs)).scalar_one()
    attachments = conn.execute(select(func.count()).select_from(ATTACHMENT).where(
        ATTACHMENT.c.message_id.in_(select(MESSAGE.c.id).where(theirs)))).scalar_one()
    own = list(conn.execute(select(CONVERSATION.c.id).where(
        CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id)).scalars())
    elsewhere = conn.execute(select(MESSAGE.c.id, MESSAGE.c.conversation_id).where(
        theirs, MESSAGE.c.conversation_id.not_in(own) if own else MESSAGE.c.conversation_id.is_not(None))).all()
    erasures.append("guest", studio_id, guest_id, at=now)   # before the erasure, always
    erase_guest(conn, studio_id, guest_id, mail_domain)
    # Open inboxes, conversation pages and the studio's webhooks learn at once that these are
    # gone (a booking tool that copied them must drop its copy too): the ids only, nothing of them.
    events: list[tuple[str, datetime, dict[str, int | str | None]]] = [
        (CONVERSATION_UPDATED, now, {"conversation_id": c, "change": "erased"}) for c in own]
    events += [(CONVERSATION_UPDATED, now, {"conversation_id": m.conversation_id, "change": "message_erased",
                                            "message_id": m.id}) for m in elsewhere]
    for start in range(0, len(events), 100):   # a statement's parameters stay well within limits
        record_many(conn, studio_id, events[start:start + 100])
    return GuestErased(id=guest_id, conversations=conversations, messages=messages, attachments=attachments,
                       erased_at=now)
