"""Webhook ingest rate beside a do-nothing Litestar POST route, measured in the same run.

    .venv/bin/python bench/webhook_ingest.py [--messages N] [--connections C]
        [--database sqlite|postgres|both] [--roles web|serve|both] [--profile] [--spy FILE]

Processes (loopback only, all started and stopped here):
- baseline: a Litestar app whose one POST route reads the body and answers 200 with a small
  JSON document, on uvicorn with uvloop and httptools, one worker: what any webhook endpoint
  costs before it does anything.
- gateway: the real Gateway with the `web` role (the Procfile's web process) or all roles
  (`gateway serve`), Mailgun enabled, on a fresh SQLite file or a throwaway PostgreSQL database.
- client: one raw-asyncio HTTP/1.1 keep-alive client process, the same code for both servers,
  C connections. Every request is a distinct Mailgun "mime" route post (~3 KB: a ~2 KB German
  mail, its own Message-ID, token and HMAC signature), built before the clock starts.

Figures: requests/s (N / first send → last answer) and client-side latency p50/p99; for the
gateway every 200 must be a stored `inbound_mail` row (checked after the run). Target: gateway
rate ≥ 30 % of the baseline's.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing as mp
import os
import secrets
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.baselines import litestar_baseline_main  # noqa: E402
from bench.lib.gateway_calls import MAILGUN_SIGNING_KEY  # noqa: E402
from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.mails import RCPT, guest, short_inquiry  # noqa: E402
from bench.lib.loadclient import multipart_request  # noqa: E402
from bench.lib.measure import measure_http  # noqa: E402
from bench.lib.procs import connect, throwaway_database  # noqa: E402
from bench.lib.report import met, ratio  # noqa: E402

TARGET_SHARE = 30  # per cent of the baseline's requests/s
ROLE_SETS = {"web": ("web",), "serve": ("smtp", "web", "worker")}
# `gateway serve` on a two-core machine runs its worker role in two processes of its own; pinned
# to the server core it would count one core and run the worker in its own process instead.
SERVE_WORKERS = {"serve_worker_processes": 2}


def mailgun_posts(info: dict[str, Any], count: int) -> list[bytes]:
    """Distinct, validly signed Mailgun "mime" route posts to the server that answered `info`."""
    run = uuid.uuid4().hex[:8]
    now = str(int(time.time()))
    requests = []
    for i in range(count):
        token = secrets.token_hex(25)
        signature = hmac.new(MAILGUN_SIGNING_KEY.encode(), (now + token).encode(), hashlib.sha256).hexdigest()
        fields = {"recipient": RCPT.encode(), "sender": guest(run, i).encode(), "timestamp": now.encode(),
                  "token": token.encode(), "signature": signature.encode(), "body-mime": short_inquiry(run, i)}
        requests.append(multipart_request("/webhooks/mailgun/mime", info["http_port"], fields,
                                          {"User-Agent": "mailgun/treq-16.12.0"}))
    return requests


def stored_rows(database_url: str) -> int:
    with connect(database_url) as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM inbound_mail WHERE source = 'mailgun'").scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--roles", choices=["web", "serve", "both"], default="both")
    parser.add_argument("--profile", action="store_true", help="print the gateway's cProfile (slows it)")
    parser.add_argument("--spy", metavar="FILE", help="record the gateway with py-spy (raw folded stacks)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    backends = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    roles = list(ROLE_SETS) if args.roles == "both" else [args.roles]
    n, c = args.messages, args.connections

    print(f"webhook ingest: N={n} C={c}, ~3 KB Mailgun mime posts, cpus={os.cpu_count()}")
    failed = False
    for backend in backends:
        for role in roles:
            baseline = measure_http(ctx, litestar_baseline_main, ("mailgun",), mailgun_posts, n, c, "baseline",
                                    show_threads=True)
            options = GatewayOptions(roles=ROLE_SETS[role], settings={"mailgun_signing_key": MAILGUN_SIGNING_KEY,
                                                                      **(SERVE_WORKERS if role == "serve" else {})},
                                     pin=True, acceptor_log=True, cprofile=args.profile)
            with throwaway_database(backend) as (url, data_dir):
                ours = measure_http(ctx, gateway_main, (url, data_dir, options), mailgun_posts, n, c,
                                    f"gateway[{role}]", spy=args.spy, show_threads=True)
                stored = stored_rows(url)
            share = ratio(ours.rate, baseline.rate) * 100
            durable = stored == ours.ok
            failed |= not durable
            print(f"{backend:8} {role:5}  baseline {baseline.rate:7.0f} req/s p50 {baseline.p50:5.1f} ms "
                  f"p99 {baseline.p99:5.1f} ms | gateway {ours.rate:7.0f} req/s p50 {ours.p50:5.1f} ms "
                  f"p99 {ours.p99:5.1f} ms | CPU/req {baseline.cpu:.3f} vs {ours.cpu:.3f} ms, "
                  f"cores {baseline.cores:.2f} vs {ours.cores:.2f} | {share:5.1f} % of baseline "
                  f"(target >= {TARGET_SHARE} %) {met(share >= TARGET_SHARE)} | 200s {ours.ok}, stored rows {stored}"
                  f"{'' if durable else '  <-- MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
