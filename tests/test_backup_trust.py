"""Backups that stay safe and deletions that stay deleted across a restore: the trash is
replayed from the deletion log, backups and the log are signed, a tampered one is refused, and
PostgreSQL is restored by pg_restore alone (no psql in the path).

Real SMTP, real HTTP, real SQLite files and a throwaway PostgreSQL database when configured.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.backup.archive import MANIFEST, MANIFEST_MAC, MANIFEST_SUM, BackupError
from gateway.backup.restore import restore
from gateway.backup.snapshot import take_backup
from gateway.lifecycle.deletion_log import DeletionLog, DeletionLogError, deletion_log
from gateway.store.db import read_tx
from gateway.store.tables import CONVERSATION, MESSAGE
from tests.conftest import RunningGateway
from tests.mail import make_mail
from tests.test_api_manage import _open
from tests.test_backup import _cli, assert_untouched, empty_store, restore_settings, store  # noqa: F401, F811
from tests.test_lifecycle import paid, reply_to


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _deleted_at(url: str, table: object, object_id: int) -> datetime | None:
    with store(url) as engine, read_tx(engine) as conn:
        return conn.execute(select(table.c.deleted_at).where(table.c.id == object_id)).scalar_one()  # type: ignore[attr-defined]


# --- the trash across a restore -------------------------------------------------------------------

def test_what_was_trashed_after_the_backup_is_in_the_trash_after_restoring_it(
        gw: RunningGateway, empty_store: str) -> None:
    """Before: the conversation deleted after the backup came back visible (deleted_at None)."""
    studio = gw.add_studio("inkwell")
    paid(gw, studio)
    api = gw.api(studio.token)
    trashed_later, mid = _open(gw, studio, subject="Drache")
    kept, kept_mid = _open(gw, studio, subject="Rose")
    second = reply_to(gw, studio, kept_mid, "Zweite Nachricht")
    restored_later, _ = _open(gw, studio, subject="Anker")
    assert api.delete(f"/api/v1/conversations/{restored_later}").status_code == 200
    path = take_backup(gw.settings).path

    deleted = api.delete(f"/api/v1/conversations/{trashed_later}").json()
    assert api.delete(f"/api/v1/messages/{second}").status_code == 200
    assert api.post(f"/api/v1/conversations/{restored_later}/restore").status_code == 200
    summary = restore(restore_settings(gw, empty_store), path)
    # PostgreSQL replays from a second before the snapshot: the earlier deletion may count too.
    assert summary.replayed == 0 and summary.trash_replayed in (3, 4)

    assert _deleted_at(empty_store, CONVERSATION, trashed_later) == _parse(deleted["deleted_at"])   # its 30 days kept
    assert _deleted_at(empty_store, MESSAGE, second) is not None
    assert _deleted_at(empty_store, CONVERSATION, restored_later) is None
    with store(empty_store) as engine, read_tx(engine) as conn:
        assert conn.execute(select(CONVERSATION.c.message_count).where(CONVERSATION.c.id == kept)).scalar_one() == 1


# --- signed backups -------------------------------------------------------------------------------

def _rewrite(path: Path, change: dict[str, bytes | None]) -> None:
    """Rewrite the archive with members replaced (bytes) or removed (None), as a forger would."""
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if info.name in change:
                if change[info.name] is None:
                    continue
                data = change[info.name]  # type: ignore[assignment]
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _forge(path: Path, *, signature: bytes | None) -> None:
    """Change the manifest consistently (its checksum recomputed), as anyone could without the key."""
    with tarfile.open(path) as tar:
        manifest = json.loads(tar.extractfile(MANIFEST).read())  # type: ignore[union-attr]
    manifest["gateway_version"] = "forged"
    data = json.dumps(manifest, indent=2).encode() + b"\n"
    _rewrite(path, {MANIFEST: data, MANIFEST_SUM: hashlib.sha256(data).hexdigest().encode() + b"\n",
                    MANIFEST_MAC: signature})


def test_a_backup_changed_without_the_secret_key_is_refused(gw: RunningGateway, empty_store: str) -> None:
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    path = take_backup(gw.settings).path
    _forge(path, signature=b"0" * 64 + b"\n")
    with pytest.raises(BackupError, match="signature does not match"):
        restore(restore_settings(gw, empty_store), path, allow_unsigned=True)   # never for a wrong signature
    assert_untouched(empty_store)


def test_a_backup_signed_with_another_instances_key_is_refused(
        gw: RunningGateway, empty_store: str) -> None:
    gw.add_studio("inkwell")
    path = take_backup(gw.settings).path
    other = restore_settings(gw, empty_store).model_copy(update={"secret_key": "another-secret-key-0123456789"})
    with pytest.raises(BackupError, match="another secret key"):
        restore(other, path)
    assert_untouched(empty_store)


def test_an_unsigned_backup_is_refused_unless_allowed_and_then_said_loudly(
        gw: RunningGateway, empty_store: str) -> None:
    """Before: a backup without any signature (forged, or from before signing) was restored."""
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    path = take_backup(gw.settings).path
    _forge(path, signature=None)
    with pytest.raises(BackupError, match="not signed.*--allow-unsigned"):
        restore(restore_settings(gw, empty_store), path)
    assert_untouched(empty_store)

    refused = _cli(["restore", str(path)], empty_store, gw)
    assert refused.returncode == 1 and "--allow-unsigned" in refused.stderr
    allowed = _cli(["restore", "--allow-unsigned", str(path)], empty_store, gw)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stderr.count("WARNING: --allow-unsigned") == 2   # before, and once more after the restore


# --- the signed, chained deletion log ------------------------------------------------------------

def test_an_edited_deletion_log_entry_makes_the_restore_refuse(gw: RunningGateway, empty_store: str) -> None:
    """Before: an edited line (another id) was replayed as written: the wrong thing erased, the
    right one brought back."""
    studio = gw.add_studio("inkwell")
    conversation_id, _ = _open(gw, studio)
    path = take_backup(gw.settings).path
    assert gw.api(studio.token).delete(f"/api/v1/conversations/{conversation_id}").status_code == 200
    log = deletion_log(gw.settings)
    text = log.path.read_text()
    log.path.write_text(text.replace(f'"id":{conversation_id},', f'"id":{conversation_id + 1000},'))
    with pytest.raises(BackupError, match="line 1 was changed"):
        restore(restore_settings(gw, empty_store), path)
    assert_untouched(empty_store)


def test_a_deletion_log_cut_below_what_the_backup_saw_makes_the_restore_refuse(
        gw: RunningGateway, empty_store: str) -> None:
    studio = gw.add_studio("inkwell")
    first, _ = _open(gw, studio, subject="Eins")
    second, _ = _open(gw, studio, subject="Zwei")
    api = gw.api(studio.token)
    assert api.delete(f"/api/v1/conversations/{first}").status_code == 200
    assert api.delete(f"/api/v1/conversations/{second}").status_code == 200
    path = take_backup(gw.settings).path   # the manifest anchors the log at 2 entries
    log = deletion_log(gw.settings)
    log.path.write_text(log.path.read_text().splitlines(keepends=True)[0])   # a valid chain of 1
    with pytest.raises(BackupError, match="no longer holds the 2 signed entries"):
        restore(restore_settings(gw, empty_store), path)
    assert_untouched(empty_store)


def test_the_chain_catches_edits_insertions_and_removals_but_keeps_older_unsigned_lines(tmp_path: Path) -> None:
    path = tmp_path / "deletion-log.jsonl"
    path.write_text('{"at":"2026-11-01T10:00:00+00:00","kind":"guest","studio_id":1,"id":7}\n')   # before signing
    log = DeletionLog(path, b"k" * 32)
    for object_id in (1, 2, 3):
        log.append("conversation", 1, object_id)
    assert [e.object_id for e in log.entries()] == [7, 1, 2, 3]
    lines = path.read_text().splitlines(keepends=True)

    for tampered in (lines[:2] + lines[3:],                               # an entry removed
                     lines[:2] + [lines[3]] + [lines[2]] + lines[4:],     # two swapped
                     [lines[0].replace('"id":7', '"id":8')] + lines[1:],  # the unsigned prefix edited
                     lines + ['{"at":"2026-11-02T10:00:00+00:00","kind":"studio","studio_id":2,"id":2}\n']):
        path.write_text("".join(tampered))
        with pytest.raises(DeletionLogError):
            log.entries()
    with pytest.raises(DeletionLogError):   # a line signed with another key
        path.write_text("".join(lines))
        DeletionLog(path, b"x" * 32).entries()

    path.write_text("".join(lines) + '{"at":"2026-11-0')   # a line torn by a crash: ignored, cut on append
    assert [e.object_id for e in log.entries()] == [7, 1, 2, 3]
    log.append("message", 1, 9)
    assert [e.object_id for e in log.entries()] == [7, 1, 2, 3, 9]


# --- PostgreSQL: pg_restore, never psql ------------------------------------------------------------

def test_a_restore_needs_no_psql(gw: RunningGateway, empty_store: str, tmp_path: Path) -> None:
    """Before (PostgreSQL): 'psql not found': the dump went through psql as SQL text, where a
    crafted dump's meta-commands (\\! runs a shell) would run."""
    ink = gw.add_studio("inkwell")
    assert gw.send(make_mail(subject="Rose"), ink.address).code == 250
    tools = tmp_path / "pg-tools-without-psql"
    tools.mkdir()
    for name in ("pg_dump", "pg_restore"):
        found = next((Path(d) / name for d in os.environ.get("PATH", "").split(os.pathsep)
                      if (Path(d) / name).is_file()), None)
        if found is not None:
            (tools / name).symlink_to(found)
    settings = restore_settings(gw, empty_store).model_copy(update={"pg_bin_dir": tools})
    path = take_backup(gw.settings.model_copy(update={"pg_bin_dir": tools})).path
    summary = restore(settings, path)
    assert summary.rows["inbound_mail"] == 1
