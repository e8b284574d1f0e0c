"""How long notification bookkeeping is kept: NOTIFICATION_RETENTION, then the purge drops it.

Every guest message leaves one `notification` row per profile that hears of it, and every
mail that told them an outbound message row with its outbox job (gateway/outbound/notifications.py).
Nothing read them after a while, and they grew with the mail. They are needed for:
- the storm limit: the rows of the last 5 minutes;
- the hourly digest: the rows still waiting (a paused profile's wait until it resumes);
- composing: the outbox renders a notification's body from its rows when it sends, and retries
  for GATEWAY_OUTBOUND_RETRY_FOR (2 days by default);
- the pause: notification mails that bounced or failed count against their profile until it
  resumes (gateway/outbound/notify_preferences.bounced_since).

So the hourly purge (gateway/lifecycle/purge.py) drops what is older than 30 days, far past
all of these, except what the pause still counts: the rows of a bounced or failed mail, and that
mail (few: a profile is paused after 3). A row still waiting after 30 days is dropped too: a
digest never tells of mail a month old (the messenger shows it). Webhook deliveries are
dropped by their own worker after 30 days (gateway/outbound/webhooks.KEPT).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, Select, delete, exists, select

from gateway.outbound.notifications import DIGEST_MAIL, NOTIFICATION_MAIL
from gateway.store.db import write_tx
from gateway.store.tables import MESSAGE, NOTIFICATION, OUTBOUND_JOB

NOTIFICATION_RETENTION = timedelta(days=30)
BATCH = 1000   # rows per transaction: SQLite's one write lock is never held for long
_COUNTED = ("bounced", "failed")   # what the pause counts (notify_preferences.bounced_since)
_DONE = ("sent", "cancelled")      # what nothing needs once old (cancelled: gateway/outbound/outbox.WITHDRAWN)


def purge_notifications(engine: Engine, now: datetime) -> int:
    """Drop notification rows and sent notification mails older than NOTIFICATION_RETENTION,
    in small transactions; how many rows of either. Repeatable."""
    cutoff = now - NOTIFICATION_RETENTION
    counted = exists(select(MESSAGE.c.id).where(MESSAGE.c.id == NOTIFICATION.c.mail_ref,
                                                MESSAGE.c.delivery.in_(_COUNTED)))
    old_rows = select(NOTIFICATION.c.id).where(NOTIFICATION.c.created_at < cutoff, ~counted).limit(BATCH)
    # Sent (or withdrawn), and no kept row refers to it (a bounce that came later made it
    # `bounced`: kept).
    old_mails = select(MESSAGE.c.id).where(
        MESSAGE.c.conversation_id.is_(None), MESSAGE.c.direction == "outbound",
        MESSAGE.c.auto_kind.in_((NOTIFICATION_MAIL, DIGEST_MAIL)), MESSAGE.c.received_at < cutoff,
        MESSAGE.c.delivery.in_(_DONE),
        ~exists(select(NOTIFICATION.c.id).where(NOTIFICATION.c.mail_ref == MESSAGE.c.id))).limit(BATCH)
    dropped = 0
    for _ in range(10_000):   # bounded: a round never runs away
        with write_tx(engine) as conn:
            rows = _drop_rows(conn, old_rows)
            mails = _drop_mails(conn, old_mails)
        dropped += rows + mails
        if rows < BATCH and mails < BATCH:
            break
    return dropped


def _drop_rows(conn: Connection, query: Select[tuple[int]]) -> int:
    ids = list(conn.execute(query).scalars())
    if ids:
        conn.execute(delete(NOTIFICATION).where(NOTIFICATION.c.id.in_(ids)))
    return len(ids)


def _drop_mails(conn: Connection, query: Select[tuple[int]]) -> int:
    ids = list(conn.execute(query).scalars())
    if ids:
        conn.execute(delete(OUTBOUND_JOB).where(OUTBOUND_JOB.c.message_id.in_(ids)))
        conn.execute(delete(MESSAGE).where(MESSAGE.c.id.in_(ids)))
    return len(ids)
