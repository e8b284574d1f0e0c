"""What /readyz says about outgoing mail: the outbox backlog, and whether the relay answered.

/readyz may run in another process than the outbox (`gateway web` beside `gateway worker`), so
every answer comes from the jobs' rows, never from a worker's memory. Each query walks
ix_outbound_job_status_due within one status, so a probe every few seconds costs the backlog,
not the history of sent mail.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, func, select

from gateway.outbound.outbox import COMPOSE_FAILED
from gateway.outbound.relay import UNREACHABLE
from gateway.store.tables import INBOUND, OUTBOUND_JOB

WAITING = ("queued", "sending")


@dataclass(frozen=True)
class OutboxBacklog:
    waiting: int                    # replies and notifications queued or being sent
    oldest: datetime | None         # when the oldest of them was queued


def outbox_backlog(conn: Connection) -> OutboxBacklog:
    row = conn.execute(select(func.count(), func.min(OUTBOUND_JOB.c.created_at))
                       .where(OUTBOUND_JOB.c.status.in_(WAITING))).one()
    return OutboxBacklog(int(row[0]), row[1])


def quarantined_count(conn: Connection) -> int:
    """Messages set aside in the quarantine (/readyz and /metrics both show it)."""
    return int(conn.execute(select(func.count()).select_from(INBOUND)
                            .where(INBOUND.c.status == "quarantined")).scalar_one())


def relay_unreachable_since(conn: Connection) -> datetime | None:
    """When the relay last could not be reached, if no attempt since got an answer from it.

    A temporary failure keeps the attempt's time in `claimed_at` (gateway/outbound/outbox.py,
    `_record`). An answer after it is a reply sent, or one refused by the relay itself (a 4xx
    or 5xx is an answer: the relay is up). A job sent after time T was claimed after T, and was
    due after T when it was new or retried: the range on next_attempt_at keeps the look-up on
    the index instead of every sent job ever."""
    since = conn.execute(select(func.max(OUTBOUND_JOB.c.claimed_at)).where(
        OUTBOUND_JOB.c.status == "queued", OUTBOUND_JOB.c.last_error.like(UNREACHABLE + "%"))).scalar()
    if since is None:
        return None
    sent_after = select(OUTBOUND_JOB.c.id).where(
        OUTBOUND_JOB.c.status == "sent", OUTBOUND_JOB.c.next_attempt_at >= since,
        OUTBOUND_JOB.c.sent_at > since).limit(1)
    answered_after = select(OUTBOUND_JOB.c.id).where(
        OUTBOUND_JOB.c.status.in_(("queued", "failed")), OUTBOUND_JOB.c.claimed_at > since,
        and_(OUTBOUND_JOB.c.last_error.is_not(None),
             OUTBOUND_JOB.c.last_error.not_like(f"%{UNREACHABLE}%"),       # also "gave up ...; last: relay unreachable"
             OUTBOUND_JOB.c.last_error.not_like(f"{COMPOSE_FAILED}%"))     # never reached the relay
    ).limit(1)
    if conn.execute(sent_after).first() is not None or conn.execute(answered_after).first() is not None:
        return None
    return since
