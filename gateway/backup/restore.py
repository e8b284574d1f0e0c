"""Restoring a backup: verify it, refuse to overwrite data, replace the store, migrate, replay.

The order is what makes a restore safe to attempt: nothing is changed until every checksum has
matched and the store is known to be empty (or `force` says to overwrite it), and the restored
data is migrated to the current schema and then purged of everything erased since the snapshot
(the deletion log, gateway/lifecycle/deletion_log.py), so a restore never brings back a studio, guest,
conversation or message that was erased. The deletion log itself is only read: it lives beside
the backups, not in them, so no restore rolls it back.

SQLite: the whole restore (migration and replay included) runs on a copy beside the database
file, which then replaces it with one rename, and only while no process has the file open: a
gateway still running on the old file would keep writing to a file nobody reads. PostgreSQL:
the old tables are dropped and the dump is loaded in one transaction (psql --single-transaction),
also only while no other session is connected; then the schema is migrated and the erasures
are replayed in one more transaction. If that last step fails, running the restore again
(with --force) finishes it: every step is repeatable.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, inspect, literal, select, table
from sqlalchemy.pool import NullPool

from gateway.backup import pg_client
from gateway.backup.snapshot import PG_FILE, SQLITE_FILE, backend_name, count_rows, sqlite_path
from gateway.backup.archive import BackupError, Manifest, fsync_dir, read_archive
from gateway.store.db import known_revisions, make_engine, migrate, normalise_url, schema_revision, write_tx
from gateway.lifecycle.deletion_log import Erasure, deletion_log
from gateway.lifecycle.erasure import erase_conversation, erase_guest, erase_message, erase_studio
from gateway.settings import Settings

# Everything of the gateway's schema goes before the dump is loaded (in the same transaction):
# `pg_restore --clean` would leave tables that a newer schema added, and migrating would trip
# over them.
_DROP_ALL = """DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT viewname FROM pg_views WHERE schemaname = 'public' LOOP
    EXECUTE format('DROP VIEW IF EXISTS public.%I CASCADE', r.viewname);
  END LOOP;
  FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('DROP TABLE IF EXISTS public.%I CASCADE', r.tablename);
  END LOOP;
  FOR r IN SELECT sequencename FROM pg_sequences WHERE schemaname = 'public' LOOP
    EXECUTE format('DROP SEQUENCE IF EXISTS public.%I CASCADE', r.sequencename);
  END LOOP;
END $$;"""
_OTHER_SESSIONS = """SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"""

_ERASE: dict[str, Callable[[Connection, Erasure, str], bool]] = {
    "studio": lambda conn, e, domain: erase_studio(conn, e.studio_id, domain),
    "guest": lambda conn, e, _: erase_guest(conn, e.studio_id, e.object_id),
    "conversation": lambda conn, e, _: erase_conversation(conn, e.studio_id, e.object_id),
    "message": lambda conn, e, _: erase_message(conn, e.studio_id, e.object_id),
}


@dataclass(frozen=True)
class RestoreSummary:
    manifest: Manifest
    revision: str                  # the schema after migrating
    rows: dict[str, int]
    replayed: int                  # erasures logged since the snapshot, all re-applied
    erased: Counter[str]           # of them, those that found something to erase, by kind


def restore(settings: Settings, archive: Path, *, force: bool = False) -> RestoreSummary:
    url = settings.resolved_database_url
    backend = backend_name(url)
    # SQLite: the copy is prepared beside the database, so that it can replace it by a rename.
    beside = sqlite_path(url).absolute().parent if backend == "sqlite" else None
    if beside is not None:
        beside.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gateway-restore-", dir=beside))
    try:
        manifest = read_archive(archive, work)
        _check_restorable(manifest, backend)
        if not force and not store_is_empty(url):
            raise BackupError("the database already holds studios or mail; restoring would replace them. "
                              "Nothing was changed. Run again with --force to overwrite it.")
        entries = deletion_log(settings).entries(since=manifest.snapshot_started_at)
        if backend == "sqlite":
            revision, rows, erased = _restore_sqlite(work / SQLITE_FILE, sqlite_path(url), entries, settings)
        else:
            revision, rows, erased = _restore_postgres(work / PG_FILE, url, entries, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RestoreSummary(manifest, revision, rows, len(entries), erased)


def store_is_empty(url: str) -> bool:
    """No studio and no inbound mail: nothing a restore could destroy."""
    if backend_name(url) == "sqlite" and not sqlite_path(url).exists():
        return True
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            return not any(conn.execute(select(literal(1)).select_from(table(name)).limit(1)).first()
                           for name in ("studio", "inbound_mail") if name in names)
    finally:
        engine.dispose()


def replay(engine: Engine, entries: list[Erasure], mail_domain: str) -> Counter[str]:
    """Re-apply logged erasures in one transaction; counts those that still found something."""
    erased: Counter[str] = Counter()
    with write_tx(engine) as conn:
        for entry in entries:
            if _ERASE[entry.kind](conn, entry, mail_domain):
                erased[entry.kind] += 1
    return erased


def _check_restorable(manifest: Manifest, backend: str) -> None:
    if manifest.backend != backend:
        raise BackupError(f"this is a {manifest.backend} backup and the configured database is {backend}; "
                          f"restore it into a {manifest.backend} database (nothing was changed)")
    expected = SQLITE_FILE if backend == "sqlite" else PG_FILE
    if expected not in manifest.files:
        raise BackupError(f"the backup lists no {expected}; nothing was changed")
    if not set(manifest.schema_revision.split(",")) <= known_revisions():
        raise BackupError(f"the backup's schema revision {manifest.schema_revision!r} is unknown to this gateway "
                          f"(taken by version {manifest.gateway_version}); restore it with that version or newer")


Outcome = tuple[str, dict[str, int], Counter[str]]   # schema revision, rows per table, erasures by kind


def _migrate_and_replay(url: str, entries: list[Erasure], settings: Settings) -> Outcome:
    migrate(url)
    engine = make_engine(url, busy_timeout=settings.db_busy_timeout, pool_size=1)
    try:
        erased = replay(engine, entries, settings.mail_domain)
        with engine.connect() as conn:
            return schema_revision(conn), count_rows(conn), erased
    finally:
        engine.dispose()


def _restore_sqlite(copy: Path, target: Path, entries: list[Erasure], settings: Settings) -> Outcome:
    outcome = _migrate_and_replay(f"sqlite:///{copy}", entries, settings)
    with closing(sqlite3.connect(copy, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, nothing beside it
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if check != "ok":
        raise BackupError(f"the restored database failed SQLite's integrity check ({check}); nothing was changed")
    with copy.open("rb+") as fh:
        os.fsync(fh.fileno())
    _replace_sqlite_file(copy, target)
    return outcome


def _replace_sqlite_file(copy: Path, target: Path) -> None:
    if target.exists():
        # Leaving WAL mode needs the only connection to the file: it fails while a gateway has it open.
        with closing(sqlite3.connect(f"file:{quote(str(target))}?mode=rw", uri=True,
                                     isolation_level=None, timeout=0)) as conn:
            try:
                mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            except sqlite3.OperationalError:
                mode = "locked"
        if mode != "delete":
            raise BackupError(f"{target} is open in another process (a running gateway?); stop every gateway "
                              "process using it and run the restore again. Nothing was changed.")
        os.chmod(copy, stat.S_IMODE(target.stat().st_mode))  # the operator's choice of who may read the mail
    # A -wal left beside the new file would be replayed into it as if it were its own.
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    os.replace(copy, target)
    fsync_dir(target.parent)


def _restore_postgres(dump: Path, url: str, entries: list[Erasure], settings: Settings) -> Outcome:
    pg_restore, psql = pg_client.program("pg_restore", settings), pg_client.program("psql", settings)
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            others = conn.exec_driver_sql(_OTHER_SESSIONS).scalar_one()
    finally:
        engine.dispose()
    if others:
        raise BackupError(f"{others} other session(s) are connected to the database (a running gateway?); "
                          "stop every gateway process using it and run the restore again. Nothing was changed.")
    conninfo, env = pg_client.target(url)
    pg_client.pipe([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--file=-", str(dump)],
                   [psql, "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--single-transaction",
                    f"--command={_DROP_ALL}", "--file=-", f"--dbname={conninfo}"],
                   env, "loading the dump (the database is unchanged)")
    return _migrate_and_replay(url, entries, settings)
