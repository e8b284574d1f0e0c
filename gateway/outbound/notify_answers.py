"""A profile's answer to a notification mail, sent on to the guest like an in-app reply.

The threader files the answer into its conversation as held mail and records in its
thread_rule how the sender check went (gateway/inbound/threader._notification_answer). This
"message threaded" reaction sends a passing one on through `create_reply`, the reply API's own
code: the guest gets it from the studio, threaded, with its attachments, and the quoted
notification already stripped (the threader keeps the new text only, gateway/inbound/quotes.py).
The profile's own copy is then set aside (`rejected`): the conversation shows the reply that
went out, not the mail it came in. A failing one stays held, its thread_rule naming the reason
(`notify_answer_stranger`, `_disconnected`, `_unauthenticated`), for the studio to see.
"""
from __future__ import annotations

import logging

from sqlalchemy import Connection, select, update

from gateway.events import Chunk, Threaded
from gateway.outbound.replies import ReplyError, Upload, create_reply
from gateway.settings import Settings
from gateway.store.tables import ATTACHMENT, BLOB, MESSAGE

log = logging.getLogger(__name__)
NOTIFY_ANSWER = "notify_answer"   # the thread_rule of an answer that passed the check


def answer_by_mail(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction: send a profile's checked answer on to the guest."""
    if event.rule != NOTIFY_ANSWER or event.automatic:
        return
    text = conn.execute(select(MESSAGE.c.text).where(MESSAGE.c.id == event.message_id)).scalar_one()
    uploads = [Upload(a.filename, a.content_type, a.data) for a in conn.execute(
        select(ATTACHMENT.c.filename, ATTACHMENT.c.content_type, BLOB.c.data)
        .join(BLOB, BLOB.c.sha256 == ATTACHMENT.c.sha256)
        .where(ATTACHMENT.c.message_id == event.message_id, ATTACHMENT.c.inline.is_(False))
        .order_by(ATTACHMENT.c.id))]
    try:
        reply = create_reply(conn, studio_id=event.studio_id, conversation_id=event.conversation_id, text=text,
                             settings=settings, uploads=uploads)
    except ReplyError as exc:   # an empty answer (only the quote), or too large: stays held
        log.info("a notification answer (message %d) was not sent: %s", event.message_id, exc)
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == event.message_id)
                     .values(thread_rule=f"{NOTIFY_ANSWER}_{exc.code}"[:32]))
        return
    if reply is not None:
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == event.message_id).values(state="rejected"))
