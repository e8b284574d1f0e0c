"""Read and unread: whether the studio has seen a conversation's latest mail.

A conversation is unread while `read_at` is empty or older than its latest message (reading.py),
so marking it read stamps `read_at` now, and marking it unread clears it: the inbox shows it in
bold again until someone opens it. The API (POST .../read) and the messenger's pages (opening
a conversation, its "mark unread" button) both come here, scoped to the caller's studio, and
each change is a `conversation.updated` event (`change` read or unread) for the live pages.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, update

from gateway.access.visibility import LIVE_CONVERSATION
from gateway.eventlog import CONVERSATION_UPDATED, record as record_event
from gateway.store.tables import CONVERSATION


def mark_read(conn: Connection, studio_id: int, conversation_id: int, now: datetime, *, read: bool = True) -> bool:
    """Mark the studio's shown conversation read (now) or unread; False if it has no such one."""
    found = conn.execute(update(CONVERSATION).where(
        CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION
    ).values(read_at=now if read else None, updated_at=now)).rowcount
    if found:
        record_event(conn, studio_id, CONVERSATION_UPDATED, now, conversation_id=conversation_id,
                     change="read" if read else "unread")
    return bool(found)
