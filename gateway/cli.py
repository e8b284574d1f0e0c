"""The `gateway` command: run roles, migrate, manage studios and the quarantine."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from pydantic import ValidationError
from sqlalchemy import Engine, select, update

from gateway.db import get_engine, migrate, read_tx, write_tx
from gateway.settings import Settings, get_settings


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

    dkim_cmd = sub.add_parser("dkim", help="DKIM keys for outgoing mail").add_subparsers(dest="dkim_command",
                                                                                         required=True)
    keygen = dkim_cmd.add_parser("keygen", help="write a key pair and print the DNS TXT record to publish")
    keygen.add_argument("--selector", default="gateway")
    keygen.add_argument("--type", choices=["rsa", "ed25519"], default="rsa",
                        help="rsa (2048 bit, understood everywhere) or ed25519 (RFC 8463)")
    keygen.add_argument("--output", help="key file (default: $GATEWAY_DATA_DIR/dkim-<selector>.pem)")
    keygen.set_defaults(func=cmd_dkim_keygen)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
