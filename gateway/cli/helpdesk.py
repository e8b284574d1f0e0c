"""`gateway helpdesk token|deletions`: the operator's helpdesk studio and the deletions asked of it."""
from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import common
from gateway.store.db import read_tx


def cmd_helpdesk(args: argparse.Namespace) -> int:
    """The helpdesk studio's owner token, and the account deletions asked of the helpdesk."""
    from gateway.lifecycle.account_deletion import list_requests
    from gateway.lifecycle.helpdesk import NoHelpdesk, issue_helpdesk_token
    from gateway.store.models import utcnow

    settings = common.settings()
    engine = common.migrated(settings)
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


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    helpdesk = sub.add_parser("helpdesk", help="the helpdesk studio (GATEWAY_HELPDESK_ADDRESS)")
    helpdesk.add_argument("action", choices=["token", "deletions"],
                          help="token: a new owner token for the helpdesk; deletions: account deletions asked for")
    helpdesk.add_argument("--json", action="store_true", help="print JSON instead of text")
    helpdesk.set_defaults(func=cmd_helpdesk)
