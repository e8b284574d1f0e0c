"""The processor's CPU per message, without SMTP, HTTP or other processes in the way.

The end-to-end figure of bench/smtp_ingest.py is bounded by how fast the processor threads
stored mail, but on a shared machine its wall-clock figures move by ±15 % from run to run.
This stores N of that benchmark's German mails as the acceptor does (gateway.inbound.acceptor.store_batch)
and times `gateway.inbound.processor.drain` with `time.process_time`, which only counts this process's
CPU: the figure to compare variants of the processor by. Its same-run baseline is flanker
parsing the same mails and nothing else (`flanker.mime.from_string`), the floor of a product
choice: the ratio moves less than either figure when the machine is busy.

    .venv/bin/python bench/processor_cpu.py [--messages N] [--database sqlite|postgres]
        [--repeat R] [--profile]

PostgreSQL: GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) is
only used to CREATE and DROP a throwaway database `gwcpu_<random>` per repeat.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.smtp_ingest import MAIL_DOMAIN, RCPT, SECRET, STUDIO_SLUG, make_message  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_database() -> tuple[str, str, str]:
    """(admin URL, database name, URL of a fresh throwaway database)."""
    import psycopg

    admin = os.environ.get("GATEWAY_BENCH_DATABASE_URL", DEFAULT_PG_URL)
    name = f"gwcpu_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin, name, admin.rsplit("/", 1)[0] + "/" + name


def _drop(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def flanker_baseline(count: int) -> float:
    """CPU seconds flanker alone takes to parse `count` of the same mails."""
    from gateway.inbound.mime.tree import _flanker_mime

    run = uuid.uuid4().hex[:6]
    texts = [make_message(run, i, "small")[1].replace(b"\r\n..", b"\r\n.").decode("latin-1")
             for i in range(count)]
    before = time.process_time()
    for text in texts:
        _flanker_mime.from_string(text)
    return time.process_time() - before


def run_once(database: str, count: int, profile: bool) -> tuple[float, int]:
    """CPU seconds of draining `count` stored messages, and how many were threaded."""
    from gateway.store.db import dispose_engines, get_engine, migrate, write_tx
    from gateway.inbound.intake import Envelope, store_batch
    from gateway.inbound.processor import drain
    from gateway.runtime import REACTIONS
    from gateway.settings import Settings
    from gateway.access.studios import add_studio

    tmp = tempfile.mkdtemp(prefix="gwcpu-")
    admin = name = ""
    try:
        if database == "postgres":
            admin, name, url = _postgres_database()
        else:
            url = f"sqlite:///{tmp}/gateway.db"
        settings = Settings(data_dir=Path(tmp), database_url=url, mail_domain=MAIL_DOMAIN, secret_key=SECRET,
                            flood_max_new_per_hour=10**9, log_level="WARNING")
        migrate(settings.resolved_database_url)
        engine = get_engine(settings.resolved_database_url)
        run = uuid.uuid4().hex[:6]
        messages = [make_message(run, i, "small") for i in range(count)]
        with write_tx(engine) as conn:
            add_studio(conn, STUDIO_SLUG, "Inkwell Tattoo", "owner@inkwell.example")
        for start in range(0, count, 100):
            with write_tx(engine) as conn:
                store_batch(conn, [(raw.replace(b"\r\n..", b"\r\n."), Envelope(sender, [RCPT]))
                                   for sender, raw, _ in messages[start:start + 100]],
                            settings, settings.secret())
        profiler = cProfile.Profile() if profile else None
        before = time.process_time()
        if profiler:
            profiler.enable()
        done = drain(engine, settings, REACTIONS)
        if profiler:
            profiler.disable()
        spent = time.process_time() - before
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        threaded = sum(1 for p in done if p.status == "done" and p.outcomes and p.outcomes[0].message_id)
        dispose_engines()
        return spent, threaded
    finally:
        if name:
            _drop(admin, name)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one run (slower; shares only)")
    args = parser.parse_args()
    figures, baselines = [], []
    for _ in range(1 if args.profile else args.repeat):
        baselines.append(flanker_baseline(args.messages) / args.messages * 1000)
        spent, threaded = run_once(args.database, args.messages, args.profile)
        if threaded != args.messages:
            sys.exit(f"only {threaded} of {args.messages} messages were threaded")
        figures.append(spent / args.messages * 1000)
        print(f"  {args.database}: {figures[-1]:.3f} ms CPU per message ({threaded} threaded); "
              f"baseline flanker.from_string {baselines[-1]:.3f} ms", flush=True)
    median, base = statistics.median(figures), statistics.median(baselines)
    print(f"{args.database}: median {median:.3f} ms CPU per message, best {min(figures):.3f} ms; "
          f"baseline flanker alone {base:.3f} ms; ratio {median / base:.2f} (N={args.messages}, {len(figures)} runs)")


if __name__ == "__main__":
    main()
