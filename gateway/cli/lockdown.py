"""`gateway lockdown start|end|status`: suspend every payment in a lockdown's scope (Stripe)."""
from __future__ import annotations

import argparse
import json
import sys

from gateway.cli import common


def cmd_lockdown(args: argparse.Namespace) -> int:
    """Pause (start) or resume (end) every paid subscription in a lockdown's scope; rerun to repair."""
    from gateway.billing.lockdowns import LockdownError, end_lockdown, lockdown_status, start_lockdown
    from gateway.billing.stripe_api import stripe_api

    settings = common.settings()
    common.configure_logging(settings)
    engine = common.migrated(settings)
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


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lockdown = sub.add_parser("lockdown", help="suspend every payment during a lockdown (Stripe)")
    lockdown_sub = lockdown.add_subparsers(dest="action", required=True)
    start = lockdown_sub.add_parser("start", help="pause payment collection of every paid studio in scope")
    start.add_argument("--name", required=True, help="a name for this lockdown, to end it by later")
    start.add_argument("--country", action="append", help="ISO code; repeat for several; none: all countries")
    end = lockdown_sub.add_parser("end", help="resume the payments a lockdown paused")
    end.add_argument("--name", required=True, help="the name given at `lockdown start`")
    lockdown_sub.add_parser("status", help="list lockdowns and their pauses")
    for cmd in (start, end, lockdown_sub.choices["status"]):
        cmd.add_argument("--json", action="store_true", help="print JSON instead of text")
        cmd.set_defaults(func=cmd_lockdown)
