"""`gateway quarantine list|retry`: messages accepted but not threaded, and putting them back."""
from __future__ import annotations

import argparse
import json
from typing import Any

from sqlalchemy import select, update

from gateway.cli import common
from gateway.store.db import read_tx, write_tx


def cmd_quarantine(args: argparse.Namespace) -> int:
    from gateway.store.tables import INBOUND

    settings = common.settings()
    if args.action == "list":  # read-only: never migrates (common.readable)
        engine = common.readable(settings)
        rows: list[Any] = []
        if engine is not None:
            with read_tx(engine) as conn:
                rows = list(conn.execute(select(INBOUND.c.id, INBOUND.c.received_at, INBOUND.c.mail_from,
                                                INBOUND.c.rcpt_to, INBOUND.c.size, INBOUND.c.error)
                                         .where(INBOUND.c.status == "quarantined").order_by(INBOUND.c.id)).all())
        if args.json:
            print(json.dumps([{"id": r.id, "received_at": r.received_at.isoformat(), "mail_from": r.mail_from,
                               "rcpt_to": json.loads(r.rcpt_to), "size": r.size, "reason": r.error}
                              for r in rows]))
        else:
            for r in rows:
                print(f"{r.id}\t{r.received_at:%Y-%m-%d %H:%M:%S}\t{r.mail_from or '<>'}\t{r.size}\t{r.error}")
            print(f"{len(rows)} quarantined")
        return 0
    engine = common.migrated(settings)
    with write_tx(engine) as conn:
        query = update(INBOUND).where(INBOUND.c.status == "quarantined")
        if args.ids:
            query = query.where(INBOUND.c.id.in_(args.ids))
        count = conn.execute(query.values(status="pending", attempts=0, error=None)).rowcount
    # Only a retry processes mail: `list` stays a read that loads no web stack or parser.
    from gateway.inbound.processor import drain
    from gateway.runtime import REACTIONS

    results = drain(engine, settings, REACTIONS)
    still = sum(1 for r in results if r.status == "quarantined")
    print(f"{count} put back; {len(results) - still} processed, {still} quarantined again")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    quarantine = sub.add_parser("quarantine", help="inspect or retry parked messages")
    quarantine.add_argument("action", choices=["list", "retry"],
                            help="list: show them (read-only); retry: put them back and process them now")
    quarantine.add_argument("ids", nargs="*", type=int, help="with retry: only these ids")
    quarantine.add_argument("--json", action="store_true", help="with list: print JSON instead of text")
    quarantine.set_defaults(func=cmd_quarantine)
