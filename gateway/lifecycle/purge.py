"""The purge: what the studio deleted 30 days ago or more is erased for good.

Runs hourly in the worker (GATEWAY_PURGE_INTERVAL_HOURS) and as `gateway purge [--dry-run]`.
It also drops the Idempotency-Key answers older than a day (gateway/access/idempotency.py), and
notification rows and mails older than 30 days (gateway/outbound/notify_retention.py).
gateway/lifecycle/erasure.py removes the rows, raw mail and attachment bytes; each erasure is appended
to the deletion log first (fsync'd before the erasure commits), so a backup restored later
replays it and the purged data stays gone. If the log cannot be written, nothing is erased.

Work goes studio by studio and in small batches, each its own transaction: SQLite's single
write lock is never held for long, and on PostgreSQL the candidates are claimed with
`FOR UPDATE SKIP LOCKED`, so two workers purging at once never erase the same item twice, and
a restore that is committing is not purged under it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from sqlalchemy import Connection, Engine, Table, select

from gateway.access import idempotency
from gateway.store.db import read_tx, write_tx
from gateway.lifecycle.deletion_log import DeletionLog, Kind, deletion_log
from gateway.eventlog import purge_events
from gateway.lifecycle.erasure import erase_conversation, erase_message
from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.lifecycle.trash import RETENTION
from gateway.outbound.notify_retention import purge_notifications
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.store.tables import STUDIO

log = logging.getLogger(__name__)
BATCH = 50
# Conversations first: their messages go with them, so only messages deleted on their own remain.
_KINDS: tuple[tuple[Kind, Table, Callable[[Connection, int, int], bool]], ...] = (
    ("conversation", CONVERSATION, erase_conversation),
    ("message", MESSAGE, erase_message),
)


@dataclass
class PurgeReport:
    cutoff: datetime                                                   # deleted at or before this
    conversations: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    dry_run: bool = False
    idempotency_keys: int = 0                                          # expired stored answers deleted
    notifications: int = 0                                             # notification rows and mails dropped

    def ids(self, kind: Kind) -> list[int]:
        return self.conversations if kind == "conversation" else self.messages


def purge(engine: Engine, settings: Settings, now: datetime | None = None, *, dry_run: bool = False,
          erasures: DeletionLog | None = None, progress: Callable[[str], None] | None = None) -> PurgeReport:
    """Erase every conversation and message deleted at or before `now` minus 30 days; with
    dry_run, only say which. `erasures` is the deletion log (the configured one by default).
    `progress` is told which studio of how many is next (`gateway purge` on a terminal)."""
    now = now or utcnow()
    erasures = erasures or deletion_log(settings)
    report = PurgeReport(cutoff=now - RETENTION, dry_run=dry_run)
    if not dry_run:  # the event log keeps 24 hours (gateway/eventlog.py); streams older than that reset
        with write_tx(engine) as conn:
            purge_events(conn, now)
    with read_tx(engine) as conn:
        studio_ids = list(conn.execute(select(STUDIO.c.id).order_by(STUDIO.c.id)).scalars())
    for number, studio_id in enumerate(studio_ids, 1):
        if progress is not None:
            progress(f"studio {number}/{len(studio_ids)}, {len(report.conversations)} conversation(s) and "
                     f"{len(report.messages)} message(s) so far")
        for kind, table, erase in _KINDS:
            due = (select(table.c.id).where(table.c.studio_id == studio_id, table.c.deleted_at <= report.cutoff)
                   .order_by(table.c.id))
            if dry_run:
                with read_tx(engine) as conn:
                    report.ids(kind).extend(conn.execute(due).scalars())
                continue
            while True:
                with write_tx(engine) as conn:
                    ids = list(conn.execute(due.limit(BATCH).with_for_update(skip_locked=True)).scalars())
                    for object_id in ids:
                        erasures.append(kind, studio_id, object_id, at=now)   # before the erasure, always
                        erase(conn, studio_id, object_id)
                report.ids(kind).extend(ids)
                if len(ids) < BATCH:
                    break
    if not dry_run:
        with write_tx(engine) as conn:  # Idempotency-Key answers past their 24 hours (one index range)
            report.idempotency_keys = idempotency.purge_expired(conn, now)
        report.notifications = purge_notifications(engine, now)
    if report.conversations or report.messages:
        log.info("purge: %d conversation(s) and %d message(s) deleted before %s %s",
                 len(report.conversations), len(report.messages), report.cutoff.isoformat(),
                 "would be erased" if dry_run else "erased")
    return report

