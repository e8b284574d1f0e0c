"""Sending a failed reply again, when the studio asks (the messenger's "retry" button).

A reply is `failed` after a permanent refusal (5xx) or after GATEWAY_OUTBOUND_RETRY_FOR of
temporary ones (outbox.py). The studio may know better: the guest fixed their mailbox, the
relay's outage is over. Retrying puts the same job back in the queue, due now, with the same
Message-ID (a guest who somehow got the first attempt sees one message), and starts its retry
window afresh: `created_at` is when the window began, and keeping the old one would give up
again at the first temporary failure. `last_error` stays until the next attempt replaces it, so
the page can still say what went wrong before.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from gateway.access.visibility import SHOWN_MESSAGE
from gateway.eventlog import DELIVERY_UPDATED, record as record_event
from gateway.store.tables import MESSAGE, OUTBOUND_JOB


class NotFailed(ValueError):
    """The reply is queued, being sent or sent: there is nothing to retry."""


def retry_failed(conn: Connection, studio_id: int, message_id: int, now: datetime) -> int | None:
    """Queue the studio's failed reply `message_id` again; its conversation id, or None when the
    studio has no such reply shown. Raises NotFailed when it has not failed. Only `WHERE status =
    'failed'` changes, so two clicks queue it once."""
    message = conn.execute(select(MESSAGE.c.conversation_id).where(
        MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.direction == "outbound",
        SHOWN_MESSAGE)).first()
    if message is None:
        return None
    job_id = conn.execute(update(OUTBOUND_JOB).where(
        OUTBOUND_JOB.c.message_id == message_id, OUTBOUND_JOB.c.studio_id == studio_id,
        OUTBOUND_JOB.c.status == "failed",
    ).values(status="queued", attempts=0, created_at=now, next_attempt_at=now, claimed_at=None)
        .returning(OUTBOUND_JOB.c.id)).scalar()
    if job_id is None:
        raise NotFailed(f"reply {message_id} has not failed; only a failed reply can be sent again")
    conn.execute(update(MESSAGE).where(MESSAGE.c.id == message_id).values(delivery="queued"))
    record_event(conn, studio_id, DELIVERY_UPDATED, now, conversation_id=message.conversation_id,
                 message_id=message_id, job_id=job_id, delivery="retrying")
    return int(message.conversation_id)
