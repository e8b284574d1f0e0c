"""Inquiry form submissions beside a do-nothing Litestar multipart POST, measured in the same run.

    .venv/bin/python bench/form_submit.py [--messages N] [--connections C] [--database sqlite|postgres|both] [--profile]
        [--spy PREFIX] [--threads]

Processes (loopback only, all started and stopped here):
- baseline: a Litestar app whose one route POST /f/{slug} parses the multipart form with
  Litestar's own parser and answers a small HTML page, on uvicorn with uvloop and httptools:
  what any form endpoint costs before it does anything.
- gateway: the real Gateway with the `web` role, its limits raised out of the way (one client
  address sends everything), on a fresh SQLite file or a throwaway PostgreSQL database.
- client: one raw-asyncio HTTP/1.1 keep-alive client process, C connections (default 20). Each
  request is a distinct submission of the default form: its answers, consent, a freshly issued
  `_issued` field and one 200 KB JPEG, built before the clock starts.

Figures: submissions/s, client-side p50/p99. Every 200 of the gateway must be an inquiry the
API lists: a visible `form` message in its own conversation with its one attachment (checked
in the database after the run). Target: gateway rate >= 30 % of the baseline's.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.baselines import litestar_baseline_main  # noqa: E402
from bench.lib.gateway_calls import form_issued  # noqa: E402
from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.loadclient import multipart_request  # noqa: E402
from bench.lib.mails import STUDIO_SLUG  # noqa: E402
from bench.lib.measure import measure_http  # noqa: E402
from bench.lib.procs import connect, throwaway_database  # noqa: E402
from bench.lib.report import met, ratio  # noqa: E402

TARGET_SHARE = 30  # per cent of the baseline's requests/s
IMAGE_SIZE = 200 * 1024
STUDIO_ID = 1      # the only studio of a fresh database
UNLIMITED = {name: 10**9 for name in ("form_per_ip_per_hour", "form_per_address_per_day", "form_daily_cap",
                                      "form_bare_per_ip_per_hour", "form_bare_per_address_per_day")}


def form_posts(info: dict[str, Any], count: int) -> list[bytes]:
    """Distinct submissions of the default form, each with one 200 KB JPEG."""
    rng = random.Random(17)
    run = uuid.uuid4().hex[:8]
    requests = []
    for i in range(count):
        image = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + rng.randbytes(IMAGE_SIZE - 11)
        fields = {"name": f"Gast {i}", "email": f"guest-{run}-{i}@example.org",
                  "idea": "Eine kleine Rose am Handgelenk, feine Linien, etwa so groß wie eine Münze.",
                  "placement": "Handgelenk", "size": "4", "dates": "Freitags ab 14 Uhr", "_consent": "yes",
                  "_issued": form_issued(STUDIO_ID)}
        requests.append(multipart_request(
            f"/f/{STUDIO_SLUG}", info["http_port"], {k: v.encode() for k, v in fields.items()},
            {"Accept-Language": "de-DE,de;q=0.9", "User-Agent": "Mozilla/5.0 (bench)"},
            [("images", f"ref-{i}.jpg", "image/jpeg", image)]))
    return requests


def visible_inquiries(database_url: str) -> int:
    """Inquiries the API lists: a visible `form` message with its attachment, in a live conversation."""
    with connect(database_url) as conn:
        return int(conn.exec_driver_sql(
            "SELECT count(*) FROM message m JOIN conversation c ON c.id = m.conversation_id "
            "WHERE m.thread_rule = 'form' AND m.state = 'visible' AND c.deleted_at IS NULL "
            "AND EXISTS (SELECT 1 FROM attachment a WHERE a.message_id = m.id)").scalar_one())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--profile", action="store_true", help="print the gateway's cProfile (slows it)")
    parser.add_argument("--spy", metavar="PREFIX", help="record the gateway with py-spy into PREFIX-<database>.txt "
                        "(raw folded stacks; pip install py-spy)")
    parser.add_argument("--threads", action="store_true", help="print the gateway's CPU per request by thread")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    backends = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    n, c = args.messages, args.connections

    print(f"form submit: N={n} C={c}, default form with one 200 KB image, cpus={os.cpu_count()}")
    failed = False
    for backend in backends:
        baseline = measure_http(ctx, litestar_baseline_main, ("form",), form_posts, n, c, "baseline")
        options = GatewayOptions(roles=("web",), settings={"form_min_fill_seconds": 0, **UNLIMITED}, pin=True,
                                 cprofile=args.profile)
        with throwaway_database(backend) as (url, data_dir):
            ours = measure_http(ctx, gateway_main, (url, data_dir, options), form_posts, n, c, "gateway[web]",
                                spy=f"{args.spy}-{backend}.txt" if args.spy else None,
                                show_threads=args.threads)
            visible = visible_inquiries(url)
        share = ratio(ours.rate, baseline.rate) * 100
        complete = visible == ours.ok == n
        failed |= not complete
        print(f"{backend:8} baseline {baseline.rate:7.0f} req/s p50 {baseline.p50:6.1f} ms p99 {baseline.p99:6.1f} ms"
              f" | gateway {ours.rate:7.0f} req/s p50 {ours.p50:6.1f} ms p99 {ours.p99:6.1f} ms"
              f" | CPU/req {baseline.cpu:.3f} vs {ours.cpu:.3f} ms | {share:5.1f} % of baseline"
              f" (target >= {TARGET_SHARE} %) {met(share >= TARGET_SHARE)} | 200s {ours.ok}, in the API {visible}"
              f"{'' if complete else '  <-- MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
