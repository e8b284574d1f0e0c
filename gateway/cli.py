"""The `gateway` command: run roles, migrate, back up and restore, purge deleted data, manage studios,
lockdowns, the quarantine and support access."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from pydantic import ValidationError
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from gateway.db import get_engine, migrate, read_tx, write_tx
from gateway.settings import Settings, get_settings
from gateway.support_cli import add_commands as add_support_commands


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "GATEWAY_" + "_".join(str(p) for p in error["loc"]).upper()
            print(f"gateway: invalid setting {name}: {error['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def _migrated(settings: Settings) -> Engine:
    """The database, brought up to date first: any command may be the first one run."""
    migrate(settings.resolved_database_url)
    return get_engine(settings.resolved_database_url)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.runtime import ROLES, run

    settings = _settings()
    _configure_logging(settings)
    run(settings, ROLES if args.command == "serve" else [args.command])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.helpdesk import ensure_helpdesk

    settings = _settings()
    engine = _migrated(settings)
    print("schema is up to date")
    if ensure_helpdesk(engine, settings) is not None:
        print(f"helpdesk: {settings.helpdesk_address} (`gateway helpdesk token` for its owner token)")
    return 0


def cmd_helpdesk(args: argparse.Namespace) -> int:
    """The helpdesk studio's owner token, and the account deletions asked of the helpdesk."""
    from gateway.account_deletion import list_requests
    from gateway.helpdesk import NoHelpdesk, issue_helpdesk_token
    from gateway.models import utcnow

    settings = _settings()
    engine = _migrated(settings)
    if args.action == "token":
        try:
            token = issue_helpdesk_token(engine, settings)
        except NoHelpdesk as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 1
        print(f"helpdesk {settings.helpdesk_address}")
        print(f"owner token (shown once): {token}")
        return 0
    with read_tx(engine) as conn:
        requests = list_requests(conn, utcnow())
    if args.json:
        print(json.dumps([{"id": r.id, "studio_id": r.studio_ref, "channel": r.channel, "status": r.status,
                           "requested_at": r.requested_at.isoformat(),
                           "confirmed_at": r.confirmed_at.isoformat() if r.confirmed_at else None,
                           "reason": r.reason} for r in requests]))
    else:
        for r in requests:
            print(f"{r.id}\tstudio {r.studio_ref}\t{r.channel}\t{r.status}\t{r.requested_at:%Y-%m-%d %H:%M}\t{r.reason}")
        print(f"{len(requests)} deletion requests")
    return 0


def cmd_studio_add(args: argparse.Namespace) -> int:
    from gateway.studios import StudioError, add_studio

    settings = _settings()
    engine = _migrated(settings)
    try:
        with write_tx(engine) as conn:
            studio_id, token = add_studio(conn, args.slug, args.name, args.owner_email, args.locale,
                                          args.country)
    except StudioError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    address = f"{args.slug.lower()}@{settings.mail_domain}"
    if args.json:
        print(json.dumps({"id": studio_id, "slug": args.slug.lower(), "name": args.name,
                          "address": address, "token": token}))
    else:
        print(f"studio {args.slug.lower()} created")
        print(f"address: {address}")
        print(f"owner token (shown once): {token}")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    from gateway.ingest import INBOUND
    from gateway.processor import drain

    settings = _settings()
    engine = _migrated(settings)
    if args.action == "list":
        with read_tx(engine) as conn:
            rows = conn.execute(select(INBOUND.c.id, INBOUND.c.received_at, INBOUND.c.mail_from,
                                       INBOUND.c.rcpt_to, INBOUND.c.size, INBOUND.c.error)
                                .where(INBOUND.c.status == "quarantined").order_by(INBOUND.c.id)).all()
        if args.json:
            print(json.dumps([{"id": r.id, "received_at": r.received_at.isoformat(), "mail_from": r.mail_from,
                               "rcpt_to": json.loads(r.rcpt_to), "size": r.size, "reason": r.error}
                              for r in rows]))
        else:
            for r in rows:
                print(f"{r.id}\t{r.received_at:%Y-%m-%d %H:%M:%S}\t{r.mail_from or '<>'}\t{r.size}\t{r.error}")
            print(f"{len(rows)} quarantined")
        return 0
    with write_tx(engine) as conn:
        query = update(INBOUND).where(INBOUND.c.status == "quarantined")
        if args.ids:
            query = query.where(INBOUND.c.id.in_(args.ids))
        count = conn.execute(query.values(status="pending", attempts=0, error=None)).rowcount
    results = drain(engine, settings)
    still = sum(1 for r in results if r.status == "quarantined")
    print(f"{count} put back; {len(results) - still} processed, {still} quarantined again")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    """Erase what was deleted 30 days ago or more (the worker does this hourly by itself)."""
    from gateway.purge import purge

    settings = _settings()
    _configure_logging(settings)
    report = purge(_migrated(settings), settings, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"cutoff": report.cutoff.isoformat(), "dry_run": report.dry_run,
                          "conversations": report.conversations, "messages": report.messages}))
    else:
        verb = "would be erased" if report.dry_run else "erased"
        print(f"{len(report.conversations)} conversation(s) and {len(report.messages)} message(s) "
              f"deleted before {report.cutoff:%Y-%m-%d %H:%M} UTC {verb}")
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Write a DKIM private key (0600, never over an existing file) and print the DNS record."""
    import os
    from pathlib import Path

    from gateway.signing import dns_txt_lines, generate_keypair

    settings = _settings()
    path = Path(args.output or settings.data_dir / f"dkim-{args.selector}.pem")
    pair = generate_keypair(args.type)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        print(f"gateway: {path} exists; not overwriting a key that may be published", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.private_pem)
    print(f"private key ({pair.algorithm}) written to {path}")
    print("publish this DNS record:")
    print(dns_txt_lines(args.selector, settings.mail_domain, pair.dns_record))
    print("then set:")
    print(f"GATEWAY_DKIM_SELECTOR={args.selector}")
    print(f"GATEWAY_DKIM_PRIVATE_KEY_FILE={path.resolve()}")
    return 0


def cmd_lockdown(args: argparse.Namespace) -> int:
    """Pause (start) or resume (end) every paid subscription in a lockdown's scope; rerun to repair."""
    from gateway.billing.lockdowns import LockdownError, end_lockdown, lockdown_status, start_lockdown
    from gateway.billing.stripe_api import stripe_api

    settings = _settings()
    _configure_logging(settings)
    engine = _migrated(settings)
    if args.action == "status":
        infos = lockdown_status(engine)
        if args.json:
            print(json.dumps([{"name": i.name, "countries": i.countries, "started_at": i.started_at.isoformat(),
                               "ended_at": i.ended_at.isoformat() if i.ended_at else None, "pauses": i.pauses}
                              for i in infos]))
        else:
            for i in infos:
                state = f"ended {i.ended_at:%Y-%m-%d %H:%M}" if i.ended_at else "active"
                pauses = ", ".join(f"{n} {s}" for s, n in sorted(i.pauses.items())) or "no pauses"
                print(f"{i.name}\t{','.join(i.countries) or 'all countries'}\t"
                      f"started {i.started_at:%Y-%m-%d %H:%M}\t{state}\t{pauses}")
            print(f"{len(infos)} lockdown(s)")
        return 0
    api = stripe_api(settings)
    if api is None:
        print("gateway: billing is off; set GATEWAY_STRIPE_SECRET_KEY", file=sys.stderr)
        return 2
    try:
        if args.action == "start":
            report = start_lockdown(engine, api, args.name, args.country or [])
        else:
            report = end_lockdown(engine, api, args.name)
    except LockdownError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    done = report.paused if args.action == "start" else report.resumed
    verb = "paused" if args.action == "start" else "resumed"
    if args.json:
        print(json.dumps({"lockdown": report.lockdown, verb: done, "unchanged": report.unchanged,
                          "failed": report.failed}))
    else:
        print(f"lockdown {report.lockdown}: {len(done)} {verb}{': ' + ', '.join(done) if done else ''}; "
              f"{report.unchanged} already in place")
    for failure in report.failed:
        print(f"gateway: not yet {verb}: {failure} (run the same command again)", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent snapshot of the running gateway's database, as one verified file."""
    from pathlib import Path

    from gateway.backup import take_backup
    from gateway.backup_archive import BackupError

    settings = _settings()
    try:
        result = take_backup(settings, Path(args.output) if args.output else None)
    except (BackupError, SQLAlchemyError, OSError) as exc:
        print(f"gateway: backup failed: {exc}", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(f"backup written to {result.path}")
    print(f"{manifest.backend}, schema {manifest.schema_revision}, {sum(manifest.rows.values())} rows, "
          f"snapshot started {manifest.snapshot_started_at.isoformat()}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Verify a backup, put it in place, migrate it and re-apply the erasures made since."""
    from pathlib import Path

    from gateway.backup_archive import BackupError
    from gateway.restore import restore

    settings = _settings()
    try:
        summary = restore(settings, Path(args.file), force=args.force)
    except BackupError as exc:
        print(f"gateway: restore refused: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        print(f"gateway: restore failed: {exc}\nEvery step can be repeated: run it again once the cause is "
              "fixed (with --force if the data was already loaded).", file=sys.stderr)
        return 1
    manifest = summary.manifest
    print(f"restored {args.file} ({manifest.backend}, taken {manifest.snapshot_started_at.isoformat()} "
          f"by gateway {manifest.gateway_version})")
    print(f"schema {manifest.schema_revision} -> {summary.revision}")
    print(f"rows: {sum(summary.rows.values())} (" + ", ".join(f"{t} {n}" for t, n in summary.rows.items() if n) + ")")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.erased.items()))
    print(f"erasures replayed: {summary.replayed} logged since the snapshot"
          + (f", {sum(summary.erased.values())} found data to erase ({kinds})" if summary.erased else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="SMTP, HTTP API and worker in one process").set_defaults(func=cmd_run)
    sub.add_parser("smtp", help="the SMTP server only").set_defaults(func=cmd_run)
    sub.add_parser("web", help="the HTTP API (and webhooks) only").set_defaults(func=cmd_run)
    sub.add_parser("worker", help="the processor and outbound worker only").set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    studio = sub.add_parser("studio", help="manage studios").add_subparsers(dest="studio_command", required=True)
    add = studio.add_parser("add", help="create a studio and print its address and owner token")
    add.add_argument("slug")
    add.add_argument("--name", required=True)
    add.add_argument("--owner-email", required=True)
    add.add_argument("--locale", default="de", choices=["de", "en"])
    add.add_argument("--country", help="ISO 3166 code (DE, AT, ...): which lockdowns pause its payments")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_studio_add)

    lockdown = sub.add_parser("lockdown", help="suspend every payment during a lockdown (Stripe)")
    lockdown_sub = lockdown.add_subparsers(dest="action", required=True)
    start = lockdown_sub.add_parser("start", help="pause payment collection of every paid studio in scope")
    start.add_argument("--name", required=True)
    start.add_argument("--country", action="append", help="ISO code; repeat for several; none: all countries")
    end = lockdown_sub.add_parser("end", help="resume the payments a lockdown paused")
    end.add_argument("--name", required=True)
    lockdown_sub.add_parser("status", help="list lockdowns and their pauses")
    for cmd in (start, end, lockdown_sub.choices["status"]):
        cmd.add_argument("--json", action="store_true")
        cmd.set_defaults(func=cmd_lockdown)

    dkim_cmd = sub.add_parser("dkim", help="DKIM keys for outgoing mail").add_subparsers(dest="dkim_command",
                                                                                         required=True)
    keygen = dkim_cmd.add_parser("keygen", help="write a key pair and print the DNS TXT record to publish")
    keygen.add_argument("--selector", default="gateway")
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa",
                        help="rsa (2048 bit, understood everywhere) or ed25519 (RFC 8463)")
    keygen.add_argument("--output", help="key file (default: $GATEWAY_DATA_DIR/dkim-<selector>.pem)")
    keygen.set_defaults(func=cmd_dkim_keygen)

    backup = sub.add_parser("backup", help="write a consistent backup of the database (safe while running)")
    backup.add_argument("--output", help="backup file (default: $GATEWAY_BACKUP_DIR/backup-<time>.tar)")
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup into the configured database (gateway stopped)")
    restore.add_argument("file")
    restore.add_argument("--force", action="store_true", help="overwrite a database that holds studios or mail")
    restore.set_defaults(func=cmd_restore)
    helpdesk = sub.add_parser("helpdesk", help="the helpdesk studio (GATEWAY_HELPDESK_ADDRESS)")
    helpdesk.add_argument("action", choices=["token", "deletions"],
                          help="token: a new owner token for the helpdesk; deletions: account deletions asked for")
    helpdesk.add_argument("--json", action="store_true")
    helpdesk.set_defaults(func=cmd_helpdesk)

    quarantine = sub.add_parser("quarantine", help="inspect or retry parked messages")
    quarantine.add_argument("action", choices=["list", "retry"])
    quarantine.add_argument("ids", nargs="*", type=int, help="with retry: only these ids")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(func=cmd_quarantine)
    add_support_commands(sub)

    purge_cmd = sub.add_parser("purge", help="erase conversations and messages deleted 30 days ago or more")
    purge_cmd.add_argument("--dry-run", action="store_true", help="only say what would be erased")
    purge_cmd.add_argument("--json", action="store_true")
    purge_cmd.set_defaults(func=cmd_purge)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
