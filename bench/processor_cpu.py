"""The processor's CPU per message, without SMTP, HTTP or other processes in the way.

The end-to-end figure of bench/smtp_ingest.py is bounded by how fast the processor threads
stored mail, but on a shared machine its wall-clock figures move by ±15 % from run to run.
This stores N of that benchmark's German mails as the acceptor does (gateway.inbound.intake.store_batch)
and times `gateway.inbound.processor.drain` with `time.process_time`, which only counts this process's
CPU: the figure to compare variants of the processor by. Its same-run baseline is flanker
parsing the same mails and nothing else (`flanker.mime.from_string`), the floor of a product
choice: the ratio moves less than either figure when the machine is busy.

    .venv/bin/python bench/processor_cpu.py [--messages N] [--database sqlite|postgres]
        [--repeat R] [--profile]

PostgreSQL: GATEWAY_BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test) is
only used to CREATE and DROP a throwaway database `gwbench_<random>` per repeat.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib import gateway_calls as gw  # noqa: E402
from bench.lib.baselines import flanker_cpu  # noqa: E402
from bench.lib.mails import make_message, unstuffed  # noqa: E402
from bench.lib.procs import throwaway_database  # noqa: E402


def mails(count: int) -> list[tuple[str, bytes]]:
    """(envelope sender, message as stored) for `count` of smtp_ingest's small mails."""
    run = uuid.uuid4().hex[:6]
    return [(sender, unstuffed(wire)) for sender, wire, _ in (make_message(run, i, "small") for i in range(count))]


def run_once(database: str, count: int, profile: bool) -> tuple[float, int]:
    """CPU seconds of draining `count` stored messages, and how many were threaded."""
    with throwaway_database(database) as (url, data_dir):
        settings = gw.settings(data_dir, url)
        engine = gw.migrated_engine(settings)
        gw.add_studio(engine)
        gw.store(engine, settings, mails(count))
        profiler = cProfile.Profile() if profile else None
        before = time.process_time()
        if profiler:
            profiler.enable()
        done = gw.drain(engine, settings)
        if profiler:
            profiler.disable()
        spent = time.process_time() - before
        if profiler:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        threaded = sum(1 for p in done if p.status == "done" and p.outcomes and p.outcomes[0].message_id)
        gw.dispose_engines()
        return spent, threaded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile one run (slower; shares only)")
    args = parser.parse_args(argv)
    figures, baselines = [], []
    for _ in range(1 if args.profile else args.repeat):
        texts = [raw.decode("latin-1") for _, raw in mails(args.messages)]
        baselines.append(flanker_cpu(texts) / args.messages * 1000)
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
