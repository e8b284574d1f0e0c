"""The backup file: a tar of the database snapshot and a manifest of SHA-256 checksums.

One file, so a backup is copied, kept and deleted as a whole. It is written to a temporary
file beside its destination, fsync'd and renamed into place (then the directory is fsync'd):
a crash mid-way leaves the previous backup and a stray temporary file, never a torn backup
under the real name. Mode 0600: it holds every guest's mail.

Reading it back verifies everything before anything is restored: the manifest carries the
size and SHA-256 of every other file, and the manifest's own SHA-256 is stored beside it,
so a flipped byte anywhere in the payload, a missing file or an extra one is refused.

A checksum only finds damage; anyone can recompute it. So the manifest is also signed:
`manifest.json.hmac` holds an HMAC-SHA256 of it under a key derived from the instance's secret
key (Settings.derived_key("backup-manifest"), never the raw secret). A backup whose manifest
(and so whose payload) was changed by someone without the secret key is refused, however
consistent its checksums. A backup without a signature (taken before signing existed) is
refused unless the operator says `--allow-unsigned`, which the restore reports loudly. Members
are written only under names the manifest lists (plain names, no paths, no links), so a
crafted archive cannot write outside the restore's working directory.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO

FORMAT = "studio-mail-gateway-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.json.sha256"
MANIFEST_MAC = "manifest.json.hmac"
KEY_PURPOSE = "backup-manifest"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHUNK = 1024 * 1024


class BackupError(Exception):
    """A backup that cannot be taken, read or restored; the message says why and what to do."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a backup holds. `snapshot_started_at` is the point from which the deletion log is
    replayed after a restore: every erasure logged at or after it may be missing from the
    snapshot."""

    gateway_version: str
    backend: str                 # sqlite | postgresql
    schema_revision: str         # alembic revision of the snapshot
    snapshot_started_at: datetime
    created_at: datetime
    files: dict[str, FileEntry] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    # The deletion log when the backup was taken: its signed entries and the MAC of the last
    # (gateway/lifecycle/deletion_log.py); a restore refuses a log cut off below this.
    deletion_log_entries: int = 0
    deletion_log_head: str = ""
    signed: bool = True     # read back: False for a backup restored with --allow-unsigned

    def to_json(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "gateway_version": self.gateway_version,
            "backend": self.backend, "schema_revision": self.schema_revision,
            "snapshot_started_at": self.snapshot_started_at.isoformat(), "created_at": self.created_at.isoformat(),
            "files": {name: {"sha256": f.sha256, "size": f.size} for name, f in sorted(self.files.items())},
            "rows": dict(sorted(self.rows.items())),
            "deletion_log": {"entries": self.deletion_log_entries, "head": self.deletion_log_head},
        }, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise BackupError("not a gateway backup (the manifest names another format)")
            if raw.get("format_version") != FORMAT_VERSION:
                raise BackupError(f"backup format version {raw.get('format_version')} is not supported "
                                  f"by this gateway (it reads version {FORMAT_VERSION})")
            return cls(gateway_version=str(raw["gateway_version"]), backend=str(raw["backend"]),
                       schema_revision=str(raw["schema_revision"]),
                       snapshot_started_at=datetime.fromisoformat(raw["snapshot_started_at"]),
                       created_at=datetime.fromisoformat(raw["created_at"]),
                       files={str(n): FileEntry(str(f["sha256"]), int(f["size"])) for n, f in raw["files"].items()},
                       rows={str(t): int(c) for t, c in raw.get("rows", {}).items()},
                       deletion_log_entries=int(raw.get("deletion_log", {}).get("entries", 0)),
                       deletion_log_head=str(raw.get("deletion_log", {}).get("head", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"the backup's manifest is unreadable: {exc}") from None


def file_entry(path: Path) -> FileEntry:
    with path.open("rb") as fh:
        return _digest(fh)


def sign(key: bytes, manifest_bytes: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def write_archive(output: Path, manifest: Manifest, folder: Path, key: bytes) -> None:
    """Write manifest, its signature under `key` and the files it lists (found in `folder`)
    as one tar, atomically, 0600."""
    for name in manifest.files:
        if not _NAME.match(name) or name in (MANIFEST, MANIFEST_SUM, MANIFEST_MAC):
            raise ValueError(f"unsafe member name {name!r}")
    output.parent.mkdir(parents=True, exist_ok=True)
    manifest_bytes = manifest.to_json()
    mtime = int(manifest.created_at.timestamp())
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)  # 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, MANIFEST, manifest_bytes, mtime)
                _add_bytes(tar, MANIFEST_SUM, hashlib.sha256(manifest_bytes).hexdigest().encode() + b"\n", mtime)
                _add_bytes(tar, MANIFEST_MAC, sign(key, manifest_bytes).encode() + b"\n", mtime)
                for name in sorted(manifest.files):
                    info = _info(name, manifest.files[name].size, mtime)
                    with (folder / name).open("rb") as src:
                        tar.addfile(info, src)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(output.parent)


def read_archive(path: Path, into: Path, key: bytes, *, allow_unsigned: bool = False) -> Manifest:
    """Unpack a backup into the empty folder `into` and verify it, its signature under `key`
    included; the manifest, or BackupError. `allow_unsigned` admits a backup that has no
    signature at all (taken before signing existed), never one whose signature is wrong."""
    found: dict[str, FileEntry] = {}
    seen: set[str] = set()
    manifest_bytes = manifest_sum = manifest_mac = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or not _NAME.match(member.name) or member.name in seen:
                    raise BackupError(f"{path} holds an unexpected member {member.name!r}: not a gateway backup")
                seen.add(member.name)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has a stream
                if member.name == MANIFEST:
                    manifest_bytes = src.read()
                elif member.name == MANIFEST_SUM:
                    manifest_sum = src.read().decode("ascii", "replace").strip()
                elif member.name == MANIFEST_MAC:
                    manifest_mac = src.read(200).decode("ascii", "replace").strip()
                else:
                    found[member.name] = _copy_hashing(src, into / member.name)
    except (tarfile.TarError, EOFError) as exc:
        raise BackupError(f"{path} is damaged or not a backup archive ({exc}); nothing was changed") from None
    except FileNotFoundError:
        raise BackupError(f"{path} does not exist") from None
    if manifest_bytes is None or manifest_sum is None:
        raise BackupError(f"{path} has no manifest: not a gateway backup, or a damaged one; nothing was changed")
    if hashlib.sha256(manifest_bytes).hexdigest() != manifest_sum:
        raise BackupError(f"{path}: the manifest does not match its checksum (the backup is damaged); "
                          "nothing was changed")
    if manifest_mac is None and not allow_unsigned:
        raise BackupError(f"{path} is not signed (taken before backups were signed, or its signature was "
                          "removed): it cannot be told from a forged one. Nothing was changed. If you know where "
                          "it comes from, run the restore again with --allow-unsigned.")
    if manifest_mac is not None and not hmac.compare_digest(sign(key, manifest_bytes), manifest_mac):
        raise BackupError(f"{path}: the signature does not match: the backup was changed after it was taken, or "
                          "it was taken by an instance with another secret key (set GATEWAY_SECRET_KEY, or the "
                          "data directory's secret_key, to that instance's key). Nothing was changed.")
    manifest = Manifest.from_json(manifest_bytes)
    if manifest_mac is None:
        manifest = replace(manifest, signed=False)
    problems = []
    for name, expected in sorted(manifest.files.items()):
        got = found.get(name)
        if got is None:
            problems.append(f"{name} is missing")
        elif got != expected:
            problems.append(f"{name} does not match its checksum")
    problems += [f"{name} is not in the manifest" for name in sorted(set(found) - set(manifest.files))]
    if problems:
        raise BackupError(f"{path} is damaged: {'; '.join(problems)}; nothing was changed")
    return manifest


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new directory entry durable (POSIX keeps it in the directory)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_hashing(src: IO[bytes], target: Path) -> FileEntry:
    with target.open("xb") as out:
        return _digest(src, out)


def _digest(src: IO[bytes], copy_to: IO[bytes] | None = None) -> FileEntry:
    """SHA-256 and size of a stream read in chunks (backups are as large as the mail), copied on the way."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return FileEntry(digest.hexdigest(), size)


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, 0o600
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(_info(name, len(data), mtime), io.BytesIO(data))
