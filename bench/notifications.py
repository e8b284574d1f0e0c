"""Notifications benchmark: SMTP end to end with notifications on, beside the same run with them off.

Issue 16's "Proof": for a studio of three profiles (the owner and two members), mail end to end
(first send until the processor has threaded every accepted message) with all three notified
immediately stays within 10 % of the figure with all three "off". Both are measured in the same
run, rounds alternating off/on, each on a fresh database with the real gateway in a child
process (bench/lib/gateway_process.py, as `gateway serve` runs it, or every role in one process) sending its notifications
into its Maildir (no relay: this machine has no smtp-sink); the client is bench/lib/loadclient.py, C connections of one
message each, every message from a new guest (so each opens a conversation and notifies all
three profiles: the storm limit never helps).

    .venv/bin/python bench/notifications.py [--rounds R] [--messages N] [--connections C]
        [--database sqlite|postgres] [--topology serve|single]

Bounded: the whole run aborts after --deadline seconds (default 600).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.measure import measure_smtp  # noqa: E402
from bench.lib.procs import BenchAborted, Child, Deadline, throwaway_database  # noqa: E402

TARGET = 0.90   # on ÷ off, end to end
PUBLIC_URL = "https://gateway.example"


def _profiles(database_url: str, mode: str) -> None:
    """Two members beside the owner the gateway made, and every profile's mode."""
    from sqlalchemy import create_engine, insert, select

    from bench.lib.gateway_calls import normalise_url
    from gateway.outbound.notify_preferences import update_preferences
    from gateway.store.models import utcnow
    from gateway.store.tables import PROFILE, STUDIO

    engine = create_engine(normalise_url(database_url))
    try:
        with engine.begin() as conn:
            studio_id = conn.execute(select(STUDIO.c.id)).scalar_one()
            for n in (1, 2):
                conn.execute(insert(PROFILE).values(studio_id=studio_id, email=f"artist{n}@inkwell.example",
                                                    name=f"Artist {n}", role="member", created_at=utcnow()))
            for profile_id in conn.execute(select(PROFILE.c.id).where(PROFILE.c.studio_id == studio_id)).scalars():
                update_preferences(conn, studio_id, profile_id, {"mode": mode}, utcnow())
    finally:
        engine.dispose()


def _notifications(database_url: str) -> int:
    from sqlalchemy import create_engine, func, select

    from bench.lib.gateway_calls import normalise_url
    from gateway.store.tables import NOTIFICATION

    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(NOTIFICATION)).scalar_one())
    finally:
        engine.dispose()


def _all_sent_after(database_url: str, t_done: float, limit: float) -> float | None:
    """Seconds from the last message threaded until every notification was sent (polled every
    20 ms, after the measured part), or None if not within `limit`: notifications wait while
    mail waits (gateway/outbound/notifications.py), and this shows what that costs them."""
    from sqlalchemy import create_engine, func, select

    from bench.lib.gateway_calls import normalise_url
    from gateway.store.tables import MESSAGE, NOTIFICATION, OUTBOUND_JOB

    unsent = (select(func.count()).select_from(OUTBOUND_JOB.join(MESSAGE, MESSAGE.c.id == OUTBOUND_JOB.c.message_id))
              .where(MESSAGE.c.conversation_id.is_(None), OUTBOUND_JOB.c.status != "sent"))
    # Told at once, and the mail not queued yet (the outbox queues them after the burst).
    unqueued = (select(func.count()).select_from(NOTIFICATION)
                .where(NOTIFICATION.c.immediate.is_(True), NOTIFICATION.c.mail_ref.is_(None)))
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            while conn.execute(unsent).scalar_one() or conn.execute(unqueued).scalar_one():
                conn.rollback()  # a fresh snapshot for the next look
                if time.monotonic() - t_done > limit:
                    return None
                time.sleep(0.02)
        return time.monotonic() - t_done
    finally:
        engine.dispose()


def run_once(ctx: Any, deadline: Deadline, backend: str, mode: str, count: int,
             connections: int, single: bool) -> tuple[float, int, float | None]:
    """(end-to-end messages per second, notification rows, seconds until the last notification
    was sent after the last message was threaded) of one run with every profile on `mode`."""
    label = f"{backend} notifications {mode}"
    with throwaway_database(backend) as (url, data_dir):
        settings: dict[str, Any] = {"public_url": PUBLIC_URL}
        if single:   # every role in one process; else as `gateway serve` runs (workers in child processes)
            settings["serve_worker_processes"] = 0
        server = Child(ctx, gateway_main, url, data_dir,
                       GatewayOptions(roles=("smtp", "web", "worker"), settings=settings),
                       name=f"gateway[{label}]", deadline=deadline, daemon=False)
        try:
            info = server.expect("ready", f"starting the gateway ({label})", limit=120)
            _profiles(url, "immediately" if mode == "on" else "off")
            figure, _ = measure_smtp(ctx, deadline, info["smtp_port"], count, "small", connections, "per-conn",
                                     label, server.pid,
                                     lambda: server.send("wait_processed", count, deadline.left(label) - 10))
            ok, t_done, processed = server.expect("processed", f"processing ({label})")
            if not ok:
                raise BenchAborted(f"{label}: only {processed} of {count} processed in time")
            rate = figure.ok / (t_done - figure.t_first)
            sent_after = _all_sent_after(url, t_done, 60.0) if mode == "on" else 0.0
            server.stop(f"stopping the gateway ({label})")
        finally:
            server.close()
        return rate, _notifications(url), sent_after


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--deadline", type=float, default=600.0)
    parser.add_argument("--topology", choices=("serve", "single"), default="serve")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    deadline = Deadline(args.deadline)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    ratios: list[float] = []
    for round_ in range(args.rounds):
        for mode in ("off", "on"):
            rate, rows, sent_after = run_once(ctx, deadline, args.database, mode, args.messages,
                                              args.connections, args.topology == "single")
            rates[mode].append(rate)
            after = "" if mode == "off" else (
                f", all sent {sent_after:.1f} s after the last was threaded" if sent_after is not None
                else ", NOT all sent within 60 s")
            print(f"round {round_ + 1} {mode:>3}: {rate:7.1f} msg/s end to end ({rows} notifications{after})",
                  flush=True)
        ratios.append(rates["on"][-1] / rates["off"][-1])
    ratio = statistics.median(ratios)
    print(f"\n{args.database}, {args.topology}, {args.messages} messages, {args.connections} connections, three profiles:")
    print(f"  notifications off (baseline, same run): {statistics.median(rates['off']):7.1f} msg/s "
          f"(min {min(rates['off']):.1f}, max {max(rates['off']):.1f})")
    print(f"  notifications on, all three immediately: {statistics.median(rates['on']):7.1f} msg/s "
          f"(min {min(rates['on']):.1f}, max {max(rates['on']):.1f})")
    print(f"  on ÷ off, median of rounds: {ratio:.2f} (target ≥ {TARGET:.2f}: {'ok' if ratio >= TARGET else 'MISS'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
