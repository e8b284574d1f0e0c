"""Taking a backup: a consistent snapshot of the database while the gateway keeps running.

Everything the gateway stores is in the database, raw mail and attachment bytes included
(gateway/store/blobs.py keeps them in the `blob` table), so the snapshot is the whole store. What is
deliberately not in it: the deletion log (it lives beside the backups and must never be rolled
back by a restore; the manifest records only its length and last MAC, to tell a cut-off log) and the secrets in the data directory (secret key, DKIM key), which belong in
the operator's secret store, not in every copy of the mail.

SQLite: the online backup API copies the pages inside one read transaction, a snapshot that
writers do not disturb (WAL); a file copy of a live WAL database could miss committed pages or
tear. PostgreSQL: pg_dump, on a snapshot this module exports from a REPEATABLE READ transaction
so the row counts in the manifest come from exactly the state that was dumped.

The manifest's `snapshot_started_at` is where the deletion log's replay starts after a
restore. An erasure is logged before it commits, so an erasure logged shortly before the
snapshot may still have been in flight and is missing from it. SQLite: the snapshot is fixed
while this module holds the write lock, so every transaction that began earlier has committed
(erasure callers log inside their write transaction). PostgreSQL has no such lock; the time is
moved back to the start of the oldest transaction still open when the snapshot was taken, and a
second more for an entry logged just before its transaction's first statement. Replaying a few
erasures too many is harmless: they are idempotent, and PostgreSQL never reuses an id.
"""
from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from sqlalchemy import Connection, create_engine, func, inspect, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway.backup import pg_client
from gateway.backup.archive import KEY_PURPOSE, BackupError, Manifest, file_entry, write_archive
from gateway.store.db import is_sqlite, normalise_url, schema_revision
from gateway.lifecycle.deletion_log import Anchor, DeletionLogError, deletion_log
from gateway.settings import Settings

log = logging.getLogger(__name__)
SQLITE_FILE = "database.sqlite3"
PG_FILE = "database.pgdump"
PG_REPLAY_MARGIN = timedelta(seconds=1)
# Transactions open on the database at this moment, and for how long the oldest has been open.
_OPEN_FOR = """SELECT coalesce(extract(epoch FROM statement_timestamp() - min(xact_start)), 0)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend' AND xact_start IS NOT NULL"""

OnSnapshot = Callable[[], None]


@dataclass(frozen=True)
class Snapshot:
    started_at: datetime
    revision: str
    rows: dict[str, int]


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: Manifest


def backend_name(url: str) -> str:
    return "sqlite" if is_sqlite(normalise_url(url)) else "postgresql"


def sqlite_path(url: str) -> Path:
    database = make_url(normalise_url(url)).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


def gateway_version() -> str:
    try:
        return metadata.version("studio-mail-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def default_output(settings: Settings, prefix: str = "backup", at: datetime | None = None) -> Path:
    """backup-20261120T100000.123456Z.tar: names sort by time, so the newest is the last."""
    stamp = (at or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return settings.resolved_backup_dir / f"{prefix}-{stamp}.tar"


def take_backup(settings: Settings, output: Path | None = None, *,
                on_snapshot: OnSnapshot | None = None,
                progress: Callable[[str], None] | None = None) -> BackupResult:
    """Snapshot the configured database into one verified backup file.

    `on_snapshot` is called once the snapshot is fixed and before its data is copied: writes
    made from then on are not in the backup (the tests use it to receive mail meanwhile).
    `progress` is told each step as it starts (`gateway backup` shows it on a terminal).
    """
    step = progress or (lambda _: None)
    url = settings.resolved_database_url
    output = (output or default_output(settings)).absolute()
    if output.resolve() == deletion_log(settings).path.resolve():
        raise BackupError(f"{output} is the deletion log; a backup must never replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gateway-backup-", dir=output.parent))
    try:
        step("copying the database")
        if backend_name(url) == "sqlite":
            name, snapshot = SQLITE_FILE, _snapshot_sqlite(sqlite_path(url), work / SQLITE_FILE,
                                                           settings.db_busy_timeout, on_snapshot)
        else:
            name, snapshot = PG_FILE, _snapshot_postgres(url, work / PG_FILE, settings, on_snapshot)
        anchor = _log_anchor(settings)
        manifest = Manifest(gateway_version=gateway_version(), backend=backend_name(url),
                            schema_revision=snapshot.revision, snapshot_started_at=snapshot.started_at,
                            created_at=datetime.now(timezone.utc), files={name: file_entry(work / name)},
                            rows=snapshot.rows, deletion_log_entries=anchor.entries,
                            deletion_log_head=anchor.head)
        step("writing and verifying the archive")
        write_archive(output, manifest, work, settings.derived_key(KEY_PURPOSE))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("backup written to %s (%s, schema %s, %d rows)", output, manifest.backend,
             manifest.schema_revision, sum(manifest.rows.values()))
    return BackupResult(output, manifest)


def _log_anchor(settings: Settings) -> Anchor:
    """Where the deletion log stands, recorded in the manifest so a restore can tell a log cut
    off since. Read after the snapshot: every entry of a change the snapshot holds is in it.
    A log that fails its verification does not stop the backup (the data is worth keeping);
    it is logged as an error and the backup carries no anchor."""
    try:
        return deletion_log(settings).anchor()
    except DeletionLogError as exc:
        log.error("the deletion log fails its verification, the backup records no anchor for it: %s", exc)
        return Anchor(0, "")


def count_rows(conn: Connection) -> dict[str, int]:
    """Rows per table (alembic's bookkeeping left out), as seen by the connection's transaction."""
    names = sorted(n for n in inspect(conn).get_table_names() if n != "alembic_version")
    return {name: conn.execute(select(func.count()).select_from(table(name))).scalar_one() for name in names}


def describe_file(path: Path) -> tuple[str, dict[str, int]]:
    """Schema revision and row counts of a SQLite database file."""
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return schema_revision(conn), count_rows(conn)
    finally:
        engine.dispose()


def _snapshot_sqlite(path: Path, dest: Path, busy_timeout: float, on_snapshot: OnSnapshot | None) -> Snapshot:
    if not path.is_file():
        raise BackupError(f"no database at {path}: nothing to back up")
    uri = f"file:{quote(str(path))}?mode=rw"  # mode=rw: never create a database that is not there
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout)) as source, \
            closing(sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout)) as lock:
        try:
            lock.execute("BEGIN IMMEDIATE")  # waits for every write transaction that began before
        except sqlite3.OperationalError as exc:
            raise BackupError(f"the database stayed locked by writers for {busy_timeout} s ({exc}); "
                              "try again or raise GATEWAY_DB_BUSY_TIMEOUT") from None
        try:
            started_at = datetime.now(timezone.utc)
            source.execute("BEGIN")
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fixes the read snapshot
        finally:
            lock.execute("ROLLBACK")
        if on_snapshot is not None:
            on_snapshot()
        with closing(sqlite3.connect(dest)) as copy:
            source.backup(copy)  # one step (pages=-1): the whole copy inside source's read snapshot
            copy.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
            check = copy.execute("PRAGMA quick_check").fetchone()[0]
        source.execute("COMMIT")
    if check != "ok":
        raise BackupError(f"the snapshot failed SQLite's check ({check}); the database may be damaged")
    revision, rows = describe_file(dest)
    return Snapshot(started_at, revision, rows)


def _snapshot_postgres(url: str, dest: Path, settings: Settings, on_snapshot: OnSnapshot | None) -> Snapshot:
    pg_dump = pg_client.program("pg_dump", settings)
    conninfo, env = pg_client.target(url)
    engine = create_engine(normalise_url(url), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            asked_at = datetime.now(timezone.utc)
            open_for = float(conn.exec_driver_sql(_OPEN_FOR).scalar_one())
            # Read before the snapshot is fixed: a transaction that commits in between is in the
            # snapshot, one that begins in between logs after `asked_at`.
            started_at = asked_at - timedelta(seconds=open_for) - PG_REPLAY_MARGIN
            conn.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            revision, rows = schema_revision(conn), count_rows(conn)
            if on_snapshot is not None:
                on_snapshot()
            # The exported snapshot lives as long as this transaction: pg_dump reads exactly it.
            pg_client.run([pg_dump, "--format=custom", "--no-owner", "--no-privileges", "--no-sync",
                           "--lock-wait-timeout=60s", f"--snapshot={snapshot_id}", f"--file={dest}",
                           f"--dbname={conninfo}"], env, "pg_dump")
            conn.exec_driver_sql("ROLLBACK")
    finally:
        engine.dispose()
    return Snapshot(started_at, revision, rows)
