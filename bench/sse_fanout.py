"""Live events: one event fanned out to C open streams, and the memory of idle streams.

    .venv/bin/python bench/sse_fanout.py [--connections 200] [--rounds 50] [--idle 1000] \
        [--database sqlite|postgres] [--timeout 300]

1. Fan-out. C clients hold `GET /api/v1/events` open on a gateway `web` process (a fresh
   SQLite file, or a throwaway PostgreSQL database). Each round, one reply is POSTed to the
   studio's conversation (its `message.created` event is written in the reply's transaction);
   the figure is the time from sending that POST until the LAST of the C streams has the
   event, over the rounds: p50 and p99 (target: p99 under 100 ms). Beside it, the same fan-out
   from a do-nothing Litestar app on the same uvicorn: its POST sets an in-memory broadcast
   that C streams of a Stream route wait on (no database, no polling). Rounds start at random
   moments (0-100 ms apart), so the gateway's poll interval (GATEWAY_EVENTS_POLL_INTERVAL,
   25 ms by default) falls anywhere in them.
2. Idle memory. N more streams are opened on each server and left idle; the server process's
   RSS grows by the figure printed (total and per stream), read from /proc before and after.

Server and client are separate processes, pinned to different cores (bench/lib/procs.py).
Every wait is bounded by --timeout; everything started is stopped, whatever happened.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark the working tree, not an installed copy
    sys.path.insert(0, str(ROOT))

from bench.lib.baselines import sse_baseline_main  # noqa: E402
from bench.lib.gateway_process import GatewayOptions, gateway_main  # noqa: E402
from bench.lib.procs import BenchAborted, Child, Deadline, pin, throwaway_database  # noqa: E402
from bench.lib.report import met, percentile  # noqa: E402

TARGET_P99_MS = 100.0
TEXT = "Hallo Lena,\n\nFreitag um 14 Uhr passt.\n"


async def _open_stream(port: int, path: str, token: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{auth}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream refused: {head[:200]!r}")
    await reader.readuntil(b"retry: 3000")  # the first frame: the stream is subscribed
    return reader, writer


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, path: str,
                token: str | None, body: bytes) -> None:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 202 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"POST refused: {head[:300]!r}")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)


def client_main(pipe: Any, port: int, stream_path: str, post_path: str, token: str | None,
                connections: int, rounds: int, idle: int, server_pid: int) -> None:
    """Fan-out rounds, then idle streams: ("result", {...})."""
    import uvloop

    pin("client")

    async def main() -> dict[str, Any]:
        streams = [await _open_stream(port, stream_path, token) for _ in range(connections)]
        got = [0] * connections
        last_arrival: dict[int, float] = {}
        waiting: dict[int, asyncio.Event] = {}

        async def read(index: int, reader: asyncio.StreamReader) -> None:
            while data := await reader.read(65536):
                count = data.count(b"event: message.created")
                if count:
                    got[index] += count
                    done = got[index]
                    if sum(1 for g in got if g >= done) == connections:
                        last_arrival[done] = time.perf_counter()
                        waiting[done].set()

        readers = [asyncio.create_task(read(i, r)) for i, (r, _) in enumerate(streams)]
        post_reader, post_writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"text": TEXT}).encode()
        latencies: list[float] = []
        posts: list[float] = []
        rng = random.Random(7)
        for n in range(1, rounds + 1):
            waiting[n] = asyncio.Event()
            await asyncio.sleep(rng.uniform(0, 0.1))
            started = time.perf_counter()
            await _post(post_reader, post_writer, port, post_path, token, body)
            posts.append((time.perf_counter() - started) * 1000)
            await asyncio.wait_for(waiting[n].wait(), timeout=10)
            latencies.append((last_arrival[n] - started) * 1000)
        rss_before = _rss_kb(server_pid)
        idle_streams = [await _open_stream(port, stream_path, token) for _ in range(idle)]
        await asyncio.sleep(1.0)  # let the server settle what each stream holds
        rss_after = _rss_kb(server_pid)
        for task in readers:
            task.cancel()
        for _, writer in [*streams, *idle_streams, (post_reader, post_writer)]:
            writer.close()
        return {"latencies": latencies, "posts": posts, "rss_before_kb": rss_before, "rss_after_kb": rss_after}

    pipe.send(("result", uvloop.run(main())))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _measure(ctx: Any, server: Child, info: dict[str, Any], stream_path: str, post_path: str,
             args: argparse.Namespace, deadline: Deadline) -> dict[str, Any]:
    client = Child(ctx, client_main, info["http_port"], stream_path, post_path, info.get("token"),
                   args.connections, args.rounds, args.idle, server.pid, name="client", deadline=deadline)
    try:
        return client.expect("result", "fanning out")
    finally:
        client.close()


def _line(name: str, result: dict[str, Any], connections: int, idle: int) -> str:
    values = sorted(result["latencies"])
    grown = result["rss_after_kb"] - result["rss_before_kb"]
    return (f"{name:<10} fan-out to {connections}: p50 {percentile(values, 0.5):6.1f} ms  "
            f"p99 {percentile(values, 0.99):6.1f} ms  max {values[-1]:6.1f} ms  "
            f"(POST answered: p50 {percentile(sorted(result['posts']), 0.5):5.1f} ms)   "
            f"{idle} idle streams: +{grown / 1024:6.1f} MB RSS ({grown / max(idle, 1):5.1f} KB each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    deadline = Deadline(args.timeout)
    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, Any]] = {}
    try:
        baseline = Child(ctx, sse_baseline_main, name="baseline", deadline=deadline)
        try:
            info = baseline.expect("ready", "starting the baseline")
            results["baseline"] = _measure(ctx, baseline, info, "/events", "/fire", args, deadline)
            baseline.stop("stopping the baseline")
        finally:
            baseline.close()
        with throwaway_database(args.database) as (url, data_dir):
            options = GatewayOptions(roles=("web",), seed=True, pin=True, settings={
                "reply_max_per_conversation_per_hour": args.rounds + 10})
            gateway = Child(ctx, gateway_main, url, data_dir, options, name="gateway", deadline=deadline,
                            daemon=False)  # seeding parses in a child of its own
            try:
                info = gateway.expect("ready", "starting the gateway")
                post_path = f"/api/v1/conversations/{info['conversation_id']}/replies"
                results["gateway"] = _measure(ctx, gateway, info, "/api/v1/events", post_path, args, deadline)
                gateway.stop("stopping the gateway")
            finally:
                gateway.close()
    except BenchAborted as exc:
        print(f"aborted: {exc}", file=sys.stderr)
        return 2
    print(f"SSE fan-out ({args.database}, {args.rounds} rounds, from sending the POST to the last stream's receipt)")
    for name in ("baseline", "gateway"):
        print(_line(name, results[name], args.connections, args.idle))
    p99 = percentile(sorted(results["gateway"]["latencies"]), 0.99)
    print(f"target: gateway p99 under {TARGET_P99_MS:.0f} ms: {met(p99 < TARGET_P99_MS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
