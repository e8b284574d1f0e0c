"""What the studio sees: a conversation until it is deleted, a message until it or its
conversation is. Soft deletion (gateway/lifecycle/trash.py) only sets deleted_at; these predicates are
how every read of the API, the threader and the outbox's claim leave deleted items out, so a
deleted item disappears everywhere at once and comes back unchanged when restored.

A conversation's message_count and last_message_at are derived from the messages it shows:
deleting its newest message moves its activity back (so a conversation the studio had read
is read again, as if the deleted mail had never come), and restoring moves it forward again.
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, exists, func, select, update

from gateway.store.models import utcnow
from gateway.store.tables import CONVERSATION, MESSAGE


LIVE_CONVERSATION: ColumnElement[bool] = CONVERSATION.c.deleted_at.is_(None)
LIVE_MESSAGE: ColumnElement[bool] = MESSAGE.c.deleted_at.is_(None)
# For queries on messages alone (held list, downloads, outbox): the message is not deleted and
# neither is its conversation. correlate_except keeps the conversation inside the subquery
# even where the outer query joins it too.
IN_LIVE_CONVERSATION: ColumnElement[bool] = exists(
    select(CONVERSATION.c.id).where(CONVERSATION.c.id == MESSAGE.c.conversation_id, LIVE_CONVERSATION)
    .correlate_except(CONVERSATION))
SHOWN_MESSAGE: ColumnElement[bool] = LIVE_MESSAGE & IN_LIVE_CONVERSATION


def recount(conn: Connection, conversation_id: int) -> None:
    """Set message_count and last_message_at from the conversation's shown (visible, not
    deleted) messages; with none left, its activity is its creation."""
    count, newest = conn.execute(select(func.count(), func.max(MESSAGE.c.received_at)).where(
        MESSAGE.c.conversation_id == conversation_id, MESSAGE.c.state == "visible", LIVE_MESSAGE)).one()
    conn.execute(update(CONVERSATION).where(CONVERSATION.c.id == conversation_id).values(
        message_count=count, last_message_at=newest if newest is not None else CONVERSATION.c.created_at,
        updated_at=utcnow()))
