"""SMTP ingest benchmark: the gateway beside a stock do-nothing aiosmtpd, the way an outside check would.

Issue 20's "Proof" is the spec. Every process runs on its own, over loopback:

  baseline  stock aiosmtpd.smtp.SMTP whose handle_DATA answers "250 OK" at once, with the
            gateway's SMTP settings (size limit, decode_data=False, SMTPUTF8, idle timeout),
            on the stock asyncio event loop. It does not offer PIPELINING.
  gateway   the real gateway as `gateway serve` runs it (gateway/runtime.Served: SMTP + HTTP API,
            and the worker in the two child processes serve starts on two or more cores)
            on a fresh SQLite file or a throwaway PostgreSQL database for every run; with
            --topology single, every role in one process (GATEWAY_SERVE_WORKER_PROCESSES=0,
            serve before issue 20); with split, the Procfile's SMTP+web and worker processes;
            with procfile, procfile2 and procfile22 (issue 18), `gateway smtp`, `gateway web`
            and `gateway worker` each in processes of their own: one of each; two smtp
            processes on one port (GATEWAY_REUSE_PORT); two smtp and two workers. Their
            targets: acceptance ≥ 0.75× and end to end ≥ 0.30× the baseline.
  client    the same raw-asyncio client for both (bench/lib/loadclient.py): it pipelines
            MAIL, RCPT and DATA in one write when the server offers PIPELINING, as Postfix
            does, and talks lock-step otherwise; the next transaction waits for the 250.

Shapes: C×1 (C connections at a time, one message each, --messages in all) and C×K (C kept
connections, K messages each), both with ~4 KB German multipart/alternative mail; and C×1
with 200 KB mail carrying a JPEG attachment. Rounds alternate A/B: for each shape, the
baseline, then the gateway, then the next shape; --rounds times. Each figure is printed as the
median of the rounds with min–max; a ratio is taken per round (gateway ÷ the baseline run just
before it) and the median of those is printed.

Targets (ok/MISS beside each; a miss does not change the exit status): acceptance ≥ 1.5× the
baseline at C×1 and ≥ 2.5× at C×K; p99 from writing the final dot to reading the 250 < 20 ms;
end to end (first send until the API lists every accepted mail, following the conversation
list's cursor with its largest page) ≥ 0.60× the baseline's acceptance rate; 200 KB
acceptance ≥ 1.0× the baseline. Checks (exit status 1 when one fails, or the run is aborted):
every 250 is a stored row with its own id, and, when end to end finished, every 250 opened a
conversation the API lists.

    .venv/bin/python bench/smtp_ingest.py [--rounds R] [--messages N] [--per-connection K]
        [--connections C] [--database sqlite|postgres|both] [--size small|200k|both]
        [--topology serve|single|split|procfile|procfile2|procfile22|procfiles|all] [--profile]

PostgreSQL: GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) is
only used to CREATE and DROP a throwaway database `gwbench_<random>` per gateway run.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import statistics
import sys
import time
from collections import Counter
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
from bench.lib.report import mark, ratio, spread, table  # noqa: E402

# Targets of issue 20; each figure is printed with "ok" or "MISS" beside its target.
TARGET_ACCEPT = {("small", "per-conn"): 1.5, ("small", "reuse"): 2.5, ("200k", "per-conn"): 1.0}
TARGET_DOT_P99_MS = 20.0     # 4 KB shapes
TARGET_E2E_RATIO = 0.60
# Issue 18: the Procfile's processes on PostgreSQL (`procfile`: one smtp, one web, one worker;
# `procfile2`: two smtp processes on one port; `procfile22`: and two workers).
# Topology → (smtp processes, worker processes).
PROCFILE = {"procfile": (1, 1), "procfile2": (2, 1), "procfile22": (2, 2)}
TARGET_PROCFILE_ACCEPT = 0.75
TARGET_PROCFILE_E2E = 0.30
# The largest page GET /api/v1/conversations serves (gateway/api/conversations.py: limit le=200);
# a larger one is answered 400 and aborts the run, so a change there cannot go unnoticed.
API_PAGE = 200


@dataclass(frozen=True)
class Shape:
    name: str          # "20×1", "20×150", "20×1 200 KB"
    size: str          # "small" (~4 KB) or "200k"
    mode: str          # "per-conn" or "reuse"
    count: int

    @property
    def end_to_end(self) -> bool:
        return self.size == "small"


@dataclass
class GatewayRun:
    accept: SmtpFigure
    e2e_rate: float | None = None
    e2e_seconds: float | None = None
    stored_rows: int = 0
    distinct_ids: int = 0
    conversations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    listed: int = 0                       # conversations the API listed, all pages
    pages: int = 0
    e2e_incomplete: int | None = None     # processed count when end to end did not finish in time
    profile: str = ""


@dataclass
class Pair:
    """One A/B pair: a baseline run, then a gateway run of the same shape in the same round."""
    round: int
    baseline: SmtpFigure
    gateway: GatewayRun
    problems: list[str] = field(default_factory=list)   # failed checks: a lost or unlisted message

    @property
    def accept_ratio(self) -> float:
        return ratio(self.gateway.accept.rate, self.baseline.rate)

    @property
    def e2e_ratio(self) -> float | None:
        rate = self.gateway.e2e_rate
        return None if rate is None else ratio(rate, self.baseline.rate)


def count_rows(url: str) -> tuple[int, int, dict[str, int]]:
    from sqlalchemy import text

    with connect(url) as conn:
        stored = conn.execute(text("SELECT count(*) FROM inbound_mail")).scalar_one()
        conversations = conn.execute(text("SELECT count(*) FROM conversation")).scalar_one()
        statuses = dict(conn.execute(text("SELECT status, count(*) FROM inbound_mail GROUP BY status")).all())
    return stored, conversations, statuses


def list_everything(http_port: int, token: str, expected: int, until: float) -> tuple[int, int, float]:
    """Follow the conversation list's cursor with its largest page until it lists `expected`
    conversations or `until` (monotonic) passes: (conversations listed, pages, when the last
    page of the last pass was read)."""
    import httpx

    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30,
                      headers={"Authorization": f"Bearer {token}"}) as api:
        while True:
            seen: set[int] = set()
            cursor: str | None = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": API_PAGE} | ({"cursor": cursor} if cursor else {})
                try:
                    response = api.get("/api/v1/conversations", params=params)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    raise BenchAborted(f"listing conversations: {exc}") from None
                page = response.json()
                pages += 1
                seen.update(item["id"] for item in page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            t_listed = time.monotonic()
            if len(seen) >= expected or t_listed >= until:
                return len(seen), pages, t_listed
            time.sleep(0.05)


def run_gateway(ctx: Any, deadline: Deadline, backend: str, shape: Shape, connections: int, profile: bool,
                worker: bool = True, switch_interval: float | None = None, e2e_timeout: float = 90.0,
                topology: str = "serve") -> GatewayRun:
    """One gateway run on a fresh database. topology "serve": as `gateway serve` runs; "single":
    all roles in one process; "split": the Procfile's smtp+web process and a worker process."""
    if topology in PROCFILE:
        return run_procfile(ctx, deadline, backend, shape, connections, PROCFILE[topology], e2e_timeout)
    label = f"{backend} {shape.name}"
    end_to_end = shape.end_to_end and worker
    split = topology == "split" and worker
    roles = ("smtp", "web", "worker") if worker and not split else ("smtp", "web")
    with throwaway_database(backend) as (url, data_dir):
        server = Child(ctx, gateway_main, url, data_dir,
                       GatewayOptions(roles=roles, timings=profile, switch_interval=switch_interval,
                                      settings={"serve_worker_processes": 0} if topology == "single" else {}),
                       name=f"gateway[{backend}]", deadline=deadline, daemon=False)
        processor: Child | None = None
        try:
            info = server.expect("ready", f"starting the gateway ({backend})", limit=120)
            if split:  # started after the SMTP process has migrated the schema
                processor = Child(ctx, gateway_main, url, data_dir, GatewayOptions(roles=("worker",)),
                                  name=f"worker[{backend}]", deadline=deadline)
                processor.expect("ready", f"starting the worker ({backend})", limit=120)
            waiter = processor or server
            e2e_wait = min(e2e_timeout, deadline.left(label) - 10)

            def go() -> None:
                if profile:
                    server.send("profile_start")
                    server.expect("ok", "starting the profiler")

            figure, result = measure_smtp(ctx, deadline, info["smtp_port"], shape.count, shape.size, connections,
                                          shape.mode, label, server.pid, go)
            run = GatewayRun(accept=figure, distinct_ids=len(set(result.inbound_ids)))
            if end_to_end:
                # Asked once the mail is in, not before: under serve the gateway process watches
                # the database for its worker children, a query every 10 ms on a thread of the
                # process being measured (about a tenth of its samples while it accepted mail).
                # End to end ends when the API lists everything, so the moment asked changes nothing.
                waiter.send("wait_processed", shape.count, max(1.0, figure.t_first + e2e_wait - time.monotonic()))
                ok_done, _, processed = waiter.expect("processed", f"processing ({label})")
            if profile:
                server.send("profile_stop")
                run.profile = server.expect("profile", "collecting the profile")
            if end_to_end and not ok_done:  # reported as a miss; the other figures still count
                run.e2e_incomplete = processed
                print(f"    {label}: only {processed} of {shape.count} processed after {e2e_wait:.0f} s "
                      "(--e2e-timeout)", flush=True)
            elif end_to_end:
                # Visible through the API: every conversation, page by page, as a client reads them.
                run.listed, run.pages, t_listed = list_everything(info["http_port"], info["token"], figure.ok,
                                                                  figure.t_first + e2e_timeout)
                run.e2e_seconds = t_listed - figure.t_first
                run.e2e_rate = figure.ok / run.e2e_seconds
            server.stop(f"stopping the gateway ({backend})")
            if processor is not None:
                processor.stop(f"stopping the worker ({backend})")
        finally:
            server.close()
            if processor is not None:
                processor.close()
        run.stored_rows, run.conversations, run.statuses = count_rows(url)
    return run


def run_procfile(ctx: Any, deadline: Deadline, backend: str, shape: Shape, connections: int,
                 processes: tuple[int, int], e2e_timeout: float) -> GatewayRun:
    """One run of the Procfile's processes on a fresh database: `gateway web` (it migrates and
    adds the studio), `gateway smtp` processes sharing one port (GATEWAY_REUSE_PORT), `gateway
    worker` processes, as many as `processes` says. End to end is watched by the web process,
    from the database."""
    import socket

    smtp_processes, worker_processes = processes
    label = f"{backend} procfile {smtp_processes} smtp {worker_processes} worker {shape.name}"
    end_to_end = shape.end_to_end
    children: list[Child] = []
    with throwaway_database(backend) as (url, data_dir):
        try:
            web = Child(ctx, gateway_main, url, data_dir, GatewayOptions(roles=("web",)),
                        name=f"web[{backend}]", deadline=deadline, daemon=False)
            children.append(web)
            info = web.expect("ready", f"starting web ({backend})", limit=120)
            with socket.create_server(("127.0.0.1", 0), reuse_port=True) as probe:
                port = probe.getsockname()[1]   # a free port, for the smtp processes to share
            smtps = []
            for i in range(smtp_processes):
                smtp = Child(ctx, gateway_main, url, data_dir,
                             GatewayOptions(roles=("smtp",), smtp_port=port, add_studio=False,
                                            settings={"reuse_port": True}),
                             name=f"smtp{i}[{backend}]", deadline=deadline, daemon=False)
                children.append(smtp)
                smtp.expect("ready", f"starting smtp {i} ({backend})", limit=120)
                smtps.append(smtp)
            for i in range(worker_processes):
                worker = Child(ctx, gateway_main, url, data_dir, GatewayOptions(roles=("worker",)),
                               name=f"worker{i}[{backend}]", deadline=deadline, daemon=False)
                children.append(worker)
                worker.expect("ready", f"starting worker {i} ({backend})", limit=120)
            e2e_wait = min(e2e_timeout, deadline.left(label) - 10)

            def go() -> None:
                if end_to_end:
                    web.send("wait_processed", shape.count, e2e_wait)

            figure, result = measure_smtp(ctx, deadline, port, shape.count, shape.size, connections,
                                          shape.mode, label, smtps[0].pid, go)
            run = GatewayRun(accept=figure, distinct_ids=len(set(result.inbound_ids)))
            if end_to_end:
                ok_done, _, processed = web.expect("processed", f"processing ({label})")
                if not ok_done:
                    run.e2e_incomplete = processed
                    print(f"    {label}: only {processed} of {shape.count} processed after {e2e_wait:.0f} s "
                          "(--e2e-timeout)", flush=True)
                else:
                    run.listed, run.pages, t_listed = list_everything(info["http_port"], info["token"], figure.ok,
                                                                      figure.t_first + e2e_timeout)
                    run.e2e_seconds = t_listed - figure.t_first
                    run.e2e_rate = figure.ok / run.e2e_seconds
            for child in reversed(children):
                child.stop(f"stopping {child.name}")
        finally:
            for child in children:
                child.close()
        run.stored_rows, run.conversations, run.statuses = count_rows(url)
    return run


def run_baseline(ctx: Any, deadline: Deadline, shape: Shape, connections: int) -> SmtpFigure:
    server = Child(ctx, smtp_baseline_main, name="baseline", deadline=deadline)
    try:
        info = server.expect("ready", "starting the baseline", limit=60)
        figure, _ = measure_smtp(ctx, deadline, info["smtp_port"], shape.count, shape.size, connections, shape.mode,
                                 f"baseline {shape.name}", server.pid)
        server.stop("stopping the baseline", limit=30)
    finally:
        server.close()
    return figure


def check(pair: Pair) -> None:
    """Nothing lost: every 250 a stored row with its own id; once end to end has finished,
    every 250 a conversation, and every conversation listed by the API."""
    fig, run = pair.gateway.accept, pair.gateway
    if not run.stored_rows == fig.ok == run.distinct_ids:
        pair.problems.append(f"250s={fig.ok}, inbound_mail rows={run.stored_rows}, "
                             f"distinct ids in 250 replies={run.distinct_ids}")
    if run.e2e_rate is not None and not run.conversations == run.listed == fig.ok:
        pair.problems.append(f"250s={fig.ok}, conversations={run.conversations}, listed by the API={run.listed}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds, baseline then gateway (default 3)")
    parser.add_argument("--messages", type=int, default=3000,
                        help="messages of the C×1 shape, one per connection (default 3000)")
    parser.add_argument("--per-connection", type=int, default=150, metavar="K",
                        help="messages per kept connection in the C×K shape (default 150)")
    parser.add_argument("--messages-200k", type=int, default=1000,
                        help="messages of the 200 KB shape, one per connection (default 1000)")
    parser.add_argument("--connections", type=int, default=20, help="concurrent client connections C (default 20)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--size", choices=["small", "200k", "both"], default="both")
    parser.add_argument("--topology", choices=["serve", "single", "split", *PROCFILE, "procfiles", "all"],
                        default="serve",
                        help="serve: as `gateway serve` runs (the targets' topology); single: every role in one "
                             "process (GATEWAY_SERVE_WORKER_PROCESSES=0); split: SMTP+web process and a worker "
                             "process (the Procfile); procfile: `gateway smtp`, `gateway web` and `gateway worker` "
                             "each in its own process; procfile2: the same with two smtp processes on one port; "
                             "procfile22: and two workers; procfiles: all three, alternating; default serve")
    parser.add_argument("--timeout", type=float, default=1200.0, help="global limit in seconds (default 1200)")
    parser.add_argument("--e2e-timeout", type=float, default=90.0,
                        help="longest wait from the first send until one run's mail is all listed (default 90 s)")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, one more C×1 gateway run (not counted) that samples the gateway's "
                             "threads and times its ingest functions")
    parser.add_argument("--switch-interval", type=float, default=None, metavar="MS",
                        help="diagnosis: the gateway process's GIL switch interval in ms (Python default 5)")
    parser.add_argument("--no-worker", action="store_true",
                        help="diagnosis: run the gateway without its processor thread (acceptance only, no end to end)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.messages, args.per_connection, args.messages_200k, args.connections) < 1:
        parser.error("--rounds, --messages, --per-connection, --messages-200k and --connections must be positive")
    return args


def shapes_of(args: argparse.Namespace) -> list[Shape]:
    c, k = args.connections, args.per_connection
    shapes = []
    if args.size in ("small", "both"):
        shapes += [Shape(f"{c}×1", "small", "per-conn", args.messages), Shape(f"{c}×{k}", "small", "reuse", c * k)]
    if args.size in ("200k", "both"):
        shapes.append(Shape(f"{c}×1 200 KB", "200k", "per-conn", args.messages_200k))
    return shapes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backends = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    topologies = (["serve", "single", "split"] if args.topology == "all" else
                  list(PROCFILE) if args.topology == "procfiles" else [args.topology])
    shapes = shapes_of(args)
    deadline = Deadline(args.timeout)
    ctx = mp.get_context("spawn")  # no inherited threads, engines or loops in the children
    worker = not args.no_worker
    switch = args.switch_interval / 1000 if args.switch_interval else None

    print(f"SMTP ingest benchmark: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), "
          f"Python {sys.version.split()[0]}; loopback only; client, baseline and gateway each in its own process")
    print("baseline: stock aiosmtpd, do-nothing handler, stock asyncio loop; gateway: as `gateway serve` runs it; "
          "client: raw asyncio on uvloop, pipelining MAIL/RCPT/DATA when PIPELINING is offered")
    print(f"shapes: {', '.join(f'{s.name} ({s.count} messages)' for s in shapes)}; mail: ~4 KB German "
          "multipart/alternative (half 8bit, half quoted-printable), 200 KB with a JPEG attachment; "
          f"{args.rounds} A/B rounds; timeout {args.timeout:.0f} s")
    if "postgres" in backends:
        print(f"PostgreSQL: {re.sub(r'//[^@/]*@', '//***@', pg_admin_url())} (throwaway gwbench_* databases)")
    sys.stdout.flush()

    variants = [(b, t) for b in backends for t in topologies]
    pairs: dict[tuple[str, str], list[Pair]] = {}   # (server label, shape name) → one Pair per round
    profile = ""
    failed = False
    try:
        for rnd in range(1, args.rounds + 1):
            print(f"round {rnd}/{args.rounds}", flush=True)
            for shape in shapes:
                for backend, topology in variants:
                    if shape.size == "200k" and topology != "serve" and len(topologies) > 1:
                        continue  # 200 KB acceptance is measured once, with all roles in one process
                    label = backend if args.no_worker else f"{backend} {topology}"
                    base = run_baseline(ctx, deadline, shape, args.connections)
                    run = run_gateway(ctx, deadline, backend, shape, args.connections, profile=False, worker=worker,
                                      switch_interval=switch, e2e_timeout=args.e2e_timeout, topology=topology)
                    pair = Pair(rnd, base, run)
                    check(pair)
                    failed |= bool(pair.problems)
                    pairs.setdefault((label, shape.name), []).append(pair)
                    progress(label, shape, pair)
        if args.profile and shapes[0].size == "small":
            backend, topology = variants[0]
            run = run_gateway(ctx, deadline, backend, shapes[0], args.connections, profile=True, worker=worker,
                              switch_interval=switch, e2e_timeout=args.e2e_timeout, topology=topology)
            profile = f"profile: {backend} {topology} {shapes[0].name}, one extra run (acceptance + processing)\n" \
                      f"{run.profile}"
    except BenchAborted as exc:
        print(f"\nABORTED: {exc}", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("\nABORTED: interrupted", file=sys.stderr)
        failed = True

    if pairs:
        print()
        print(summary(shapes, pairs))
        print("\nmedian (min–max) over rounds; ÷ baseline = the median of the per-round ratios, each the gateway's "
              "figure ÷ the baseline run just before it (A/B)")
        print("[pipelined] / [lock-step]: whether the server offered PIPELINING, so the client sent MAIL, RCPT and "
              "DATA in one write or waited for each reply")
        print("acceptance = 250s / (last 250 − first send); end of DATA → 250 = from writing the final dot (the body "
              "already sent) to reading the 250; send → 250 = from connect (C×1) or MAIL FROM (C×K) to the 250")
        print(f"end to end = first send until the processor has threaded every accepted mail and the API lists them "
              f"all (GET /api/v1/conversations?limit={API_PAGE}, following next_cursor), as 250s / seconds, "
              "÷ the baseline's acceptance rate")
        print("CPU srv/cli = % of one core used by the server process / the client process while sending (medians)")
        for (label, shape_name), runs in pairs.items():
            print("  " + check_line(label, shape_name, runs))
    if profile:
        print("\n" + profile)
    return 1 if failed else 0


def progress(label: str, shape: Shape, pair: Pair) -> None:
    base, fig, run = pair.baseline, pair.gateway.accept, pair.gateway
    line = (f"  {shape.name}: baseline {base.rate:,.0f} msg/s, p99 DATA→250 {base.dot_p99_ms:.1f} ms | {label} "
            f"{fig.rate:,.0f} msg/s = {pair.accept_ratio:.2f}×, p99 DATA→250 {fig.dot_p99_ms:.1f} ms")
    if run.e2e_rate is not None:
        line += (f", end to end {run.e2e_rate:,.0f} msg/s = {pair.e2e_ratio:.2f}× "
                 f"({run.pages} API page{'' if run.pages == 1 else 's'})")
    if base.ok != base.sent or base.errors:
        line += (f"\n    baseline: {base.ok}/{base.sent} answered 250, replies {dict(base.codes)}, "
                 f"errors {dict(base.errors)}")
    print(line + "".join(f"\n    CHECK FAILED: {problem}" for problem in pair.problems), flush=True)


def _server(label: str, figures: list[SmtpFigure]) -> str:
    offered = {fig.pipelining for fig in figures}
    return f"{label} [{'pipelined' if offered == {True} else 'lock-step' if offered == {False} else 'mixed'}]"


def _cpu(figures: list[SmtpFigure]) -> str:
    server, client = median([f.server_cpu for f in figures]), median([f.client_cpu for f in figures])
    return f"{100 * server:.0f}% / {100 * client:.0f}%"


def _sent(figures: list[SmtpFigure]) -> str:
    return f"{sum(f.ok for f in figures)}/{sum(f.sent for f in figures)}"


def summary(shapes: list[Shape], pairs: dict[tuple[str, str], list[Pair]]) -> str:
    header = ["shape", "server", "figure", "250s/sent", "median (min–max)", "÷ baseline", "target", "CPU srv/cli"]
    rows: list[list[str]] = []
    for shape in shapes:
        groups = [(label, runs) for (label, name), runs in pairs.items() if name == shape.name]
        if not groups:
            continue
        bases = [p.baseline for _, runs in groups for p in runs]
        rows.append([shape.name, _server("baseline", bases), "acceptance msg/s", _sent(bases),
                     spread([f.rate for f in bases]), "", "", _cpu(bases)])
        rows.append(["", "", "p99 end of DATA → 250 ms", "", spread([f.dot_p99_ms for f in bases], ".1f"), "", "", ""])
        rows.append(["", "", "p99 send → 250 ms", "", spread([f.p99_ms for f in bases], ".1f"), "", "", ""])
        for label, runs in groups:
            figs = [p.gateway.accept for p in runs]
            accept = [p.accept_ratio for p in runs]
            procfile = "procfile" in label
            want = TARGET_PROCFILE_ACCEPT if procfile else TARGET_ACCEPT[(shape.size, shape.mode)]
            rows.append(["", _server(label, figs), "acceptance msg/s", _sent(figs), spread([f.rate for f in figs]),
                         spread(accept, ".2f", "×"), f"≥ {want:.2f}× {mark(median(accept) >= want)}", _cpu(figs)])
            dot = [f.dot_p99_ms for f in figs]
            rows.append(["", "", "p99 end of DATA → 250 ms", "", spread(dot, ".1f"), "",
                         f"< {TARGET_DOT_P99_MS:.0f} ms {mark(median(dot) < TARGET_DOT_P99_MS)}"
                         if shape.size == "small" else "", ""])
            rows.append(["", "", "p99 send → 250 ms", "", spread([f.p99_ms for f in figs], ".1f"), "", "", ""])
            if not shape.end_to_end or all(p.gateway.e2e_rate is None and p.gateway.e2e_incomplete is None
                                           for p in runs):
                continue  # no processor (--no-worker), or a shape without end to end
            done = [p for p in runs if p.gateway.e2e_rate is not None]
            missing = len(runs) - len(done)
            e2e = [p.e2e_ratio for p in done if p.e2e_ratio is not None]
            want_e2e = TARGET_PROCFILE_E2E if procfile else TARGET_E2E_RATIO
            verdict = (f"≥ {want_e2e:.2f}× "
                       + (f"MISS ({missing} of {len(runs)} rounds not listed in time)" if missing
                          else mark(median(e2e) >= want_e2e)))
            rows.append(["", "", "end to end msg/s", f"{sum(p.gateway.listed for p in done)} listed",
                         spread([p.gateway.e2e_rate for p in done if p.gateway.e2e_rate is not None]),
                         spread(e2e, ".2f", "×"), verdict, ""])
    return table(header, rows)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def check_line(label: str, shape_name: str, runs: list[Pair]) -> str:
    """Nothing lost, per server and shape, over all rounds; the failures one by one."""
    figs = [p.gateway for p in runs]
    listed = any(r.e2e_rate is not None for r in figs)
    text = (f"{label} {shape_name}: 250s={sum(r.accept.ok for r in figs)}, inbound_mail rows="
            f"{sum(r.stored_rows for r in figs)}, distinct ids in 250 replies={sum(r.distinct_ids for r in figs)}, "
            + (f"conversations={sum(r.conversations for r in figs)}, listed by the API={sum(r.listed for r in figs)}"
               if listed else f"conversations when stopped={sum(r.conversations for r in figs)} (not awaited)"))
    problems = [f"round {p.round}: {problem}" for p in runs for problem in p.problems]
    text += " -> " + ("MISMATCH: " + "; ".join(problems) if problems
                      else "every 250 stored" + (" and listed" if listed else ""))
    statuses: dict[str, int] = {}
    for run in figs:
        for status, n in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    text += f"; status={statuses}"
    others = sum((Counter({code: n for code, n in p.gateway.accept.codes.items() if code != 250}) for p in runs),
                 Counter())
    if others:
        text += f"; other replies {dict(others)}"
    errors = [dict(p.gateway.accept.errors) for p in runs if p.gateway.accept.errors]
    if errors:
        text += f"; client errors {errors}"
    return text


if __name__ == "__main__":
    sys.exit(main())
