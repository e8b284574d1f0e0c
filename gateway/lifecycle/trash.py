"""Soft deletion: the studio deletes a conversation or a message, finds it in the trash, and on
a paid plan restores it within 30 days ("Versehentlich gelöschte Daten kannst du mit der
Nutzung der kostenpflichtigen Abos von STYNG innerhalb von 30 Tagen wiederherstellen", the
studio FAQ). After those 30 days the purge (gateway/lifecycle/purge.py) erases it for good.

Deleting only sets deleted_at and deleted_by: every read leaves the item out from that moment
(gateway/access/visibility.py), and restoring clears them, so a restored item is exactly what it was.
A message keeps its own deletion when its conversation is deleted and restored: the
conversation comes back showing what it showed. Owner and members may delete and restore, as
in any messenger; restoring is a paid feature (gateway/billing/entitlements.py), deleting and
looking into the trash are not.

Replies still queued when their conversation or message is deleted are not sent while it is
deleted (gateway/outbound/outbox.py). Restored, they go out, unless they were written longer ago than
GATEWAY_OUTBOUND_RETRY_FOR: a reply is never delivered later than that after it was written,
so such a one is marked failed and the studio decides whether to write again.

Every deletion and every restore from the trash is written to the deletion log too
(gateway/lifecycle/deletion_log.py): restoring a backup taken before a deletion puts the item
back into the trash, with its original deletion time, instead of showing it again.

Plain functions on a connection of the caller's transaction, scoped to one studio; an id of
another studio, or of a message the studio never saw (rejected), is not found (None).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Table, select, update

from gateway.billing.entitlements import has_paid_features
from gateway.eventlog import CONVERSATION_UPDATED, record as record_event
from gateway.settings import Settings
from gateway.store.models import utcnow
from gateway.store.paging import Order, Page, keyset_page, with_items
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.access.visibility import IN_LIVE_CONVERSATION, LIVE_CONVERSATION, LIVE_MESSAGE, recount
from gateway.store.tables import GUEST, OUTBOUND_JOB
from gateway.lifecycle.deletion_log import DeletionLog, Erasure, Kind

RETENTION = timedelta(days=30)   # the FAQ's promise: restorable for 30 days, then erased
SHOWN_STATES = ("visible", "held")   # a rejected message was never shown, so never deleted
STALE_REPLY = ("not sent: the reply waited while deleted and was restored after the retry window "
               "(GATEWAY_OUTBOUND_RETRY_FOR); write it again if it still applies")


class TrashError(Exception):
    """Restoring cannot be done as asked; the message is safe to show the studio."""


class NotDeleted(TrashError):
    """The item is not deleted (any more): nothing to restore (409)."""


class ConversationDeleted(TrashError):
    """The message's conversation is deleted: restoring the message alone would not show it (409)."""


class Expired(TrashError):
    """Deleted 30 days ago or more: erased, or about to be, for good (410)."""


class PaidFeature(TrashError):
    """The studio is on the free plan: restoring deleted data is a paid feature (402)."""


@dataclass(frozen=True)
class Deleted:
    kind: str               # conversation | message
    id: int
    conversation_id: int
    deleted_at: datetime
    purge_at: datetime      # erased for good from then on


@dataclass(frozen=True)
class Restored:
    kind: str
    id: int
    conversation_id: int
    replies_given_up: int   # queued replies too old to send now (see the module's docstring)


@dataclass(frozen=True)
class TrashedConversation:
    id: int
    subject: str
    guest_id: int
    guest_email: str
    guest_name: str
    message_count: int
    last_message_at: datetime
    deleted_at: datetime
    deleted_by: int | None
    purge_at: datetime


@dataclass(frozen=True)
class TrashedMessage:
    id: int
    conversation_id: int
    direction: str
    state: str
    from_email: str
    from_name: str
    subject: str
    excerpt: str
    received_at: datetime
    deleted_at: datetime
    deleted_by: int | None
    purge_at: datetime


def delete_conversation(conn: Connection, studio_id: int, conversation_id: int, profile_id: int,
                        now: datetime, *, log: DeletionLog) -> Deleted | None:
    """Hide a shown conversation at once; None if the studio has no such conversation shown.
    The deletion goes into the deletion log first, so a backup restored later puts it back
    into the trash (gateway/lifecycle/deletion_log.py)."""
    found = conn.execute(select(CONVERSATION.c.id).where(
        CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION)).first()
    if found is None:
        return None
    log.append("conversation.trashed", studio_id, conversation_id, at=now, by=profile_id)  # before the change
    found = conn.execute(update(CONVERSATION).where(
        CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION
    ).values(deleted_at=now, deleted_by=profile_id, updated_at=now).returning(CONVERSATION.c.id)).first()
    if found is None:
        return None
    record_event(conn, studio_id, CONVERSATION_UPDATED, now, conversation_id=conversation_id, change="deleted")
    return Deleted("conversation", conversation_id, conversation_id, now, now + RETENTION)


def delete_message(conn: Connection, studio_id: int, message_id: int, profile_id: int,
                   now: datetime, *, log: DeletionLog) -> Deleted | None:
    """Hide a shown message (visible, or held for the studio's decision) at once; None if the
    studio has no such message shown. The conversation's count and activity follow. Logged
    first, as a conversation's deletion is."""
    shown = conn.execute(select(MESSAGE.c.id).where(
        MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.state.in_(SHOWN_STATES),
        LIVE_MESSAGE, IN_LIVE_CONVERSATION)).first()
    if shown is None:
        return None
    log.append("message.trashed", studio_id, message_id, at=now, by=profile_id)  # before the change
    found = conn.execute(update(MESSAGE).where(
        MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.state.in_(SHOWN_STATES),
        LIVE_MESSAGE, IN_LIVE_CONVERSATION
    ).values(deleted_at=now, deleted_by=profile_id).returning(MESSAGE.c.conversation_id, MESSAGE.c.state)).first()
    if found is None:
        return None
    if found.state == "visible":
        recount(conn, found.conversation_id)
    record_event(conn, studio_id, CONVERSATION_UPDATED, now, conversation_id=found.conversation_id,
                 change="message_deleted", message_id=message_id)
    return Deleted("message", message_id, found.conversation_id, now, now + RETENTION)


def restore_conversation(conn: Connection, studio_id: int, conversation_id: int, settings: Settings,
                         now: datetime) -> Restored | None:
    """Bring a deleted conversation back as it was; None if the studio has no such conversation.

    Raises NotDeleted, Expired or PaidFeature, checked in that order: a studio on the free plan
    asking for something already gone is told it is gone, not asked to pay for it."""
    row = conn.execute(select(CONVERSATION.c.deleted_at).where(
        CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id)).first()
    if row is None:
        return None
    if not _undelete(conn, CONVERSATION, conversation_id, f"conversation {conversation_id}", row.deleted_at,
                     studio_id, settings, now):
        return restore_conversation(conn, studio_id, conversation_id, settings, now)
    given_up = _give_up_stale_replies(conn, (MESSAGE.c.conversation_id == conversation_id) & LIVE_MESSAGE,
                                      settings, now)
    record_event(conn, studio_id, CONVERSATION_UPDATED, now, conversation_id=conversation_id, change="restored")
    return Restored("conversation", conversation_id, conversation_id, given_up)


def restore_message(conn: Connection, studio_id: int, message_id: int, settings: Settings,
                    now: datetime) -> Restored | None:
    """Bring a deleted message back into its conversation; None if the studio has no such
    message. Raises ConversationDeleted (restore the conversation first), NotDeleted, Expired
    or PaidFeature."""
    row = conn.execute(select(MESSAGE.c.deleted_at, MESSAGE.c.conversation_id, MESSAGE.c.state).where(
        MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.state.in_(SHOWN_STATES))).first()
    if row is None:
        return None
    hidden_by = conn.execute(select(CONVERSATION.c.id).where(
        CONVERSATION.c.id == row.conversation_id, ~LIVE_CONVERSATION)).scalar()
    if hidden_by is not None:
        raise ConversationDeleted(f"message {message_id} belongs to conversation {hidden_by}, which is deleted; "
                                  "restore the conversation first")
    if not _undelete(conn, MESSAGE, message_id, f"message {message_id}", row.deleted_at, studio_id, settings, now):
        return restore_message(conn, studio_id, message_id, settings, now)
    if row.state == "visible":
        recount(conn, row.conversation_id)
    given_up = _give_up_stale_replies(conn, MESSAGE.c.id == message_id, settings, now)
    record_event(conn, studio_id, CONVERSATION_UPDATED, now, conversation_id=row.conversation_id,
                 change="message_restored", message_id=message_id)
    return Restored("message", message_id, row.conversation_id, given_up)


TRASHED_CONVERSATIONS = Order(id=CONVERSATION.c.id, sort=CONVERSATION.c.deleted_at)
TRASHED_MESSAGES = Order(id=MESSAGE.c.id, sort=MESSAGE.c.deleted_at)


def trashed_conversations(conn: Connection, studio_id: int, now: datetime, *, limit: int,
                          cursor: str | None = None) -> Page[TrashedConversation]:
    """Conversations the studio deleted and may still restore, most recently deleted first,
    a page of `limit` after `cursor` (BadCursor if forged)."""
    query = (select(CONVERSATION.c.id, CONVERSATION.c.subject, CONVERSATION.c.guest_id, GUEST.c.email,
                    GUEST.c.name, CONVERSATION.c.message_count, CONVERSATION.c.last_message_at,
                    CONVERSATION.c.deleted_at, CONVERSATION.c.deleted_by)
             .join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
             .where(CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.deleted_at > now - RETENTION))
    page = keyset_page(conn, query, TRASHED_CONVERSATIONS, limit=limit, cursor=cursor)
    return with_items(page, [TrashedConversation(
        id=c.id, subject=c.subject, guest_id=c.guest_id, guest_email=c.email, guest_name=c.name,
        message_count=c.message_count, last_message_at=c.last_message_at, deleted_at=c.deleted_at,
        deleted_by=c.deleted_by, purge_at=c.deleted_at + RETENTION) for c in page.items])


def trashed_messages(conn: Connection, studio_id: int, now: datetime, *, limit: int,
                     cursor: str | None = None) -> Page[TrashedMessage]:
    """Messages the studio deleted and may still restore, most recently deleted first.

    Messages are listed while their conversation is shown; one deleted inside a conversation
    that was deleted afterwards appears again once the conversation is restored."""
    query = (select(MESSAGE.c.id, MESSAGE.c.conversation_id, MESSAGE.c.direction, MESSAGE.c.state,
                    MESSAGE.c.from_email, MESSAGE.c.from_name, MESSAGE.c.subject, MESSAGE.c.text,
                    MESSAGE.c.received_at, MESSAGE.c.deleted_at, MESSAGE.c.deleted_by)
             .where(MESSAGE.c.studio_id == studio_id, MESSAGE.c.deleted_at > now - RETENTION,
                    MESSAGE.c.state.in_(SHOWN_STATES), IN_LIVE_CONVERSATION))
    page = keyset_page(conn, query, TRASHED_MESSAGES, limit=limit, cursor=cursor)
    return with_items(page, [TrashedMessage(
        id=m.id, conversation_id=m.conversation_id, direction=m.direction, state=m.state,
        from_email=m.from_email, from_name=m.from_name, subject=m.subject, excerpt=m.text[:200],
        received_at=m.received_at, deleted_at=m.deleted_at, deleted_by=m.deleted_by,
        purge_at=m.deleted_at + RETENTION) for m in page.items])


def record_restored(log: DeletionLog, studio_id: int, restored: Restored, now: datetime | None = None) -> None:
    """Log a restore from the trash, after it committed (see gateway/lifecycle/deletion_log.py
    for why after): a backup restored later then leaves the item restored, not in the trash.
    A failure here leaves the item restored now; a later backup restore would only put it
    back into the trash, from where it can be restored again."""
    kind: Kind = "conversation.restored" if restored.kind == "conversation" else "message.restored"
    log.append(kind, studio_id, restored.id, at=now)


def _touched(table: Table) -> dict[str, datetime]:
    """A conversation's `updated_at` for a change made now (messages have none)."""
    return {"updated_at": utcnow()} if table is CONVERSATION else {}


def replay_trash_event(conn: Connection, event: Erasure) -> bool:
    """Re-apply a logged move into or out of the trash to a restored database; True if it
    changed something. A deletion keeps its original time (and so its 30 days) and author."""
    table = CONVERSATION if event.kind.startswith("conversation.") else MESSAGE
    if event.kind.endswith(".trashed"):
        changed = conn.execute(update(table).where(
            table.c.id == event.object_id, table.c.studio_id == event.studio_id, table.c.deleted_at.is_(None)
        ).values(deleted_at=event.at, deleted_by=event.by, **_touched(table))).rowcount
    else:
        changed = conn.execute(update(table).where(
            table.c.id == event.object_id, table.c.studio_id == event.studio_id, table.c.deleted_at.is_not(None)
        ).values(deleted_at=None, deleted_by=None, **_touched(table))).rowcount
    if changed and table is MESSAGE:
        conversation_id = conn.execute(select(MESSAGE.c.conversation_id).where(
            MESSAGE.c.id == event.object_id)).scalar()
        if conversation_id is not None:
            recount(conn, conversation_id)
    return bool(changed)


def _undelete(conn: Connection, table: Table, object_id: int, what: str, deleted_at: datetime | None,
              studio_id: int, settings: Settings, now: datetime) -> bool:
    """Clear the deletion read as `deleted_at` if it may be restored (else raise NotDeleted,
    Expired or PaidFeature). False if a concurrent restore, delete or purge changed it since it
    was read: the caller reads again and answers as things are now."""
    if deleted_at is None:
        raise NotDeleted(f"{what} is not deleted; there is nothing to restore")
    _check_restorable(conn, studio_id, what, deleted_at, settings, now)
    changes = {"updated_at": now} if table is CONVERSATION else {}
    return bool(conn.execute(update(table).where(table.c.id == object_id, table.c.deleted_at == deleted_at)
                             .values(deleted_at=None, deleted_by=None, **changes)).rowcount)


def _check_restorable(conn: Connection, studio_id: int, what: str, deleted_at: datetime, settings: Settings,
                      now: datetime) -> None:
    if now >= deleted_at + RETENTION:
        raise Expired(f"{what} was deleted on {deleted_at:%Y-%m-%d}, more than {RETENTION.days} days ago, "
                      "and is erased for good; it cannot be restored")
    if not has_paid_features(conn, studio_id, settings, now):
        raise PaidFeature(f"restoring deleted data is a paid feature: with the monthly or yearly plan, {what} "
                          f"can be restored until {deleted_at + RETENTION:%Y-%m-%d}")


def _give_up_stale_replies(conn: Connection, messages: ColumnElement[bool], settings: Settings,
                           now: datetime) -> int:
    """Mark failed the restored replies still queued that were written before the retry window."""
    stale = list(conn.execute(select(OUTBOUND_JOB.c.message_id).where(
        OUTBOUND_JOB.c.status == "queued",
        OUTBOUND_JOB.c.created_at < now - timedelta(seconds=settings.outbound_retry_for),
        OUTBOUND_JOB.c.message_id.in_(select(MESSAGE.c.id).where(messages)))).scalars())
    if stale:
        conn.execute(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.message_id.in_(stale)).values(
            status="failed", last_error=STALE_REPLY))
        conn.execute(update(MESSAGE).where(MESSAGE.c.id.in_(stale)).values(delivery="failed"))
    return len(stale)
