"""Backups and restores (gateway/backup/snapshot.py, gateway/backup/restore.py, gateway/backup/schedule.py).

Mail arrives over real SMTP into a real database (SQLite file, and PostgreSQL when configured);
backups are taken while the gateway runs and restored into a fresh, empty store: a new SQLite
file, or a throwaway PostgreSQL database (never the `test` database itself). Erasures are made
as their callers make them: the deletion log entry first, inside the write transaction.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine, func, select, text

from gateway.backup.snapshot import SQLITE_FILE, take_backup
from gateway.backup.archive import KEY_PURPOSE, MANIFEST, BackupError, Manifest, read_archive, write_archive
from gateway.backup.schedule import BackupScheduler
from gateway.store.blobs import sha256_hex
from gateway.store.db import is_sqlite, known_revisions, make_engine, migrate, read_tx, write_tx
from gateway.lifecycle.deletion_log import DeletionLog, Kind, deletion_log
from gateway.store.tables import CONVERSATION, INBOUND, MESSAGE, STUDIO
from gateway.lifecycle.erasure import erase_conversation, erase_message, erase_studio
from gateway.backup.restore import restore
from gateway.settings import Settings
from gateway.access.studios import add_studio
from tests.conftest import (MAIL_DOMAIN, SECRET, RunningGateway, _throwaway_pg_database, make_settings, send_on,
                            start_gateway, gateway_subprocess_env)
from tests.mail import make_mail

HEAD = max(known_revisions())


@pytest.fixture
def empty_store(database_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A store of the same back end as `database_url`, holding nothing: where backups are restored."""
    if is_sqlite(database_url):
        yield f"sqlite:///{tmp_path / 'restored' / 'gateway.db'}"
        return
    with _throwaway_pg_database(request.getfixturevalue("pg_template")) as url:
        yield url


def restore_settings(gw: RunningGateway, url: str) -> Settings:
    """Settings of the gateway restored elsewhere: same backup directory, so the same deletion log."""
    return make_settings(Path(gw.settings.data_dir).parent, url, backup_dir=gw.settings.resolved_backup_dir)


@contextmanager
def store(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def count(url: str, table: object, *where: object) -> int:
    with store(url) as engine, read_tx(engine) as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()  # type: ignore[arg-type]


def erase(gw: RunningGateway, kind: Kind, studio_id: int, object_id: int, at: datetime | None = None) -> None:
    """As the purge, guest erasure and account deletion do it: log inside the transaction, then erase."""
    with write_tx(gw.engine) as conn:
        deletion_log(gw.settings).append(kind, studio_id, object_id, at=at)
        if kind == "studio":
            assert erase_studio(conn, studio_id, MAIL_DOMAIN)
        elif kind == "conversation":
            assert erase_conversation(conn, studio_id, object_id)
        else:
            assert erase_message(conn, studio_id, object_id)


def conversation_of(gw: RunningGateway, subject: str) -> int:
    with read_tx(gw.engine) as conn:
        return conn.execute(select(CONVERSATION.c.id).where(CONVERSATION.c.subject == subject)).scalar_one()


# --- a backup while mail arrives ----------------------------------------------------------------

def test_backup_taken_while_mail_arrives_restores_all_mail_answered_before_it_and_none_after_its_snapshot(
        gw: RunningGateway, empty_store: str) -> None:
    ink = gw.add_studio("inkwell")
    raws = [make_mail(subject=f"Anfrage {i}", body=f"Motiv Nummer {i} " + uuid.uuid4().hex) for i in range(25)]
    replies: list[tuple[int, int | None]] = []
    first_ten, snapshot_fixed, five_more = threading.Event(), threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def sender() -> None:
        try:
            with gw.smtp() as client:
                for i, raw in enumerate(raws):
                    if i == 15:
                        five_more.set()
                    if i == 10:
                        first_ten.set()
                        assert snapshot_fixed.wait(60), "the backup never fixed its snapshot"
                    reply = send_on(client, raw, ink.address)
                    replies.append((reply.code, reply.inbound_id))
        except BaseException as exc:  # surfaced below
            failures.append(exc)
        finally:
            first_ten.set()
            five_more.set()

    thread = threading.Thread(target=sender, name="smtp-sender")
    thread.start()
    assert first_ten.wait(60)
    answered_before = list(replies)

    def during_snapshot() -> None:
        snapshot_fixed.set()
        assert five_more.wait(60), "no mail was accepted while the backup ran"

    result = take_backup(gw.settings, on_snapshot=during_snapshot)
    thread.join(60)
    assert not failures and not thread.is_alive()
    assert [code for code, _ in replies] == [250] * len(raws)
    assert len(answered_before) == 10
    answered_during = replies[10:15]

    summary = restore(restore_settings(gw, empty_store), result.path)
    with store(empty_store) as engine, read_tx(engine) as conn:
        restored = {row.id: row.raw_sha256 for row in conn.execute(select(INBOUND.c.id, INBOUND.c.raw_sha256))}
        raw_by_sha = {sha: conn.execute(text("SELECT data FROM blob WHERE sha256 = :s"), {"s": sha}).scalar_one()
                      for sha in restored.values()}
    before_ids = [inbound_id for _, inbound_id in answered_before]
    assert set(before_ids) <= set(restored), "a message answered 250 before the backup is missing"
    assert not {inbound_id for _, inbound_id in answered_during} & set(restored), \
        "mail committed after the snapshot leaked into the backup"
    for inbound_id, raw in zip(before_ids, raws):
        assert raw_by_sha[restored[inbound_id]] == raw and sha256_hex(raw) == restored[inbound_id]
    assert summary.rows["inbound_mail"] == result.manifest.rows["inbound_mail"] == len(restored)
    assert summary.rows == result.manifest.rows
    assert summary.revision == result.manifest.schema_revision == HEAD


# --- refusing ---------------------------------------------------------------------------------

def _flip_one_byte(path: Path, member: str) -> None:
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
        offset = info.offset_data + info.size // 2
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def _drop_member(path: Path, member: str) -> None:
    with tarfile.open(path) as tar:
        kept = [(info, tar.extractfile(info).read()) for info in tar if info.name != member]  # type: ignore[union-attr]
    with tarfile.open(path, "w") as tar:
        for info, data in kept:
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("damage", ["flip a byte of the database", "flip a byte of the manifest",
                                    "remove the database"])
def test_a_damaged_backup_is_refused_and_the_store_is_left_as_it_was(
        gw: RunningGateway, empty_store: str, damage: str) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    path = take_backup(gw.settings).path
    with tarfile.open(path) as tar:
        [database_member] = [n for n in tar.getnames() if n.startswith("database.")]
    if damage == "flip a byte of the database":
        _flip_one_byte(path, database_member)
        expected = f"{database_member} does not match its checksum"
    elif damage == "flip a byte of the manifest":
        _flip_one_byte(path, MANIFEST)
        expected = "the manifest does not match its checksum"
    else:
        _drop_member(path, database_member)
        expected = f"{database_member} is missing"

    with pytest.raises(BackupError, match=expected):
        restore(restore_settings(gw, empty_store), path)
    assert_untouched(empty_store)


def assert_untouched(empty_store: str) -> None:
    """The empty store is as it was: no SQLite file (nor a leftover beside it), or the migrated,
    empty PostgreSQL database."""
    if is_sqlite(empty_store):
        path = Path(empty_store.split("///", 1)[1])
        assert not path.exists()
        assert not path.parent.exists() or not list(path.parent.iterdir()), "no leftovers beside it"
    else:
        assert count(empty_store, STUDIO) == 0
        with store(empty_store) as engine, engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD


def test_restore_refuses_a_store_with_data_without_force_and_replaces_it_with_force(
        gw: RunningGateway, empty_store: str) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    path = take_backup(gw.settings).path
    migrate(empty_store)
    with store(empty_store) as engine, write_tx(engine) as conn:
        add_studio(conn, "needle", "Needle", "owner@needle.example")
    settings = restore_settings(gw, empty_store)

    with pytest.raises(BackupError, match="already holds studios or mail.*--force"):
        restore(settings, path)
    assert count(empty_store, STUDIO, STUDIO.c.slug == "needle") == 1
    assert count(empty_store, INBOUND) == 0

    summary = restore(settings, path, force=True)
    with store(empty_store) as engine, read_tx(engine) as conn:
        assert list(conn.execute(select(STUDIO.c.slug)).scalars()) == ["inkwell"]
    assert count(empty_store, INBOUND) == summary.rows["inbound_mail"] == 1


def test_restore_refuses_while_a_gateway_runs_on_the_database(gw: RunningGateway) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    path = take_backup(gw.settings).path
    with pytest.raises(BackupError, match="stop every gateway process"):
        restore(gw.settings, path, force=True)
    assert gw.send(make_mail(subject="Still here"), ink.address).code == 250
    assert count(gw.settings.resolved_database_url, INBOUND) == 2


def test_a_backup_of_a_schema_this_gateway_does_not_know_is_refused(
        gw: RunningGateway, empty_store: str, tmp_path: Path) -> None:
    gw.add_studio("inkwell")
    path = take_backup(gw.settings).path
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    key = gw.settings.derived_key(KEY_PURPOSE)
    manifest = read_archive(path, unpacked, key)
    future = Manifest(**{**manifest.__dict__, "schema_revision": "9999", "gateway_version": "9.0.0"})
    write_archive(path, future, unpacked, key)

    with pytest.raises(BackupError, match="revision '9999' is unknown.*version 9.0.0"):
        restore(restore_settings(gw, empty_store), path)
    assert_untouched(empty_store)


# --- erasures stay erased -------------------------------------------------------------------------

def test_erasures_logged_after_the_backup_are_replayed_so_nothing_erased_comes_back(
        gw: RunningGateway, empty_store: str) -> None:
    ink, needle = gw.add_studio("inkwell"), gw.add_studio("needle")
    for subject in ("Rose", "Lion", "Anchor"):
        assert gw.send(make_mail(subject=subject), ink.address).code == 250
    assert gw.send(make_mail(subject="Dragon", to=needle.address), needle.address).code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        anchor_message = conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.subject == "Anchor")).scalar_one()
    erase(gw, "message", ink.id, anchor_message, at=datetime.now(timezone.utc) - timedelta(hours=1))
    path = take_backup(gw.settings).path

    lion = conversation_of(gw, "Lion")
    erase(gw, "studio", needle.id, needle.id)
    erase(gw, "conversation", ink.id, lion)
    summary = restore(restore_settings(gw, empty_store), path)

    assert summary.replayed == 2, "only the erasures logged since the snapshot are replayed"
    assert dict(summary.erased) == {"studio": 1, "conversation": 1}
    assert count(empty_store, STUDIO, STUDIO.c.id == needle.id) == 0
    assert count(empty_store, CONVERSATION, CONVERSATION.c.id == lion) == 0
    assert count(empty_store, MESSAGE, MESSAGE.c.studio_id == needle.id) == 0
    with store(empty_store) as engine, read_tx(engine) as conn:
        assert sorted(conn.execute(select(MESSAGE.c.subject)).scalars()) == ["Rose"]


def test_an_erasure_still_in_flight_when_the_snapshot_is_taken_is_replayed(
        gw: RunningGateway, empty_store: str) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    assert gw.send(make_mail(subject="Lion"), ink.address).code == 250
    gw.process()
    lion = conversation_of(gw, "Lion")
    backups: list[Path] = []
    with write_tx(gw.engine) as conn:
        deletion_log(gw.settings).append("conversation", ink.id, lion)
        assert erase_conversation(conn, ink.id, lion)
        if is_sqlite(gw.settings.resolved_database_url):
            # SQLite: the backup waits for the write lock, i.e. for this erasure to commit.
            taker = threading.Thread(target=lambda: backups.append(take_backup(gw.settings).path))
            taker.start()
        else:
            # PostgreSQL: the snapshot is taken now, without the uncommitted erasure.
            backups.append(take_backup(gw.settings).path)
    if is_sqlite(gw.settings.resolved_database_url):
        taker.join(60)
    [path] = backups

    summary = restore(restore_settings(gw, empty_store), path)
    assert count(empty_store, CONVERSATION, CONVERSATION.c.id == lion) == 0
    if is_sqlite(empty_store):
        assert summary.replayed == 0 and summary.manifest.rows["tombstone"] == 1, "the snapshot has the erasure"
    else:
        assert summary.replayed == 1 and summary.manifest.rows["tombstone"] == 0, "the replay made up for it"
    assert count(empty_store, CONVERSATION) == 1


# --- migrating older backups ---------------------------------------------------------------------

@contextmanager
def _bare_store(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An unmigrated database of the same back end."""
    if is_sqlite(database_url):
        yield f"sqlite:///{tmp_path / 'old' / 'gateway.db'}"
        return
    with _throwaway_pg_database(None) as url:
        yield url


def test_a_backup_of_an_older_schema_is_migrated_to_the_current_one(
        database_url: str, empty_store: str, tmp_path: Path) -> None:
    with _bare_store(database_url, tmp_path) as old_url:
        migrate(old_url, "0005")
        with store(old_url) as engine, write_tx(engine) as conn:
            conn.execute(text("INSERT INTO studio (slug, name, owner_email, locale, created_at, acknowledge_inquiries) "
                              "VALUES ('inkwell', 'Inkwell', 'owner@inkwell.example', 'de', :now, false)"),
                         {"now": datetime.now(timezone.utc)})
        old = make_settings(tmp_path, old_url)
        result = take_backup(old)
    assert result.manifest.schema_revision == "0005"

    summary = restore(make_settings(tmp_path, empty_store), result.path)
    assert summary.revision == HEAD
    assert summary.rows["studio"] == 1 and summary.rows["subscription"] == 0  # 0006's table is there
    assert "backup_schedule" in summary.rows


# --- scheduled backups ------------------------------------------------------------------------------

def _scheduled(settings: Settings) -> list[str]:
    return sorted(p.name for p in settings.resolved_backup_dir.glob("scheduled-*.tar"))


def test_scheduled_backups_keep_the_newest_n_and_never_touch_the_deletion_log_or_manual_ones(
        settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settings.resolved_database_url, backup_interval_hours=1, backup_keep=2)
    log = deletion_log(settings)
    log.append("studio", 99, 99)
    manual = take_backup(settings).path
    t0 = datetime(2026, 11, 20, 3, 0, tzinfo=timezone.utc)
    engine = make_engine(settings.resolved_database_url)
    try:
        scheduler = BackupScheduler(engine, settings)
        outcomes = [scheduler.tick(t0 + step).outcome for step in
                    (timedelta(0), timedelta(minutes=10), timedelta(hours=1), timedelta(hours=2),
                     timedelta(hours=2, minutes=30), timedelta(hours=3))]
    finally:
        engine.dispose()
    assert outcomes == ["taken", "not-due", "taken", "taken", "not-due", "taken"]
    assert _scheduled(settings) == ["scheduled-20261120T050000.000000Z.tar", "scheduled-20261120T060000.000000Z.tar"]
    assert manual.exists()
    assert [e.object_id for e in DeletionLog(log.path, settings.derived_key("deletion-log")).entries()] == [99]


def test_two_workers_on_one_database_take_one_scheduled_backup_between_them(
        settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settings.resolved_database_url, backup_interval_hours=6, backup_keep=5)
    now = datetime(2026, 11, 20, 3, 0, tzinfo=timezone.utc)
    first, second = make_engine(settings.resolved_database_url), make_engine(settings.resolved_database_url)
    try:
        worker_a, worker_b = BackupScheduler(first, settings), BackupScheduler(second, settings)
        with worker_a.lock() as held:
            assert held
            assert worker_b.tick(now).outcome == "busy", "a second worker must not back up at the same time"
        assert worker_a.tick(now).outcome == "taken"
        assert worker_b.tick(now + timedelta(minutes=1)).outcome == "not-due"
    finally:
        first.dispose()
        second.dispose()
    assert len(_scheduled(settings)) == 1


def test_the_worker_takes_a_scheduled_backup_when_none_has_been_taken(settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, settings.resolved_database_url, backup_interval_hours=24, backup_keep=3)
    running = start_gateway(settings, roles=("worker",))
    try:
        assert running.gateway.backups is not None
        assert running.gateway.backups.ticked.wait(60), "the worker never looked at the backup schedule"
    finally:
        running.stop()
    [name] = _scheduled(settings)
    unpacked = tmp_path / "check"
    unpacked.mkdir()
    assert read_archive(settings.resolved_backup_dir / name, unpacked, settings.derived_key(KEY_PURPOSE)).files[
        SQLITE_FILE if is_sqlite(settings.resolved_database_url) else "database.pgdump"]


# --- the commands ------------------------------------------------------------------------------------

def _cli(args: list[str], database_url: str, gw: RunningGateway) -> subprocess.CompletedProcess[str]:
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATABASE_URL=database_url, GATEWAY_DATA_DIR=str(gw.settings.data_dir),
               GATEWAY_MAIL_DOMAIN=MAIL_DOMAIN, GATEWAY_SECRET_KEY=SECRET,
               GATEWAY_BACKUP_DIR=str(gw.settings.resolved_backup_dir))
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_gateway_backup_and_restore_as_commands(gw: RunningGateway, empty_store: str, tmp_path: Path) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    output = tmp_path / "elsewhere" / "nightly.tar"

    made = _cli(["backup", "--output", str(output)], gw.settings.resolved_database_url, gw)
    assert made.returncode == 0, made.stderr
    assert f"backup written to {output}" in made.stdout
    assert output.stat().st_mode & 0o777 == 0o600

    restored = _cli(["restore", str(output)], empty_store, gw)
    assert restored.returncode == 0, restored.stderr
    assert f"schema {HEAD} -> {HEAD}" in restored.stdout
    assert "erasures replayed: 0 logged since the snapshot" in restored.stdout
    assert count(empty_store, INBOUND) == 1

    again = _cli(["restore", str(output)], empty_store, gw)
    assert again.returncode == 1
    assert "restore refused" in again.stderr and "--force" in again.stderr
