"""The deletion log: every erasure, appended to a file kept beside the backups.

A restored backup predates the erasures made since it was taken; replaying this log after a
restore (gateway/backup/restore.py) keeps an erased studio, guest, conversation or message erased.
So the log must survive the loss of the database it describes: it lives in the backup
directory, not in the database, and each line is fsync'd before the erasure it announces is
committed (an entry for an erasure that then failed only erases again what was asked to go).
It holds ids and times, never personal data.

Append inside the erasure's write transaction, just before erasing: a backup fixes its
snapshot only when no write transaction that began earlier is still open (gateway/backup/snapshot.py),
so an entry written before that moment belongs to an erasure the snapshot already has.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Literal

from gateway.settings import Settings

Kind = Literal["studio", "guest", "conversation", "message"]
KINDS: tuple[Kind, ...] = ("studio", "guest", "conversation", "message")
FILENAME = "deletion-log.jsonl"


@dataclass(frozen=True)
class Erasure:
    at: datetime
    kind: Kind
    studio_id: int
    object_id: int   # the id of the erased thing (for kind "studio" the studio id again)


class DeletionLog:
    """Append-only JSON lines; safe for several threads of one process and for several
    processes (O_APPEND writes of one short line are atomic on local file systems)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, kind: Kind, studio_id: int, object_id: int, at: datetime | None = None) -> Erasure:
        if kind not in KINDS:
            raise ValueError(f"unknown erasure kind {kind!r}")
        entry = Erasure(at=at or datetime.now(timezone.utc), kind=kind, studio_id=int(studio_id),
                        object_id=int(object_id))
        line = json.dumps({"at": entry.at.isoformat(), "kind": entry.kind, "studio_id": entry.studio_id,
                           "id": entry.object_id}, separators=(",", ":")) + "\n"
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            if new:  # the file's directory entry must be durable too
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        return entry

    def entries(self, since: datetime | None = None) -> list[Erasure]:
        """Entries at or after `since` (all without it), in the order they were written."""
        return [e for e in self._read() if since is None or e.at >= since]

    def _read(self) -> Iterator[Erasure]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                raw = json.loads(line)
                entry = Erasure(at=datetime.fromisoformat(raw["at"]), kind=raw["kind"],
                                studio_id=int(raw["studio_id"]), object_id=int(raw["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-write: its erasure was never committed
            if entry.kind in KINDS:
                yield entry


def deletion_log(settings: Settings) -> DeletionLog:
    return DeletionLog(settings.resolved_backup_dir / FILENAME)
