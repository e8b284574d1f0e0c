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
only while no other session is connected, the current `public` schema is set aside under
another name (one transaction), and `pg_restore --single-transaction` loads the dump straight
into a fresh `public` schema: the dump is never turned into SQL text for psql, so nothing in
it can reach psql's meta-commands (`\\!` runs a shell). If loading fails, the fresh schema is
dropped and the old one renamed back (one transaction): nothing was changed. Once loaded, the
old schema is dropped, the schema is migrated and the log is replayed in one more
transaction. If that last step fails, running the restore again (with --force) finishes it:
every step is repeatable.

Trust: the backup's signature is checked first (gateway/backup/archive.py), and the deletion
log's chain and its anchor in the manifest (gateway/lifecycle/deletion_log.py): a tampered
backup or log is refused before anything is changed.
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
from gateway.backup.archive import KEY_PURPOSE, BackupError, Manifest, fsync_dir, read_archive
from gateway.store.db import known_revisions, make_engine, migrate, normalise_url, schema_revision, write_tx
from gateway.lifecycle.deletion_log import TRASH_EVENTS, Anchor, DeletionLogError, Erasure, deletion_log
from gateway.lifecycle.erasure import erase_conversation, erase_guest, erase_message, erase_studio
from gateway.lifecycle.trash import replay_trash_event
from gateway.settings import Settings

# The whole current schema is set aside, not dropped table by table: `pg_restore --clean` would
# leave tables that a newer schema added (and migrating would trip over them), and setting it
# aside is what lets a failed load be undone after pg_restore's own transaction has ended.
SET_ASIDE = "gateway_before_restore"
_SET_ASIDE = [f"ALTER SCHEMA public RENAME TO {SET_ASIDE}", "CREATE SCHEMA public"]
_PUT_BACK = ["DROP SCHEMA public CASCADE", f"ALTER SCHEMA {SET_ASIDE} RENAME TO public"]
_DROP_SET_ASIDE = [f"DROP SCHEMA {SET_ASIDE} CASCADE"]
_OTHER_SESSIONS = """SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"""

_ERASE: dict[str, Callable[[Connection, Erasure, str], bool]] = {
    "studio": lambda conn, e, domain: erase_studio(conn, e.studio_id, domain),
    "guest": lambda conn, e, domain: erase_guest(conn, e.studio_id, e.object_id, domain),
    "conversation": lambda conn, e, _: erase_conversation(conn, e.studio_id, e.object_id),
    "message": lambda conn, e, _: erase_message(conn, e.studio_id, e.object_id),
    **{kind: lambda conn, e, _: replay_trash_event(conn, e) for kind in TRASH_EVENTS},
}


@dataclass(frozen=True)
class RestoreSummary:
    manifest: Manifest
    revision: str                  # the schema after migrating
    rows: dict[str, int]
    replayed: int                  # erasures logged since the snapshot, all re-applied
    erased: Counter[str]           # of them, those that found something to erase, by kind
    trash_replayed: int = 0        # moves into and out of the trash logged since, re-applied


def restore(settings: Settings, archive: Path, *, force: bool = False, allow_unsigned: bool = False,
            progress: Callable[[str], None] | None = None) -> RestoreSummary:
    """Restore `archive` into the configured database. `allow_unsigned` admits a backup taken
    before backups were signed (summary.manifest.signed is then False: say so loudly).
    `progress` is told each step as it starts (`gateway restore` shows it on a terminal)."""
    step = progress or (lambda _: None)
    url = settings.resolved_database_url
    backend = backend_name(url)
    # SQLite: the copy is prepared beside the database, so that it can replace it by a rename.
    beside = sqlite_path(url).absolute().parent if backend == "sqlite" else None
    if beside is not None:
        beside.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gateway-restore-", dir=beside))
    try:
        step("verifying the backup")
        manifest = read_archive(archive, work, settings.derived_key(KEY_PURPOSE), allow_unsigned=allow_unsigned)
        _check_restorable(manifest, backend)
        if not force and not store_is_empty(url):
            raise BackupError("the database already holds studios or mail; restoring would replace them. "
                              "Nothing was changed. Run again with --force to overwrite it.")
        entries = _log_since(settings, manifest)
        step(f"loading, migrating and replaying {len(entries)} logged erasure(s)")
        if backend == "sqlite":
            revision, rows, erased = _restore_sqlite(work / SQLITE_FILE, sqlite_path(url), entries, settings)
        else:
            revision, rows, erased = _restore_postgres(work / PG_FILE, url, entries, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    trash = sum(1 for e in entries if e.kind in TRASH_EVENTS)
    return RestoreSummary(manifest, revision, rows, len(entries) - trash,
                          Counter({k: n for k, n in erased.items() if k not in TRASH_EVENTS}), trash)


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


def _log_since(settings: Settings, manifest: Manifest) -> list[Erasure]:
    """The verified deletion log entries to replay; BackupError if the log was tampered with."""
    erasures = deletion_log(settings)
    try:
        erasures.check_anchor(Anchor(manifest.deletion_log_entries, manifest.deletion_log_head))
        return erasures.events(since=manifest.snapshot_started_at)
    except DeletionLogError as exc:
        raise BackupError(f"{exc}. Restoring with it could bring back what was erased; nothing was changed. "
                          "Put back the deletion log from your copy and run the restore again.") from None


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
    pg_restore = pg_client.program("pg_restore", settings)
    engine = create_engine(normalise_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            others = conn.exec_driver_sql(_OTHER_SESSIONS).scalar_one()
            left_over = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %(name)s", {"name": SET_ASIDE}).scalar_one()
        if others:
            raise BackupError(f"{others} other session(s) are connected to the database (a running gateway?); "
                              "stop every gateway process using it and run the restore again. Nothing was changed.")
        if left_over:
            raise BackupError(f"the schema {SET_ASIDE} exists: an earlier restore was interrupted, and it holds "
                              "the data from before it. Look at it, then drop it (or rename it back to public) "
                              "and run the restore again. Nothing was changed.")
        _in_one_transaction(engine, _SET_ASIDE)
        conninfo, env = pg_client.target(url)
        try:
            pg_client.run([pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                           f"--dbname={conninfo}", str(dump)], env, "loading the dump (the database is unchanged)")
        except BaseException:
            _in_one_transaction(engine, _PUT_BACK)
            raise
        _in_one_transaction(engine, _DROP_SET_ASIDE)
    finally:
        engine.dispose()
    return _migrate_and_replay(url, entries, settings)


def _in_one_transaction(engine: Engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
