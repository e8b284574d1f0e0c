"""SMTP ingest benchmark: the gateway's acceptance rate beside a do-nothing aiosmtpd server.

Every figure is measured in the same run as its baseline, on the same machine, over loopback:

  baseline  aiosmtpd.smtp.SMTP whose handle_DATA answers "250 OK" at once (same size limit,
            decode_data=False, SMTPUTF8, same uvloop event loop), in its own process.
  gateway   the real Gateway (SMTP + HTTP API + processor thread, as `gateway serve` runs it)
            on a fresh SQLite file or a throwaway PostgreSQL database, in its own process;
            with --topology split, SMTP+web in one process and the worker in another.
  client    the same raw-asyncio SMTP client for both, in a third process, C connections,
            either one message per connection or many messages per (reused) connection.

Figures: acceptance rate and p99 time-to-250 vs the baseline; end to end (first send until
every message is threaded and visible through the API) vs the baseline's acceptance rate;
200 KB messages with a JPEG attachment; and whether every `250` is a stored row.

    .venv/bin/python bench/smtp_ingest.py [--messages N] [--connections C]
        [--database sqlite|postgres|both] [--size small|200k|both] [--topology serve|split|both] [--profile]

PostgreSQL: GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) is
only used to CREATE and DROP a throwaway database `gwbench_<random>` per gateway run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.baselines import smtp_baseline_main  # noqa: E402
from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.measure import SmtpFigure, measure_smtp  # noqa: E402
from bench.lib.procs import BenchAborted, Child, Deadline, connect, pg_admin_url, throwaway_database  # noqa: E402
from bench.lib.report import mark, ratio, table  # noqa: E402

# Targets from the brief; a figure is printed with "ok" or "MISS" beside its target.
TARGET_ACCEPT_RATIO = 0.80
TARGET_P99_MS = 50.0
TARGET_E2E_RATIO = 0.35
TARGET_200K_RATE = 50.0


@dataclass
class GatewayRun:
    accept: SmtpFigure
    e2e_rate: float | None = None
    e2e_seconds: float | None = None
    stored_rows: int = 0
    distinct_ids: int = 0
    conversations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    api_items: int = 0
    e2e_incomplete: int | None = None     # processed count when end to end did not finish in time
    profile: str = ""


def count_rows(url: str) -> tuple[int, int, dict[str, int]]:
    from sqlalchemy import text

    with connect(url) as conn:
        stored = conn.execute(text("SELECT count(*) FROM inbound_mail")).scalar_one()
        conversations = conn.execute(text("SELECT count(*) FROM conversation")).scalar_one()
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM inbound_mail GROUP BY status")).all())
    return stored, conversations, statuses


def run_gateway(ctx: Any, deadline: Deadline, backend: str, count: int, size: str, connections: int, mode: str,
                profile: bool, end_to_end: bool, worker: bool = True, switch_interval: float | None = None,
                e2e_timeout: float = 120.0, topology: str = "serve") -> GatewayRun:
    """One gateway run. topology "serve": all roles in one process, as `gateway serve`;
    "split": the Procfile's smtp+web process and a separate worker process."""
    import httpx
    label = f"{backend} {mode} {size}"
    split = topology == "split" and worker
    roles = ("smtp", "web", "worker") if worker and not split else ("smtp", "web")
    with throwaway_database(backend) as (url, data_dir):
        server = Child(ctx, gateway_main, url, data_dir,
                       GatewayOptions(roles=roles, timings=profile, switch_interval=switch_interval),
                       name=f"gateway[{backend}]", deadline=deadline)
        processor: Child | None = None
        try:
            info = server.expect("ready", f"starting the gateway ({backend})", limit=120)
            if split:  # started after the SMTP process has migrated the schema
                processor = Child(ctx, gateway_main, url, data_dir, GatewayOptions(roles=("worker",)),
                                  name=f"worker[{backend}]", deadline=deadline)
                processor.expect("ready", f"starting the worker ({backend})", limit=120)
            waiter = processor or server

            def go() -> None:
                if profile:
                    server.send("profile_start")
                    server.expect("ok", "starting the profiler")
                if end_to_end:  # the server notes the moment the processor has threaded all N
                    waiter.send("wait_processed", count, min(e2e_timeout, deadline.left(label) - 10))

            figure, result = measure_smtp(ctx, deadline, info["smtp_port"], count, size, connections, mode, label,
                                          server.pid, go)
            run = GatewayRun(accept=figure, distinct_ids=len(set(result.inbound_ids)))
            if end_to_end:
                ok_done, t_done, processed = waiter.expect("processed", f"processing ({label})")
            if profile:
                server.send("profile_stop")
                run.profile = server.expect("profile", "collecting the profile")
            if end_to_end and not ok_done:  # reported as a miss; the other figures still count
                run.e2e_incomplete = processed
                print(f"  {label}: only {processed} of {count} processed after the --e2e-timeout of "
                      f"{e2e_timeout:.0f} s", flush=True)
            if end_to_end and run.e2e_incomplete is None:
                # Visible through the API: the owner's list must show the newest conversations.
                with httpx.Client(base_url=f"http://127.0.0.1:{info['http_port']}", timeout=30,
                                  headers={"Authorization": f"Bearer {info['token']}"}) as api:
                    response = api.get("/api/v1/conversations", params={"limit": 200})
                    t_visible = time.monotonic()
                    response.raise_for_status()
                    run.api_items = len(response.json()["items"])
                if run.api_items < min(200, count):
                    raise BenchAborted(f"API lists {run.api_items} conversations, expected {min(200, count)}")
                run.e2e_seconds = max(t_done, t_visible) - figure.t_first
                run.e2e_rate = count / run.e2e_seconds
            server.stop(f"stopping the gateway ({backend})")
            if processor is not None:
                processor.stop(f"stopping the worker ({backend})")
        finally:
            server.close()
            if processor is not None:
                processor.close()
        run.stored_rows, run.conversations, run.statuses = count_rows(url)
    return run


def run_baseline(ctx: Any, deadline: Deadline, count: int, size: str, connections: int, mode: str) -> SmtpFigure:
    server = Child(ctx, smtp_baseline_main, name="baseline", deadline=deadline)
    try:
        info = server.expect("ready", "starting the baseline", limit=60)
        figure, _ = measure_smtp(ctx, deadline, info["smtp_port"], count, size, connections, mode,
                                 f"baseline {mode} {size}", server.pid)
        server.stop("stopping the baseline", limit=30)
    finally:
        server.close()
    return figure


def _cpu(fig: SmtpFigure) -> str:
    return f"{100 * fig.server_cpu:.0f}%/{100 * fig.client_cpu:.0f}%"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per small-message run (default 5000)")
    parser.add_argument("--messages-200k", type=int, default=1000, help="messages per 200 KB run (default 1000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent client connections (default 20)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--size", choices=["small", "200k", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=600.0, help="global limit in seconds (default 600)")
    parser.add_argument("--e2e-timeout", type=float, default=90.0,
                        help="longest wait for the processor to thread one run's messages (default 90 s)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the gateway's threads and time its ingest functions during the small per-connection run")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                        help="diagnosis: the gateway process's GIL switch interval in ms (Python default 5)")
    parser.add_argument("--topology", choices=["serve", "split", "both"], default="both",
                        help="serve: all roles in one process (gateway serve); split: SMTP+web process and a "
                             "worker process (the Procfile); default both")
    parser.add_argument("--no-worker", action="store_true",
                        help="diagnosis: run the gateway without its processor thread (acceptance only, no end to end)")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.messages_200k < 1 or args.connections < 1:
        parser.error("--messages, --messages-200k and --connections must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    sizes = ["small", "200k"] if args.size == "both" else [args.size]
    deadline = Deadline(args.timeout)
    ctx = mp.get_context("spawn")  # no inherited threads, engines or loops in the children
    n, c = args.messages, args.connections

    print(f"SMTP ingest benchmark: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), "
          f"Python {sys.version.split()[0]}, uvloop; loopback only; client, baseline and gateway in separate processes")
    print(f"N={n} small (~4 KB German, half 8bit / half quoted-printable), N={args.messages_200k} at 200 KB "
          f"(JPEG attachment, base64); C={c} connections; timeout {args.timeout:.0f} s")
    if "postgres" in backends:
        print(f"PostgreSQL: {re.sub(r'//[^@/]*@', '//***@', pg_admin_url())} (throwaway gwbench_* databases)")
    sys.stdout.flush()

    rows: list[list[str]] = []
    notes: list[str] = []
    profiles: list[str] = []
    failed = False
    try:
        base: dict[tuple[str, str], SmtpFigure] = {}
        modes = [("small", "per-conn"), ("small", "reuse")] if "small" in sizes else []
        if "200k" in sizes:
            modes.append(("200k", "per-conn"))
        for size, mode in modes:
            count = n if size == "small" else args.messages_200k
            base[(size, mode)] = fig = run_baseline(ctx, deadline, count, size, c, mode)
            rows.append(["baseline", f"accept {size} {mode}", f"{fig.ok}/{fig.sent}", f"{fig.rate:,.0f}",
                         f"{fig.p50_ms:.1f}", f"{fig.p99_ms:.1f}", _cpu(fig), "", "", ""])
            print(f"  baseline {size} {mode}: {fig.rate:,.0f} msg/s, p99 {fig.p99_ms:.1f} ms", flush=True)

        topologies = ["serve", "split"] if args.topology == "both" else [args.topology]
        for backend, topology in [(b, t) for b in backends for t in topologies]:
            for size, mode in modes:
                if size == "200k" and topology == "split" and len(topologies) > 1:
                    continue  # 200 KB acceptance is measured once, with all roles in one process
                count = n if size == "small" else args.messages_200k
                run = run_gateway(ctx, deadline, backend, count, size, c, mode,
                                  profile=args.profile and size == "small" and mode == "per-conn",
                                  end_to_end=(size == "small" and not args.no_worker), worker=not args.no_worker,
                                  switch_interval=args.switch_interval / 1000 if args.switch_interval else None,
                                  e2e_timeout=args.e2e_timeout, topology=topology)
                server_label = backend if args.no_worker else f"{backend} {topology}"
                failed |= report_run(run, base[(size, mode)], server_label, size, mode, count, args, rows, notes)
                if run.profile:
                    profiles.append(f"profile: {server_label} {size} {mode} (acceptance + processing window)\n{run.profile}")
    except BenchAborted as exc:
        print(f"\nABORTED: {exc}", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("\nABORTED: interrupted", file=sys.stderr)
        failed = True

    if rows:
        header = ["server", "figure", "250s/sent", "msg/s", "p50 ms", "p99 ms", "CPU srv/cli", "baseline msg/s",
                  "ratio", "target"]
        print()
        print(table(header, rows))
        print("\nlatency = client-side time-to-250: from connect (one message per connection) or MAIL FROM "
              "(reused connection) to the reply after the final dot")
        print("CPU srv/cli = % of one core used by the server process / the client process while sending")
        print("end-to-end = first send until the processor has threaded all N and the API lists them, "
              "as N / seconds, against the baseline's acceptance rate")
    for note in notes:
        print("  " + note)
    for text in profiles:
        print("\n" + text)
    return 1 if failed else 0


def report_run(run: GatewayRun, ref: SmtpFigure, server_label: str, size: str, mode: str, count: int,
               args: argparse.Namespace, rows: list[list[str]], notes: list[str]) -> bool:
    """Add one gateway run's table rows and check note, print its progress line; True if a check failed."""
    fig = run.accept
    accept_ratio = ratio(fig.rate, ref.rate)
    if size == "small":
        verdict = f"{mark(accept_ratio >= TARGET_ACCEPT_RATIO)} ≥80%, {mark(fig.p99_ms < TARGET_P99_MS)} p99<50"
    else:
        verdict = f"{mark(fig.rate >= TARGET_200K_RATE)} ≥50/s"
    rows.append([server_label, f"accept {size} {mode}", f"{fig.ok}/{fig.sent}", f"{fig.rate:,.0f}",
                 f"{fig.p50_ms:.1f}", f"{fig.p99_ms:.1f}", _cpu(fig), f"{ref.rate:,.0f}", f"{100 * accept_ratio:.0f}%",
                 verdict])
    if run.e2e_incomplete is not None:
        rows.append([server_label, f"end-to-end {mode}", f"{run.e2e_incomplete}/{count}",
                     f"<{run.e2e_incomplete / args.e2e_timeout:,.0f}", "", "", "", f"{ref.rate:,.0f}",
                     "", f"MISS (not done in {args.e2e_timeout:.0f} s)"])
    if run.e2e_rate is not None:
        e2e_ratio = ratio(run.e2e_rate, ref.rate)
        rows.append([server_label, f"end-to-end {mode}", f"{count}", f"{run.e2e_rate:,.0f}", "", "", "",
                     f"{ref.rate:,.0f}", f"{100 * e2e_ratio:.0f}%", f"{mark(e2e_ratio >= TARGET_E2E_RATIO)} ≥35%"])
    stored_ok = run.stored_rows == fig.ok == run.distinct_ids
    threaded_ok = size != "small" or args.no_worker or run.conversations == fig.ok
    notes.append(
        f"{server_label} {size} {mode}: 250s={fig.ok}, inbound_mail rows={run.stored_rows}, distinct ids in "
        f"250 replies={run.distinct_ids} -> {'every 250 stored' if stored_ok else 'MISMATCH'}; "
        f"conversations={run.conversations}; status={run.statuses}"
        + (f"; e2e {run.e2e_seconds:.2f} s, API listed {run.api_items}" if run.e2e_seconds else "")
        + (f"; other replies {dict(fig.codes)}" if set(fig.codes) - {250} else "")
        + (f"; client errors {dict(fig.errors)}" if fig.errors else ""))
    print(f"  {server_label} {size} {mode}: {fig.rate:,.0f} msg/s ({100 * accept_ratio:.0f}% of baseline), "
          f"p99 {fig.p99_ms:.1f} ms" + (f", end to end {run.e2e_rate:,.0f} msg/s" if run.e2e_rate else ""),
          flush=True)
    return not stored_ok or not threaded_ok


if __name__ == "__main__":
    sys.exit(main())
