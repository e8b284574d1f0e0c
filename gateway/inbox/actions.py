"""What a studio does to its conversations besides replying: decide on held messages, close and
reopen, fetch an attachment's bytes. Plain functions on a connection, scoped to one studio.

A message is held when its sender is not a participant of the conversation it names (see
threader.py): a forwarded thread, a partner writing in, or a forged In-Reply-To. Until the
studio decides, it does not count towards the conversation and nothing of it is shown there,
attachments included. Accepting makes it an ordinary message of the conversation, so its
sender counts as a participant from then on and their next mail is shown at once; rejecting
keeps the row (state `rejected`, never shown or listed again) so the decision can be
explained, and the sender's next mail is held again.

Every statement filters on the studio id: another studio's ids are simply not found; and on
visibility (gateway/access/visibility.py): a deleted message, or one of a deleted conversation, is not
found either.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, literal, select, update

from gateway.store.blobs import blob_store
from gateway.eventlog import CONVERSATION_UPDATED, record as record_event
from gateway.store.models import utcnow
from gateway.store.paging import Order, Page, keyset_page, with_items
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.store.tables import ATTACHMENT
from gateway.access.visibility import LIVE_CONVERSATION, SHOWN_MESSAGE

HELD, VISIBLE, REJECTED = "held", "visible", "rejected"
OPEN, CLOSED = "open", "closed"


class NotHeld(ValueError):
    """The message exists but is no longer held: it was accepted or rejected before."""

    def __init__(self, message_id: int, state: str) -> None:
        super().__init__(f"message {message_id} is not held (it is {state}); "
                         "only held messages can be accepted or rejected")
        self.state = state


@dataclass(frozen=True)
class HeldMessage:
    id: int
    conversation_id: int
    from_email: str
    from_name: str
    subject: str
    text: str
    received_at: datetime
    thread_rule: str        # why it is held, for a notification answer (gateway/outbound/notify_answers.py)


@dataclass(frozen=True)
class Decision:
    id: int
    state: str
    conversation_id: int


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    data: bytes


HELD_ORDER = Order(id=MESSAGE.c.id, sort=MESSAGE.c.received_at)


def list_held(conn: Connection, studio_id: int, *, limit: int, cursor: str | None = None) -> Page[HeldMessage]:
    """The studio's held messages, newest first, a page of `limit` after `cursor` (BadCursor if forged)."""
    page = keyset_page(conn, select(MESSAGE.c.id, MESSAGE.c.conversation_id, MESSAGE.c.from_email,
                                    MESSAGE.c.from_name, MESSAGE.c.subject, MESSAGE.c.text, MESSAGE.c.received_at,
                                    MESSAGE.c.thread_rule)
                       .where(MESSAGE.c.studio_id == studio_id, MESSAGE.c.state == HELD, SHOWN_MESSAGE),
                       HELD_ORDER, limit=limit, cursor=cursor)
    return with_items(page, [HeldMessage(**row._mapping) for row in page.items])


def decide_held(conn: Connection, studio_id: int, message_id: int, *, accept: bool) -> Decision | None:
    """Accept or reject a held message in the caller's transaction; None if not the studio's.

    The state changes only `WHERE state = 'held'`, so of two concurrent decisions (two people
    in the studio, a double tap) exactly one wins and the other gets NotHeld: an accepted
    message is counted once.
    """
    new_state = VISIBLE if accept else REJECTED
    changed = conn.execute(
        update(MESSAGE).where(MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id,
                              MESSAGE.c.state == HELD, SHOWN_MESSAGE)
        .values(state=new_state).returning(MESSAGE.c.conversation_id, MESSAGE.c.received_at)
    ).first()
    if changed is None:
        state = conn.execute(select(MESSAGE.c.state).where(
            MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, SHOWN_MESSAGE)).scalar()
        if state is None:
            return None
        raise NotHeld(message_id, state)
    changes: dict[str, Any] = {"updated_at": utcnow()}  # its held count changed either way
    if accept:
        # Counted as if it had been visible on arrival; the conversation's activity moves only
        # forward (a held message older than the latest mail does not make it look older).
        # The status is left alone: reopening is the studio's own decision here.
        arrived = literal(changed.received_at, CONVERSATION.c.last_message_at.type)
        changes.update(message_count=CONVERSATION.c.message_count + 1,
                       last_message_at=case((CONVERSATION.c.last_message_at < arrived, arrived),
                                            else_=CONVERSATION.c.last_message_at))
    conn.execute(update(CONVERSATION).where(
        CONVERSATION.c.id == changed.conversation_id, CONVERSATION.c.studio_id == studio_id).values(**changes))
    record_event(conn, studio_id, CONVERSATION_UPDATED, utcnow(), conversation_id=changed.conversation_id,
                 change="held_accepted" if accept else "held_rejected", message_id=message_id)
    return Decision(id=message_id, state=new_state, conversation_id=changed.conversation_id)


def set_status(conn: Connection, studio_id: int, conversation_id: int, status: str) -> bool:
    """Close or reopen (idempotent); False if the conversation is not the studio's.

    A guest's mail to a closed conversation reopens it by itself (threader.py)."""
    if status not in (OPEN, CLOSED):
        raise ValueError(f"unknown conversation status {status!r}")
    found = conn.execute(update(CONVERSATION).where(
        CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION
    ).values(status=status, updated_at=case((CONVERSATION.c.status == status, CONVERSATION.c.updated_at),
                                            else_=literal(utcnow(), CONVERSATION.c.updated_at.type)))).rowcount
    if found:
        record_event(conn, studio_id, CONVERSATION_UPDATED, utcnow(), conversation_id=conversation_id,
                     change="closed" if status == CLOSED else "reopened")
    return bool(found)


def attachment_download(conn: Connection, studio_id: int, attachment_id: int) -> Download | None:
    """An attachment of a visible message of the studio, with its bytes; None otherwise.

    Attachments of held and rejected messages are not found: they are the studio's to see
    only once the message is accepted, like the rest of it; nor are those of deleted messages.
    """
    row = conn.execute(
        select(ATTACHMENT.c.filename, ATTACHMENT.c.content_type, ATTACHMENT.c.sha256)
        .join(MESSAGE, MESSAGE.c.id == ATTACHMENT.c.message_id)
        .where(ATTACHMENT.c.id == attachment_id, ATTACHMENT.c.studio_id == studio_id,
               MESSAGE.c.studio_id == studio_id, MESSAGE.c.state == VISIBLE, SHOWN_MESSAGE)
    ).first()
    if row is None:
        return None
    data = blob_store.get(conn, row.sha256)
    if data is None:  # the foreign key makes this impossible unless the store was tampered with
        raise LookupError(f"blob {row.sha256} of attachment {attachment_id} is missing")
    return Download(filename=row.filename, content_type=row.content_type, data=data)
