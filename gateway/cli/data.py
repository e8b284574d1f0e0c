"""`gateway backup|restore|purge`: the database as one verified file, and erasing what was deleted."""
from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy.exc import SQLAlchemyError

from gateway.cli import common
from gateway.cli.progress import Progress


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent snapshot of the running gateway's database, as one verified file."""
    from pathlib import Path

    from gateway.backup.snapshot import take_backup
    from gateway.backup.archive import BackupError

    settings = common.settings()
    try:
        with Progress("backup") as progress:
            result = take_backup(settings, Path(args.output) if args.output else None, progress=progress)
    except (BackupError, SQLAlchemyError, OSError) as exc:
        print(f"gateway: backup failed: {exc}", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(f"backup written to {result.path}")
    print(f"{manifest.backend}, schema {manifest.schema_revision}, {sum(manifest.rows.values())} rows, "
          f"snapshot started {manifest.snapshot_started_at.isoformat()}")
    return 0


_UNSIGNED_WARNING = ("gateway: WARNING: --allow-unsigned: {file} {state} WITHOUT a valid signature check. "
                     "An unsigned backup cannot be told from a forged or altered one; restore it only if you "
                     "know where it comes from, and take a new (signed) backup right after.")


def cmd_restore(args: argparse.Namespace) -> int:
    """Verify a backup, put it in place, migrate it and re-apply the erasures made since."""
    from pathlib import Path

    from gateway.backup.archive import BackupError
    from gateway.backup.restore import restore

    settings = common.settings()
    try:
        if args.allow_unsigned:
            print(_UNSIGNED_WARNING.format(file=args.file, state="may be restored"), file=sys.stderr)
        with Progress("restore") as progress:
            summary = restore(settings, Path(args.file), force=args.force, allow_unsigned=args.allow_unsigned,
                              progress=progress)
    except BackupError as exc:
        print(f"gateway: restore refused: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        print(f"gateway: restore failed: {exc}\nEvery step can be repeated: run it again once the cause is "
              "fixed (with --force if the data was already loaded).", file=sys.stderr)
        return 1
    manifest = summary.manifest
    if not manifest.signed:
        print(_UNSIGNED_WARNING.format(file=args.file, state="was restored"), file=sys.stderr)
    print(f"restored {args.file} ({manifest.backend}, taken {manifest.snapshot_started_at.isoformat()} "
          f"by gateway {manifest.gateway_version})")
    print(f"schema {manifest.schema_revision} -> {summary.revision}")
    print(f"rows: {sum(summary.rows.values())} (" + ", ".join(f"{t} {n}" for t, n in summary.rows.items() if n) + ")")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.erased.items()))
    print(f"erasures replayed: {summary.replayed} logged since the snapshot"
          + (f", {sum(summary.erased.values())} found data to erase ({kinds})" if summary.erased else ""))
    print(f"trash replayed: {summary.trash_replayed} deletion(s) and restore(s) from the trash logged since the snapshot")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Erase what was deleted 30 days ago or more (the worker does this hourly by itself)."""
    from gateway.lifecycle.purge import PurgeReport, purge
    from gateway.lifecycle.trash import RETENTION
    from gateway.store.models import utcnow

    settings = common.settings()
    common.configure_logging(settings)
    # --dry-run only reads, so it never migrates: on a database without a schema nothing is due.
    engine = common.readable(settings) if args.dry_run else common.migrated(settings)
    with Progress("purge") as progress:
        report = (purge(engine, settings, dry_run=args.dry_run, progress=progress) if engine is not None
                  else PurgeReport(cutoff=utcnow() - RETENTION, dry_run=True))
    if args.json:
        print(json.dumps({"cutoff": report.cutoff.isoformat(), "dry_run": report.dry_run,
                          "conversations": report.conversations, "messages": report.messages}))
    else:
        verb = "would be erased" if report.dry_run else "erased"
        print(f"{len(report.conversations)} conversation(s) and {len(report.messages)} message(s) "
              f"deleted before {report.cutoff:%Y-%m-%d %H:%M} UTC {verb}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    backup = sub.add_parser("backup", help="write a consistent backup of the database (safe while running)")
    backup.add_argument("--output", help="backup file (default: $GATEWAY_BACKUP_DIR/backup-<time>.tar)")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup into the configured database (gateway stopped)")
    restore.add_argument("file", help="the backup file (.tar) written by `gateway backup`")
    restore.add_argument("--force", action="store_true", help="overwrite a database that holds studios or mail")
    restore.add_argument("--allow-unsigned", action="store_true",
                         help="accept a backup without a signature (taken before backups were signed); "
                              "it cannot be told from a forged one")
    restore.set_defaults(func=cmd_restore)
    purge_cmd = sub.add_parser("purge", help="erase conversations and messages deleted 30 days ago or more")
    purge_cmd.add_argument("--dry-run", action="store_true", help="only say what would be erased")
    purge_cmd.add_argument("--json", action="store_true", help="print JSON instead of text")
    purge_cmd.set_defaults(func=cmd_purge)
