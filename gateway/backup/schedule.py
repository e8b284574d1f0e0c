"""Scheduled backups in the worker: one every GATEWAY_BACKUP_INTERVAL_HOURS, the newest
GATEWAY_BACKUP_KEEP kept in GATEWAY_BACKUP_DIR.

Several workers may run on one PostgreSQL database (the Procfile's scale-out). Each looks on
its own timer, but only under the backup lock, and the time of the last backup is a row in the
database (`backup_schedule`) read under that lock: the first worker to find a backup due takes
it, the others then find it done, wherever they run. The lock is a session-level advisory lock
on PostgreSQL, which the server drops when its worker dies mid-backup; on SQLite, whose
processes share one host, it is an flock on a file in the backup directory, which the kernel
drops likewise. A backup that failed (or whose worker died) is tried again after RETRY_AFTER.

Retention deletes only scheduled backups (`scheduled-*.tar`): never a backup taken by hand and
never the deletion log beside them.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Literal

from sqlalchemy import Engine, select, update

from gateway.backup.snapshot import default_output, take_backup
from gateway.store.db import insert_ignore, is_sqlite, read_tx, write_tx
from gateway.settings import Settings
from gateway.store.tables import BACKUP_SCHEDULE

log = logging.getLogger(__name__)
NAME = "scheduled"
PREFIX = "scheduled"
LOCK_KEY = 724101            # advisory lock id; the migrations use 724100
RETRY_AFTER = timedelta(minutes=15)
CHECK_EVERY = 60.0           # seconds between looks at the schedule

Outcome = Literal["off", "busy", "not-due", "taken", "failed"]


@dataclass(frozen=True)
class Tick:
    outcome: Outcome
    path: Path | None = None
    error: str | None = None


class BackupScheduler:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.interval = timedelta(hours=settings.backup_interval_hours)
        self.ticked = threading.Event()   # set after each look at the schedule (health checks, tests)
        self._stop: asyncio.Event | None = None

    def tick(self, now: datetime | None = None) -> Tick:
        """Take a backup if one is due and no other worker is taking it; prune old ones."""
        if not self.interval:
            return Tick("off")
        now = now or datetime.now(timezone.utc)
        with self.lock() as held:
            if not held:
                return Tick("busy")
            if not self._due(now):
                return Tick("not-due")
            self._record(last_attempt_at=now)
            try:
                path = take_backup(self.settings, default_output(self.settings, PREFIX, now)).path
            except Exception as exc:  # a background task: record the reason, try again later
                log.exception("scheduled backup failed")
                self._record(last_error=f"{type(exc).__name__}: {exc}"[:2000])
                return Tick("failed", error=str(exc))
            self._record(last_success_at=now, last_file=str(path), last_error=None)
            for old in prune(self.settings.resolved_backup_dir, self.settings.backup_keep):
                log.info("deleted old scheduled backup %s", old)
            return Tick("taken", path=path)

    @contextmanager
    def lock(self) -> Iterator[bool]:
        """The backup lock, without waiting: yields whether this worker holds it."""
        if is_sqlite(self.engine):
            folder = self.settings.resolved_backup_dir
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / ".schedule.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)  # releases the flock
            return
        # AUTOCOMMIT: the lock is the session's, and no transaction stays open during the backup.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            held = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({LOCK_KEY})").scalar_one())
            try:
                yield held
            finally:
                if held:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({LOCK_KEY})")

    async def run(self) -> None:
        """The worker's loop: look at the schedule now and then every CHECK_EVERY seconds."""
        self._stop = asyncio.Event()
        wait = min(CHECK_EVERY, self.interval.total_seconds())
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # the database may be down for a while: keep the worker alive
                log.exception("could not check the backup schedule")
            self.ticked.set()
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except TimeoutError:
                pass

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def _due(self, now: datetime) -> bool:
        with write_tx(self.engine) as conn:
            conn.execute(insert_ignore(conn, BACKUP_SCHEDULE).values(name=NAME))
        with read_tx(self.engine) as conn:
            row = conn.execute(select(BACKUP_SCHEDULE).where(BACKUP_SCHEDULE.c.name == NAME)).one()
        if row.last_success_at is not None and now < row.last_success_at + self.interval:
            return False
        failed = row.last_attempt_at is not None and (row.last_success_at is None
                                                      or row.last_attempt_at > row.last_success_at)
        return not (failed and now < row.last_attempt_at + min(self.interval, RETRY_AFTER))

    def _record(self, **values: object) -> None:
        with write_tx(self.engine) as conn:
            conn.execute(update(BACKUP_SCHEDULE).where(BACKUP_SCHEDULE.c.name == NAME).values(**values))


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` scheduled backups (their names sort by time)."""
    old = sorted(folder.glob(f"{PREFIX}-*.tar"))[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old
