"""`gateway studio add`: create a studio and print its address and owner token."""
from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import common
from gateway.store.db import write_tx


def cmd_studio_add(args: argparse.Namespace) -> int:
    from gateway.access.studios import StudioError, add_studio

    settings = common.settings()
    engine = common.migrated(settings)
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


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    studio = sub.add_parser("studio", help="manage studios").add_subparsers(dest="studio_command", required=True)
    add = studio.add_parser("add", help="create a studio and print its address and owner token")
    add.add_argument("slug")
    add.add_argument("--name", required=True)
    add.add_argument("--owner-email", required=True)
    add.add_argument("--locale", default="de", choices=["de", "en"])
    add.add_argument("--country", help="ISO 3166 code (DE, AT, ...): which lockdowns pause its payments")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_studio_add)
