"""The deletion log: every erasure and every move into or out of the trash, appended to a file
kept beside the backups, hash-chained and signed.

A restored backup predates the deletions made since it was taken; replaying this log after a
restore (gateway/backup/restore.py) keeps an erased studio, guest, conversation or message
erased, and puts what the studio moved to the trash since back into the trash (and takes out
again what it restored from there). So the log must survive the loss of the database it
describes: it lives in the backup directory, not in the database, and each line is fsync'd
before the change it announces is committed (an entry for an erasure that then failed only
erases again what was asked to go). It holds ids and times, never personal data.

Append inside the change's write transaction, just before making it: a backup fixes its
snapshot only when no write transaction that began earlier is still open (gateway/backup/snapshot.py),
so an entry written before that moment belongs to a change the snapshot already has. The one
exception is a restore from the trash, logged just *after* it commits (record_restored in
gateway/lifecycle/trash.py): replayed without having happened, it would show again what the
studio still has in the trash; missed by a crash, the item only goes back into the trash.

Tamper evidence. Each line carries `prev`, the MAC of the line before it (for the first signed
line: the SHA-256 of every byte before it, so lines written before signing existed are covered
too), and `mac`, an HMAC-SHA256 over the line with a key derived from the instance's secret key
(Settings.derived_key, never the raw secret). Editing, inserting, reordering or removing an
entry breaks the chain at that line, and nobody without the secret key can re-sign it. What a
chain cannot show by itself is a cut-off tail: the shortened file is still a valid chain. Each
backup's manifest therefore records how many entries the log had and the MAC of the last one
(the anchor); a restore refuses a log that no longer reaches that anchor. A tail cut off
beyond the newest anchor (entries written after the backup being restored was taken, then
removed) cannot be told from entries never written; keep the log on storage the database's
users cannot write, and copy it off the machine with the backups.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from gateway.settings import Settings

Kind = Literal["studio", "guest", "conversation", "message",
               "conversation.trashed", "message.trashed", "conversation.restored", "message.restored"]
ERASURES: tuple[Kind, ...] = ("studio", "guest", "conversation", "message")
TRASH_EVENTS: tuple[Kind, ...] = ("conversation.trashed", "message.trashed", "conversation.restored",
                                  "message.restored")
KINDS: tuple[Kind, ...] = ERASURES + TRASH_EVENTS
FILENAME = "deletion-log.jsonl"
KEY_PURPOSE = "deletion-log"
_TAIL = 8192   # bytes read back to find the last line; lines are a few hundred bytes


class DeletionLogError(Exception):
    """The log was changed by someone without the secret key (or signed with another key)."""


@dataclass(frozen=True)
class Erasure:
    """One entry: an erasure (kind studio/guest/conversation/message) or a trash event."""

    at: datetime
    kind: Kind
    studio_id: int
    object_id: int   # the id of the thing (for kind "studio" the studio id again)
    by: int | None = None   # trash events: the profile that deleted it (an id, as deleted_by)
    mac: str = ""


@dataclass(frozen=True)
class Anchor:
    """Where the log stood: its number of entries and the MAC of the last (recorded in backups)."""

    entries: int
    head: str


class DeletionLog:
    """Append-only JSON lines; safe for several threads of one process and for several
    processes (appends hold an exclusive flock, since each line chains to the one before)."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the deletion log's key must be a derived key of 16 bytes or more")
        self.path = path
        self._key = key
        self._lock = threading.Lock()

    def append(self, kind: Kind, studio_id: int, object_id: int, at: datetime | None = None,
               by: int | None = None) -> Erasure:
        if kind not in KINDS:
            raise ValueError(f"unknown deletion log kind {kind!r}")
        at = at or datetime.now(timezone.utc)
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)   # released by close
                prev = self._prev_for_append(fd)
                fields = _fields(at, kind, int(studio_id), int(object_id), by, prev)
                mac = self._mac(fields)
                os.write(fd, (json.dumps({**fields, "mac": mac}, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:  # the file's directory entry must be durable too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return Erasure(at=at, kind=kind, studio_id=int(studio_id), object_id=int(object_id), by=by, mac=mac)

    def entries(self, since: datetime | None = None) -> list[Erasure]:
        """Erasures at or after `since` (all without it), in the order they were written."""
        return [e for e in self.events(since) if e.kind in ERASURES]

    def events(self, since: datetime | None = None) -> list[Erasure]:
        """Every entry (erasures and trash events) at or after `since`, in order; verified.
        Raises DeletionLogError when the chain or a signature does not hold."""
        return [e for e in self.verified() if since is None or e.at >= since]

    def anchor(self) -> Anchor:
        """The log as it stands now, for a backup's manifest."""
        signed = [e for e in self.verified() if e.mac]
        return Anchor(len(signed), signed[-1].mac if signed else "")

    def check_anchor(self, anchor: Anchor) -> None:
        """Raise DeletionLogError unless the log still holds the entry `anchor` names."""
        if anchor.entries == 0:
            return
        signed = [e for e in self.verified() if e.mac]
        if len(signed) < anchor.entries or signed[anchor.entries - 1].mac != anchor.head:
            raise DeletionLogError(
                f"the deletion log {self.path} no longer holds the {anchor.entries} signed entries it had when "
                f"this backup was taken (it has {len(signed)}): its tail was cut off or it was replaced")

    def verified(self) -> list[Erasure]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        found: list[Erasure] = []
        prev: str | None = None   # the MAC the next signed line must name; None before the first
        offset = 0
        for number, raw_line in enumerate(data.splitlines(keepends=True), start=1):
            start, offset = offset, offset + len(raw_line)
            if not raw_line.endswith(b"\n"):
                break   # a line torn by a crash mid-write: its change was never committed
            try:
                raw = json.loads(raw_line)
                entry = Erasure(at=datetime.fromisoformat(raw["at"]), kind=raw["kind"],
                                studio_id=int(raw["studio_id"]), object_id=int(raw["id"]),
                                by=None if raw.get("by") is None else int(raw["by"]), mac=str(raw.get("mac", "")))
            except (ValueError, KeyError, TypeError):
                if prev is None:
                    continue   # torn by a crash before this version truncated torn tails
                raise DeletionLogError(f"{self.path} line {number} is not a deletion log entry") from None
            if "mac" not in raw:
                if prev is not None:
                    raise DeletionLogError(f"{self.path} line {number} is unsigned after signed entries")
                if entry.kind in KINDS:
                    found.append(entry)   # written before signing existed: covered by the first signed line
                continue
            expected_prev = prev if prev is not None else hashlib.sha256(data[:start]).hexdigest()
            fields = _fields(entry.at, entry.kind, entry.studio_id, entry.object_id, entry.by, expected_prev)
            if raw.get("prev") != expected_prev or not hmac.compare_digest(self._mac(fields), entry.mac) or \
                    _fields_of(raw) != fields:
                raise DeletionLogError(
                    f"{self.path} line {number} was changed, or an entry before it was removed or inserted "
                    "(its signature or chain does not hold); restore the log from a copy")
            prev = entry.mac
            if entry.kind in KINDS:
                found.append(entry)
        return found

    def _prev_for_append(self, fd: int) -> str:
        """The MAC the new line chains to; cuts off a torn last line (its change never committed)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return hashlib.sha256(b"").hexdigest()
        tail = os.pread(fd, min(size, _TAIL), size - min(size, _TAIL))
        if not tail.endswith(b"\n"):   # rare: read the whole file once to find the last full line
            os.ftruncate(fd, os.pread(fd, size, 0).rfind(b"\n") + 1)
            return self._prev_for_append(fd)
        lines = tail.splitlines()
        last = lines[-1] if lines else b""
        try:
            mac = json.loads(last).get("mac")
        except ValueError:
            mac = None
        if mac:
            return str(mac)
        return hashlib.sha256(os.pread(fd, size, 0)).hexdigest()   # only unsigned lines so far

    def _mac(self, fields: dict[str, object]) -> str:
        return hmac.new(self._key, json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(),
                        hashlib.sha256).hexdigest()


def _fields(at: datetime, kind: str, studio_id: int, object_id: int, by: int | None, prev: str) -> dict[str, object]:
    fields: dict[str, object] = {"at": at.isoformat(), "kind": kind, "studio_id": studio_id, "id": object_id}
    if by is not None:
        fields["by"] = by
    fields["prev"] = prev
    return fields


def _fields_of(raw: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in raw.items() if k != "mac"}


def deletion_log(settings: Settings) -> DeletionLog:
    return DeletionLog(settings.resolved_backup_dir / FILENAME, settings.derived_key(KEY_PURPOSE))
