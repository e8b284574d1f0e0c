"""The automatic "thanks for your inquiry" a studio can switch on for new inquiries.

Automatic mail must never start a loop between two auto-responders (RFC 3834): none is sent
for automatic mail, bounces or mailing lists (the threader only calls this for a new,
non-automatic conversation), it carries Auto-Submitted and X-Auto-Response-Suppress, and a
guest gets at most one acknowledgement from a studio per day, however many inquiries.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, select

from gateway.db import DriverSQL
from gateway.ingest import CONVERSATION, MESSAGE
from gateway.models import utcnow
from gateway.render import shared_renderer
from gateway.replies import create_reply
from gateway.settings import Settings

ACKNOWLEDGEMENT = "acknowledgement"
PER_GUEST_WINDOW = timedelta(days=1)
_STUDIO = DriverSQL("SELECT acknowledge_inquiries, name, locale FROM studio WHERE id = ?")


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
