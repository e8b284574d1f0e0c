"""`gateway serve|smtp|web|worker|migrate`: run the roles, or only bring the schema up to date."""
from __future__ import annotations

import argparse

from gateway.cli import common


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.runtime import ROLES, run

    settings = common.settings()
    common.configure_logging(settings)
    run(settings, ROLES if args.command == "serve" else [args.command])
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from gateway.lifecycle.helpdesk import ensure_helpdesk

    settings = common.settings()
    engine = common.migrated(settings)
    print("schema is up to date")
    if ensure_helpdesk(engine, settings) is not None:
        print(f"helpdesk: {settings.helpdesk_address} (`gateway helpdesk token` for its owner token)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sub.add_parser("serve", help="SMTP, HTTP API and worker in one process").set_defaults(func=cmd_run)
    sub.add_parser("smtp", help="the SMTP server only").set_defaults(func=cmd_run)
    sub.add_parser("web", help="the HTTP API (and webhooks) only").set_defaults(func=cmd_run)
    sub.add_parser("worker", help="the processor and outbound worker only").set_defaults(func=cmd_run)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
