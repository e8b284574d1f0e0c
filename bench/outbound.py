"""Replies: API latency beside a do-nothing Litestar route, send rate beside a plain aiosmtplib loop.

    .venv/bin/python bench/outbound.py [--replies N] [--messages N] [--connections C] [--roles web|serve|both]
        [--rounds R] [--warmup W] [--no-pin] [--api-only]

1. Reply API: C=20 keep-alive clients POST `{"text": ...}` to /api/v1/conversations/{id}/replies
   of the gateway (SQLite) as the `web` role or as `gateway serve` (its worker processes
   sending every reply as it is queued), beside a Litestar app whose POST route decodes the
   same JSON and answers 202 with a small document. p50/p99 client-side; target: reply p99
   under 3x the do-nothing route's p99. Each configuration is measured after --warmup
   unmeasured requests and cold (none: what an outside client meets), both servers alike,
   alternating baseline and gateway for --rounds rounds; medians (min-max) at the end.
2. Outbound: N queued replies sent by the outbox (no DKIM) to Postfix's smtp-sink (a C SMTP
   server that accepts everything: it is never the bottleneck), beside a plain aiosmtplib loop
   sending N pre-built messages of the same size to the same sink with the same number of
   connections, one message per connection and reusing connections. Target: ≥ 60 % of the
   plain loop (reusing connections, as the outbox does).
3. DKIM: signing cost per message, RSA-2048 and Ed25519, and the outbound rate with each.

smtp-sink comes with Debian's postfix package (`apt-get install postfix`); the script says so
and skips part 2 and 3's rates when it is missing. Server and client processes are pinned to
different cores, as in webhook_ingest.py.
"""
from __future__ import annotations

import argparse
import json
import statistics
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib import gateway_calls as gw  # noqa: E402
from bench.lib.baselines import litestar_baseline_main, plain_smtp_loop_main  # noqa: E402
from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.measure import measure_http  # noqa: E402
from bench.lib.procs import pin, run_child, smtp_sink, throwaway_database  # noqa: E402
from bench.lib.report import met, spread  # noqa: E402

WARMUP = 500  # requests before a warmed-up API run (connections, first-use compilation)
API_CONNECTIONS = 20
# As `gateway serve` runs on a two-core machine: its worker role in two processes of its own
# (GATEWAY_SERVE_WORKER_PROCESSES; pinned to one core, the gateway would count one and run none).
ROLE_SETS = {"web": (("web",), {}), "serve": (("smtp", "web", "worker"), {"serve_worker_processes": 2})}
TEXT = ("Hallo Lena,\n\ndanke für deine Anfrage! Freitag um 14 Uhr passt uns gut. Bring gern deine "
        "Skizze mit, dann besprechen wir Größe und Platzierung.\n\nViele Grüße\nInkwell Tattoo\n")


def reply_posts(info: dict[str, Any], count: int) -> list[bytes]:
    """The same reply POST `count` times, to the conversations the server seeded in turn."""
    body = json.dumps({"text": TEXT}, ensure_ascii=False, separators=(",", ":")).encode()
    ids = info.get("conversation_ids") or [info.get("conversation_id", 1)]
    posts = [(f"POST /api/v1/conversations/{conversation}/replies HTTP/1.1\r\n"
              f"Host: 127.0.0.1:{info['http_port']}\r\nAuthorization: Bearer {info.get('token', '')}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
             for conversation in ids]
    return [posts[i % len(posts)] for i in range(count)]


def outbox_main(pipe: Any, port: int, count: int, connections: int, dkim: str | None) -> None:
    """`count` replies queued, then sent by the outbox to `port`: ("result", (msg/s, sent))."""
    import uvloop

    pin("client")
    with throwaway_database("sqlite") as (url, data_dir):
        extra: dict[str, Any] = {}
        if dkim:
            key = Path(data_dir) / "dkim.pem"
            key.write_bytes(gw.dkim_private_key(dkim))
            extra = {"dkim_selector": "bench", "dkim_private_key_file": key}
        settings = gw.settings(data_dir, url, smtp_relay_url=f"smtp://127.0.0.1:{port}",
                               outbound_connections=connections, **extra)
        engine, (conversation_id, *_), _ = gw.seed_conversation(settings)
        gw.create_replies(engine, settings, conversation_id, TEXT, count)

        async def main() -> float:
            outbox = gw.outbox(engine, settings)
            started = time.perf_counter()
            try:
                while await outbox.run_once():
                    pass
            finally:
                for transport in outbox.transports:
                    await transport.close()
            return time.perf_counter() - started

        elapsed = uvloop.run(main())
        with engine.connect() as conn:
            sent = int(conn.exec_driver_sql("SELECT count(*) FROM outbound_job WHERE status = 'sent'").scalar_one())
        pipe.send(("result", (sent / elapsed, sent)))


def sample_message() -> bytes:
    """A composed reply as the outbox sends it (for the plain loop and the DKIM timings)."""
    with throwaway_database("sqlite") as (url, data_dir):
        settings = gw.settings(data_dir, url)
        engine, (conversation_id, *_), _ = gw.seed_conversation(settings)
        message = gw.composed_reply(engine, settings, conversation_id, TEXT)
        engine.dispose()
        return message


def dkim_costs(message: bytes) -> dict[str, float]:
    costs = {}
    for kind in ("rsa", "ed25519"):
        signer = gw.dkim_signer(kind)
        signer.sign(message)
        runs = 200 if kind == "ed25519" else 50
        started = time.process_time()
        for _ in range(runs):
            signer.sign(message)
        costs[kind] = (time.process_time() - started) / runs * 1000
    return costs


def reply_api(ctx: Any, role: str, count: int, warmup: int, pinned: bool, conversations: int) -> tuple[Any, Any]:
    """One round: the do-nothing route, then the gateway as `role`, each fresh and sent `warmup`
    unmeasured requests before `count` measured ones, spread over `conversations`."""
    base = measure_http(ctx, litestar_baseline_main, ("reply", pinned), reply_posts, count, API_CONNECTIONS,
                        "baseline", warmup=warmup, pin=pinned)
    roles, settings = ROLE_SETS[role]
    options = GatewayOptions(roles=roles, settings=settings, pin=pinned, seed=True, seed_conversations=conversations)
    with throwaway_database("sqlite") as (url, data_dir):
        ours = measure_http(ctx, gateway_main, (url, data_dir, options), reply_posts, count, API_CONNECTIONS,
                            f"gateway[{role}]", warmup=warmup, pin=pinned)
    p99_ratio = ours.p99 / base.p99
    print(f"reply API {role:5} warm-up {warmup:4} conv {conversations:3}  baseline {base.rate:6.0f} req/s p50 {base.p50:5.1f} ms "
          f"p99 {base.p99:5.1f} ms | gateway {ours.rate:6.0f} req/s p50 {ours.p50:5.1f} ms p99 {ours.p99:5.1f} ms | "
          f"p99 {p99_ratio:.1f}x baseline (target < 3x) {met(p99_ratio < 3)} | answers {ours.statuses}", flush=True)
    return base, ours


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=4000, help="reply API requests")
    parser.add_argument("--messages", type=int, default=3000, help="outbound messages")
    parser.add_argument("--connections", type=int, default=4, help="relay connections (outbox and plain loop)")
    parser.add_argument("--roles", choices=["web", "serve", "both"], default="both", help="the reply API's gateway")
    parser.add_argument("--rounds", type=int, default=1, help="reply API rounds, alternating baseline and gateway")
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help="unmeasured requests before the warmed-up runs (cold runs get none)")
    parser.add_argument("--no-pin", action="store_true",
                        help="servers and client on any core, as an outside client would run them")
    parser.add_argument("--api-only", action="store_true", help="the reply API only (no outbound rates, no DKIM)")
    parser.add_argument("--conversations", type=int, default=1,
                        help="conversations the replies go to in turn (1: every reply to one, the hardest case "
                             "for the per-conversation brake, whose limit the bench raises)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    roles = list(ROLE_SETS) if args.roles == "both" else [args.roles]
    print(f"outbound bench: {os.cpu_count()} cpus; reply API C={API_CONNECTIONS}, N={args.replies} "
          f"to {args.conversations} conversation(s), "
          f"{args.rounds} round(s), {'unpinned' if args.no_pin else 'server and client pinned apart'}; "
          f"send N={args.messages}, {args.connections} connections")

    ratios: dict[tuple[str, int], list[float]] = {}
    p99s: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for role in roles:
            for warmup in (args.warmup, 0):
                base, ours = reply_api(ctx, role, args.replies, warmup, not args.no_pin, args.conversations)
                ratios.setdefault((role, warmup), []).append(ours.p99 / base.p99)
                p99s.setdefault((role, warmup), []).append((base.p99, ours.p99))
    if args.rounds > 1:
        for (role, warmup), values in ratios.items():
            pairs = p99s[(role, warmup)]
            print(f"reply API {role:5} warm-up {warmup:4}: p99 {spread(values, '.2f', 'x')} the baseline's "
                  f"over {len(values)} rounds (baseline p99 {spread([b for b, _ in pairs], '.1f', ' ms')}, "
                  f"gateway {spread([g for _, g in pairs], '.1f', ' ms')}) "
                  f"(target < 3x) {met(statistics.median(values) < 3)}")
    if args.api_only:
        return 0

    message = sample_message()
    costs = dkim_costs(message)
    print(f"DKIM signing per message ({len(message)} bytes): RSA-2048 {costs['rsa']:.2f} ms, "
          f"Ed25519 {costs['ed25519']:.2f} ms (CPU)")

    if shutil.which("smtp-sink") is None:
        print("outbound rates skipped: smtp-sink not found (apt-get install postfix)")
        return 0
    with smtp_sink() as port:
        loop = (port, message, args.messages, args.connections)
        per_conn = run_child(ctx, plain_smtp_loop_main, *loop, False, name="plain loop, one per connection")
        reuse = run_child(ctx, plain_smtp_loop_main, *loop, True, name="plain loop, reusing")
        rate, sent = run_child(ctx, outbox_main, port, args.messages, args.connections, None, name="outbox")
        share = rate / reuse * 100
        print(f"outbound    plain aiosmtplib loop: {per_conn:6.0f} msg/s one per connection, {reuse:6.0f} msg/s "
              f"reusing | outbox {rate:6.0f} msg/s ({sent} sent) = {share:.0f} % of the reusing loop "
              f"(target >= 60 %) {met(share >= 60)}")
        for kind in ("ed25519", "rsa"):
            count = max(200, args.messages // (10 if kind == "rsa" else 2))
            signed_rate, signed = run_child(ctx, outbox_main, port, count, args.connections, kind,
                                            name=f"outbox with DKIM {kind}")
            print(f"outbound    with DKIM {kind}: {signed_rate:6.0f} msg/s ({signed} sent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
