"""`gateway studio add|list|show|remove|login-link`: create a studio, look at studios, delete one
for good, print a one-time sign-in link to the web messenger."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from gateway.cli import common
from gateway.store.db import read_tx, write_tx

# Studio columns the list and show print, in this order.
FIELDS = ("id", "slug", "name", "owner_email", "locale", "country", "time_zone", "created_at")
REMOVE_PROMPT = ("Delete studio {slug} ({name}, owner {owner}) with all its conversations, guests, "
                 "profiles and tokens, for good? Type the slug to confirm: ")
NOT_REMOVED = "gateway: nothing deleted (confirm with the studio's slug, or pass --yes)"


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


def _studios(conn: Connection, mail_domain: str, slug: str | None = None) -> list[dict[str, Any]]:
    from gateway.store.tables import STUDIO

    query = select(*(STUDIO.c[name] for name in FIELDS)).order_by(STUDIO.c.slug)
    if slug is not None:
        query = query.where(STUDIO.c.slug == slug.lower())
    rows = []
    for row in conn.execute(query):
        item = dict(row._mapping)
        item["address"] = f"{item['slug']}@{mail_domain}"
        item["created_at"] = item["created_at"].isoformat()
        rows.append(item)
    return rows


def _counts(conn: Connection, studio_id: int) -> dict[str, int]:
    from gateway.store.tables import CONVERSATION, GUEST, MESSAGE, PROFILE

    return {name: int(conn.execute(select(func.count()).select_from(table)
                                   .where(table.c.studio_id == studio_id)).scalar_one())
            for name, table in (("conversations", CONVERSATION), ("messages", MESSAGE),
                                ("guests", GUEST), ("profiles", PROFILE))}


def cmd_studio_list(args: argparse.Namespace) -> int:
    settings = common.settings()
    engine = common.readable(settings)
    studios: list[dict[str, Any]] = []
    if engine is not None:
        with read_tx(engine) as conn:
            studios = _studios(conn, settings.mail_domain)
    if args.json:
        print(json.dumps(studios))
        return 0
    for s in studios:
        print(f"{s['id']}\t{s['slug']}\t{s['address']}\t{s['name']}\t{s['owner_email']}\t{s['created_at'][:10]}")
    print(f"{len(studios)} studio(s)")
    return 0


def cmd_studio_show(args: argparse.Namespace) -> int:
    settings = common.settings()
    engine = common.readable(settings)
    found: list[dict[str, Any]] = []
    if engine is not None:
        with read_tx(engine) as conn:
            found = _studios(conn, settings.mail_domain, args.slug)
            if found:
                found[0].update(_counts(conn, found[0]["id"]))
    if not found:
        return common.fail(f"no studio {args.slug.lower()}")
    if args.json:
        print(json.dumps(found[0]))
    else:
        width = max(len(k) for k in found[0])
        for key, value in found[0].items():
            print(f"{key.ljust(width)}  {'' if value is None else value}")
    return 0


def cmd_studio_remove(args: argparse.Namespace) -> int:
    """The account deletion path (gateway/lifecycle/account_deletion.py) without a mailed code:
    the operator confirms by typing the slug, or passes --yes in a script."""
    from gateway.lifecycle.account_deletion import DeletionRefused, delete_by_operator
    from gateway.store.models import utcnow

    settings = common.settings()
    engine = common.migrated(settings)
    with read_tx(engine) as conn:
        found = _studios(conn, settings.mail_domain, args.slug)
    if not found:
        return common.fail(f"no studio {args.slug.lower()}")
    studio = found[0]
    if not args.yes:
        if not sys.stdin.isatty():
            print(NOT_REMOVED, file=sys.stderr)
            return 1
        answer = input(REMOVE_PROMPT.format(slug=studio["slug"], name=studio["name"], owner=studio["owner_email"]))
        if answer.strip().lower() != studio["slug"]:
            print(NOT_REMOVED, file=sys.stderr)
            return 1
    try:
        deleted = delete_by_operator(engine, settings, studio["slug"], now=utcnow(), reason=args.reason,
                                     cancel_subscription=_cancel_subscription(engine, settings))
    except DeletionRefused as exc:
        return common.fail(str(exc))
    print(f"studio {studio['slug']} (id {deleted.studio_id}) deleted")
    return 0


def _cancel_subscription(engine: Engine, settings: Any) -> Any:
    """Stripe's subscription ends first, as for an owner's confirmed deletion (api/app.py)."""
    from functools import partial

    from gateway.billing.stripe_api import stripe_api
    from gateway.billing.subscriptions import cancel_for_deletion

    return partial(cancel_for_deletion, engine, stripe_api(settings), settings)


def cmd_studio_login_link(args: argparse.Namespace) -> int:
    """A one-time sign-in link (gateway/access/web_sessions.py) for the studio's owner, or for
    the connected profile with --email: the operator's way to the first login, and for local use
    without mail. The link's origin is GATEWAY_PUBLIC_URL; unset, the local HTTP address."""
    from gateway.access.web_sessions import LINK_VALIDITY, create_link, link_url, recipients
    from gateway.store.models import utcnow
    from gateway.store.tables import PROFILE, STUDIO

    settings = common.settings()
    engine = common.migrated(settings)
    with write_tx(engine) as conn:
        studio = conn.execute(select(STUDIO.c.id, STUDIO.c.owner_email).where(STUDIO.c.slug == args.slug.lower())).first()
        if studio is None:
            print(f"gateway: no studio {args.slug!r}", file=sys.stderr)
            return 1
        email = args.email
        if email is None:  # the owner's profile (its address may differ from the registered owner address)
            email = conn.execute(select(PROFILE.c.email).where(
                PROFILE.c.studio_id == studio.id, PROFILE.c.role == "owner", PROFILE.c.disconnected_at.is_(None))
                .order_by(PROFILE.c.id).limit(1)).scalar() or studio.owner_email
        found = recipients(conn, email, studio.id)
        if not found:
            print(f"gateway: {email} is not a connected profile of {args.slug}", file=sys.stderr)
            return 1
        link = create_link(conn, settings.secret(), found[0], utcnow())
    origin = settings.public_url or f"http://{settings.http_host}:{settings.http_port}"
    if not settings.public_url:
        print("gateway: GATEWAY_PUBLIC_URL is not set; the link uses the local HTTP address", file=sys.stderr)
    print(link_url(origin, link.token))
    print(f"valid once, for {int(LINK_VALIDITY.total_seconds() // 60)} minutes", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    studio = sub.add_parser("studio", help="manage studios").add_subparsers(dest="studio_command", required=True)
    add = studio.add_parser("add", help="create a studio and print its address and owner token")
    add.add_argument("slug", help="the studio's name in its address, <slug>@<mail domain> (a-z, 0-9, inner hyphens)")
    add.add_argument("--name", required=True, help="the studio's display name, the From name of its mail")
    add.add_argument("--owner-email", required=True, help="the owner's own address (notifications, deletion codes)")
    add.add_argument("--locale", default="de", choices=["de", "en"], help="language of its mail (default: de)")
    add.add_argument("--country", help="ISO 3166 code (DE, AT, ...): which lockdowns pause its payments")
    add.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add.set_defaults(func=cmd_studio_add)
    list_cmd = studio.add_parser("list", help="every studio: id, slug, address, name, owner, created (read-only)")
    list_cmd.add_argument("--json", action="store_true", help="print a JSON array instead of text")
    list_cmd.set_defaults(func=cmd_studio_list)
    show = studio.add_parser("show", help="one studio with its counts of conversations, messages, guests (read-only)")
    show.add_argument("slug", help="the studio's slug")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.set_defaults(func=cmd_studio_show)
    remove = studio.add_parser("remove", help="delete a studio and all its data for good (the account deletion path)")
    remove.add_argument("slug", help="the studio's slug")
    remove.add_argument("--yes", action="store_true", help="do not ask; needed when stdin is not a terminal")
    remove.add_argument("--reason", default="", help="why, kept in `gateway helpdesk deletions` (no personal data)")
    remove.set_defaults(func=cmd_studio_remove)
    login = studio.add_parser("login-link", help="print a one-time sign-in link to the web messenger (15 minutes)")
    login.add_argument("slug", help="the studio's slug")
    login.add_argument("--email", help="the connected profile to sign in (default: the owner)")
    login.set_defaults(func=cmd_studio_login_link)
