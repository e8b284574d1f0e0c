"""Deleting, the trash, and restoring: thin handlers over gateway/lifecycle/trash.py.

DELETE hides a conversation or message at once for everyone in the studio (owner and members
alike, as in any messenger); the answer says when it will be erased for good. The trash lists
what may still be restored; restoring is a paid feature: 402 on the free plan, 410 once the 30
days are over, 409 when there is nothing to restore, 404 for what the studio does not have.
"""
from __future__ import annotations

import logging
from datetime import datetime

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException
from litestar.status_codes import HTTP_402_PAYMENT_REQUIRED, HTTP_410_GONE

from gateway.api.auth import support_read
from gateway.api.ids import RowId
from gateway.api.people import GuestOut, PersonOut
from gateway.inbox.reading import MessageOut, find_message
from gateway.api.manage import ConflictException
from gateway.billing.entitlements import has_paid_features
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.access.studios import Caller
from gateway.lifecycle.trash import (RETENTION, ConversationDeleted, Deleted, Expired, NotDeleted, PaidFeature, Restored, delete_message, record_restored, restore_conversation, restore_message, trashed_conversations, trashed_messages)
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.lifecycle.deletion_log import deletion_log

log = logging.getLogger(__name__)


class PaymentRequiredException(HTTPException):
    status_code = HTTP_402_PAYMENT_REQUIRED


class GoneException(HTTPException):
    status_code = HTTP_410_GONE


class DeletedOut(msgspec.Struct):
    kind: str                # conversation | message
    id: int
    conversation_id: int
    deleted_at: datetime
    purge_at: datetime       # erased for good from then on; restorable until then on a paid plan


class RestoredOut(msgspec.Struct):
    kind: str
    id: int
    conversation_id: int
    replies_given_up: int    # queued replies written too long ago to be sent now: marked failed


class TrashedConversationOut(msgspec.Struct):
    id: int
    subject: str
    guest: GuestOut
    message_count: int
    last_message_at: datetime
    deleted_at: datetime
    deleted_by: int | None   # profile id
    purge_at: datetime


class TrashedMessageOut(msgspec.Struct):
    id: int
    conversation_id: int
    direction: str
    state: str               # visible | held: what it is again once restored
    from_: PersonOut = msgspec.field(name="from")
    subject: str
    excerpt: str             # the start of its text, to recognise it by
    received_at: datetime
    deleted_at: datetime
    deleted_by: int | None   # profile id
    purge_at: datetime


class TrashOut(msgspec.Struct):
    """What the trash is, not what is in it: that is paged at /trash/conversations and
    /trash/messages (two lists because the two kinds of item differ in shape)."""

    restorable: bool         # the studio's plan includes restoring (monthly or yearly)
    retention_days: int


class TrashedConversationList(msgspec.Struct):
    items: list[TrashedConversationOut]
    next_cursor: str | None = None


class TrashedMessageList(msgspec.Struct):
    items: list[TrashedMessageOut]
    next_cursor: str | None = None


def deleted_answer(deleted: Deleted | None, what: str) -> DeletedOut:
    if deleted is None:
        raise NotFoundException(f"{what} not found")
    return DeletedOut(kind=deleted.kind, id=deleted.id, conversation_id=deleted.conversation_id,
                      deleted_at=deleted.deleted_at, purge_at=deleted.purge_at)


def _restore(state: State, caller: Caller, object_id: int, what: str) -> RestoredOut:
    restore = restore_conversation if what == "conversation" else restore_message
    try:
        with write_tx(state.engine) as conn:
            restored: Restored | None = restore(conn, caller.studio_id, object_id, state.settings, utcnow())
    except (NotDeleted, ConversationDeleted) as exc:
        raise ConflictException(str(exc)) from None
    except Expired as exc:
        raise GoneException(str(exc)) from None
    except PaidFeature as exc:
        raise PaymentRequiredException(str(exc), extra={"code": "paid_plan_required"}) from None
    if restored is None:
        raise NotFoundException(f"{what} not found (deleted items are erased for good "
                                f"{RETENTION.days} days after their deletion)")
    try:
        record_restored(deletion_log(state.settings), caller.studio_id, restored)
    except OSError:  # restored and committed: a later backup restore would only re-trash it
        log.exception("could not log the restore of %s %d in the deletion log", what, object_id)
    return RestoredOut(kind=restored.kind, id=restored.id, conversation_id=restored.conversation_id,
                       replies_given_up=restored.replies_given_up)


_RESTORE_ANSWERS = [ConflictException, GoneException, PaymentRequiredException, NotFoundException]


class ConversationTrashController(Controller):
    """Restore a conversation; shares its prefix with ConversationController, which deletes."""

    path = "/api/v1/conversations"

    @post("/{conversation_id:str}/restore", sync_to_thread=True, status_code=200, raises=_RESTORE_ANSWERS)
    def restore(self, state: State, caller: NamedDependency[Caller], conversation_id: RowId) -> RestoredOut:
        """Bring a deleted conversation back exactly as it was (paid plans, within 30 days)."""
        return _restore(state, caller, conversation_id, "conversation")


class MessageController(Controller):
    """Delete and restore one message (visible, or held for the studio's decision)."""

    path = "/api/v1/messages"

    @get("/{message_id:str}", sync_to_thread=True, raises=[NotFoundException],
         opt=support_read("message.read", "message {message_id}"))
    def show(self, state: State, caller: NamedDependency[Caller], message_id: RowId) -> MessageOut:
        """One visible message (a reply's `Location`: poll it to follow `delivery`)."""
        with read_tx(state.engine) as conn:
            message = find_message(conn, caller.studio_id, message_id)
        if message is None:
            raise NotFoundException("message not found")
        return message

    @delete("/{message_id:str}", sync_to_thread=True, status_code=200, raises=[NotFoundException])
    def remove(self, state: State, caller: NamedDependency[Caller], message_id: RowId) -> DeletedOut:
        """Hide the message and its attachments at once; the conversation's count and latest
        activity no longer include it. Restorable for 30 days on a paid plan."""
        with write_tx(state.engine) as conn:
            deleted = delete_message(conn, caller.studio_id, message_id, caller.profile_id, utcnow(),
                                     log=deletion_log(state.settings))
        return deleted_answer(deleted, "message")

    @post("/{message_id:str}/restore", sync_to_thread=True, status_code=200, raises=_RESTORE_ANSWERS)
    def restore(self, state: State, caller: NamedDependency[Caller], message_id: RowId) -> RestoredOut:
        """Bring a deleted message back into its conversation (409 while the conversation
        itself is deleted: restore that first)."""
        return _restore(state, caller, message_id, "message")


class TrashController(Controller):
    path = "/api/v1/trash"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller]) -> TrashOut:
        """Whether the studio's plan lets it restore (`restorable`) and for how long deleted
        items stay restorable; the items are listed at /trash/conversations and /trash/messages."""
        with read_tx(state.engine) as conn:
            paid = has_paid_features(conn, caller.studio_id, state.settings, utcnow())
        return TrashOut(restorable=paid, retention_days=RETENTION.days)

    @get("/conversations", sync_to_thread=True)
    def conversations(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
                      cursor: Cursor = None) -> TrashedConversationList:
        """Conversations deleted in the last 30 days, most recently deleted first; restore one
        with POST /api/v1/conversations/{id}/restore."""
        with cursor_checked(), read_tx(state.engine) as conn:
            page = trashed_conversations(conn, caller.studio_id, utcnow(), limit=limit, cursor=cursor)
        return TrashedConversationList(items=[TrashedConversationOut(
            id=c.id, subject=c.subject, guest=GuestOut(id=c.guest_id, email=c.guest_email, name=c.guest_name),
            message_count=c.message_count, last_message_at=c.last_message_at, deleted_at=c.deleted_at,
            deleted_by=c.deleted_by, purge_at=c.purge_at) for c in page.items], next_cursor=page.next_cursor)

    @get("/messages", sync_to_thread=True)
    def messages(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
                 cursor: Cursor = None) -> TrashedMessageList:
        """Messages deleted in the last 30 days from conversations still shown, most recently
        deleted first; restore one with POST /api/v1/messages/{id}/restore."""
        with cursor_checked(), read_tx(state.engine) as conn:
            page = trashed_messages(conn, caller.studio_id, utcnow(), limit=limit, cursor=cursor)
        return TrashedMessageList(items=[TrashedMessageOut(
            id=m.id, conversation_id=m.conversation_id, direction=m.direction, state=m.state,
            from_=PersonOut(email=m.from_email, name=m.from_name), subject=m.subject, excerpt=m.excerpt,
            received_at=m.received_at, deleted_at=m.deleted_at, deleted_by=m.deleted_by, purge_at=m.purge_at)
            for m in page.items], next_cursor=page.next_cursor)
