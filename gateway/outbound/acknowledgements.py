"""The automatic "thanks for your inquiry" a studio can switch on for new inquiries.

Automatic mail must never start a loop between two auto-responders (RFC 3834): none is sent
for automatic mail, bounces or mailing lists (`acknowledge` reacts only to a new, visible,
non-automatic conversation), it carries Auto-Submitted and X-Auto-Response-Suppress, and a
guest gets at most one acknowledgement from a studio per day, however many inquiries.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from gateway.store.db import DriverSQL
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.store.models import utcnow
from gateway.outbound.render import shared_renderer
from gateway.outbound.replies import create_reply
from gateway.events import Chunk, Threaded
from gateway.settings import Settings

ACKNOWLEDGEMENT = "acknowledgement"
PER_GUEST_WINDOW = timedelta(days=1)
_STUDIO = DriverSQL("SELECT acknowledge_inquiries, name, locale FROM studio WHERE id = ?")


def acknowledge(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction (gateway/events.py): a new inquiry may be acknowledged.

    The one door from inbound mail into the outbox: it queues a reply like the studio's own."""
    if event.opened and event.visible and not event.automatic and event.guest_id is not None:
        maybe_acknowledge(conn, studio_id=event.studio_id, conversation_id=event.conversation_id,
                          guest_id=event.guest_id, guest_name=event.sender_name, settings=settings,
                          studios=chunk.memo.setdefault(ACKNOWLEDGEMENT, {}))


def maybe_acknowledge(conn: Connection, *, studio_id: int, conversation_id: int, guest_id: int,
                      guest_name: str, settings: Settings,
                      studios: dict[int, Any] | None = None) -> int | None:
    """Queue an acknowledgement for a new inquiry if the studio wants them; its message row id.

    `studios` caches the studio's answer for the caller's transaction (the processor's chunk of
    a few messages): every new inquiry asks, and a studio switching acknowledgements on or off
    while a chunk runs sees it apply from the next chunk, milliseconds later.
    """
    if studios is not None and studio_id in studios:
        studio = studios[studio_id]
    else:
        studio = _STUDIO(conn, (studio_id,)).fetchone()
        if studios is not None:
            studios[studio_id] = studio
    if studio is None or not studio[0]:
        return None
    _, name, locale = studio
    recent = conn.execute(
        select(MESSAGE.c.id).join(CONVERSATION, CONVERSATION.c.id == MESSAGE.c.conversation_id)
        .where(MESSAGE.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id,
               MESSAGE.c.direction == "outbound", MESSAGE.c.automatic.is_(True),
               MESSAGE.c.received_at >= utcnow() - PER_GUEST_WINDOW).limit(1)
    ).first()
    if recent is not None:
        return None
    text = shared_renderer().acknowledgement(locale=locale, studio_name=name, guest_name=guest_name).text
    created = create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=text,
                           settings=settings, auto_kind=ACKNOWLEDGEMENT)
    return created.message_row_id if created else None
