"""Webhook ingest rate beside a do-nothing Litestar POST route, measured in the same run.

    .venv/bin/python bench/webhook_ingest.py [--messages N] [--connections C]
        [--database sqlite|postgres|both] [--roles web|serve|both]

Processes (loopback only, all started and stopped here):
- baseline: a Litestar app whose one POST route reads the body and answers 200 with a small
  JSON document, on uvicorn with uvloop and httptools, one worker: what any webhook endpoint
  costs before it does anything.
- gateway: the real Gateway with the `web` role (the Procfile's web process) or all roles
  (`gateway serve`), Mailgun enabled, on a fresh SQLite file or a throwaway PostgreSQL database.
- client: one raw-asyncio HTTP/1.1 keep-alive client process, the same code for both servers,
  C connections. Every request is a distinct Mailgun "mime" route post (~4 KB German mail,
  its own Message-ID, token and HMAC signature), built before the clock starts.

Figures: requests/s (N / first send → last answer) and client-side latency p50/p99; for the
gateway every 200 must be a stored `inbound_mail` row (checked after the run). Target: gateway
rate ≥ 30 % of the baseline's.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import multiprocessing as mp
import os
import secrets
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestar import Litestar, Request, Response, post  # noqa: E402  (handler annotations resolve here)

KEY = "key-bench-signing-0123456789abcdef"
DOMAIN = "mail.bench"
STUDIO = "inkwell"
PG_URL = os.environ.get("GATEWAY_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def make_requests(count: int, port: int, run: str) -> list[bytes]:
    """Distinct, validly signed Mailgun posts; the Host header is filled in per server."""
    body_text = ("Hallo liebes Team,\r\n\r\nich würde mir gern ein Tattoo stechen lassen: eine "
                 "feine Linienzeichnung auf dem Unterarm, etwa 12 cm groß. Habt ihr im Dezember "
                 "noch Termine frei? Ich bin flexibel, am liebsten nachmittags.\r\n\r\n") * 8
    requests = []
    now = str(int(time.time()))
    for i in range(count):
        raw = (f"From: Gast {i} <gast{i}.{run}@example.org>\r\nTo: {STUDIO}@{DOMAIN}\r\n"
               f"Subject: Anfrage {run} #{i}\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n"
               f"Message-ID: <{uuid.uuid4().hex}@example.org>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + body_text + f"Viele Grüße\r\nGast {i}\r\n").encode()
        token = secrets.token_hex(25)
        signature = hmac.new(KEY.encode(), (now + token).encode(), hashlib.sha256).hexdigest()
        boundary = uuid.uuid4().hex
        fields = {"recipient": f"{STUDIO}@{DOMAIN}".encode(), "sender": f"gast{i}.{run}@example.org".encode(),
                  "timestamp": now.encode(), "token": token.encode(), "signature": signature.encode(),
                  "body-mime": raw}
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v + b"\r\n"
                        for k, v in fields.items()) + f"--{boundary}--\r\n".encode()
        head = (f"POST /webhooks/mailgun/mime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
                "User-Agent: mailgun/treq-16.12.0\r\n\r\n").encode()
        requests.append(head + body)
    return requests


# --- client ------------------------------------------------------------------------------------

async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(port: int, requests: list[bytes], connections: int) -> dict[str, Any]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    request = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), timeout=600)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"elapsed": elapsed, "statuses": statuses,
            "p50": latencies[len(latencies) // 2] * 1000, "p99": latencies[int(len(latencies) * 0.99)] * 1000}


def pin(role: str) -> None:
    """Server on one core, client on the other: on two cores the scheduler otherwise moves them
    about, and the baseline swung between 10,000 and 16,000 requests/s from run to run."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0] if role == "server" else cpus[1]})


def client_main(pipe: Any, port: int, count: int, connections: int, run: str) -> None:
    import uvloop

    pin("client")

    requests = make_requests(count, port, run)
    pipe.send("ready")
    pipe.recv()
    pipe.send(uvloop.run(run_load(port, requests, connections)))


# --- servers -----------------------------------------------------------------------------------

@post("/webhooks/mailgun/mime", request_max_body_size=70 * 1024 * 1024, status_code=200)
async def do_nothing(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The baseline: read the body, answer like we do, store nothing."""
    await request.body()
    return Response({"status": "stored", "id": 1}, status_code=200)


def baseline_main(pipe: Any) -> None:
    import uvicorn
    import uvloop

    pin("server")

    app = Litestar([do_nothing], logging_config=None, openapi_config=None)

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, http="httptools", loop="none", lifespan="on",
                                               access_log=False, log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        pipe.send(sock.getsockname()[1])
        await asyncio.to_thread(pipe.recv)
        server.should_exit = True
        await task

    uvloop.run(main())


def gateway_main(pipe: Any, database_url: str, data_dir: str, roles: tuple[str, ...], profile: bool = False) -> None:
    if profile:  # where the gateway's CPU goes, printed when it stops (all threads' main loops)
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(gateway_main, pipe, database_url, data_dir, roles)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
        return
    import logging

    pin("server")

    import uvloop

    from gateway.store.db import write_tx
    from gateway.runtime import Gateway, settle_heap
    from gateway.settings import Settings
    from gateway.access.studios import add_studio

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("gateway.ingest").setLevel(logging.INFO)
    settings = Settings(data_dir=Path(data_dir), database_url=database_url, mail_domain=DOMAIN,
                        secret_key="bench-secret-0123456789abcdef", mailgun_signing_key=KEY,
                        http_port=0, smtp_port=0, log_level="WARNING", flood_max_new_per_hour=10**6)

    async def main() -> None:
        gateway = Gateway(settings, roles)
        sock = socket.create_server(("127.0.0.1", 0))
        smtp_sock = socket.create_server(("127.0.0.1", 0)) if "smtp" in roles else None
        await gateway.start(http_sock=sock, smtp_sock=smtp_sock)
        settle_heap()  # as run_until_signalled does
        assert gateway.engine is not None
        with write_tx(gateway.engine) as conn:
            add_studio(conn, STUDIO, "Inkwell", "owner@inkwell.example")
        pipe.send(sock.getsockname()[1])
        await asyncio.to_thread(pipe.recv)
        await gateway.stop()

    uvloop.run(main())


# --- orchestration ---------------------------------------------------------------------------

@dataclass
class Figure:
    name: str
    rate: float
    p50: float
    p99: float
    ok: int
    cpu: float          # server CPU seconds per request, ms
    cores: float        # server CPU seconds / wall seconds during the load
    stored: int | None = None


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of a process (threads of one name summed)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(ctx: Any, target: Any, args: tuple[Any, ...], count: int, connections: int, name: str,
             spy: str | None = None) -> Figure:
    server_pipe, child_pipe = ctx.Pipe()
    server = ctx.Process(target=target, args=(child_pipe, *args), daemon=True)
    server.start()
    try:
        if not server_pipe.poll(120):
            raise RuntimeError(f"{name}: server did not start")
        port = server_pipe.recv()
        client_pipe, client_child = ctx.Pipe()
        client = ctx.Process(target=client_main, args=(client_child, port, count, connections, uuid.uuid4().hex[:8]),
                             daemon=True)
        client.start()
        try:
            assert client_pipe.poll(300) and client_pipe.recv() == "ready"
            sampler = None
            if spy:  # py-spy (not a dependency: pip install py-spy) samples every thread of the server
                import subprocess

                sampler = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--format", "raw",
                                            "--rate", "250", "--output", spy, "--nonblocking"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # let py-spy attach before the load starts
            cpu_before = proc_cpu(server.pid)
            threads_before = thread_cpu(server.pid)
            client_pipe.send("go")
            if not client_pipe.poll(900):
                raise RuntimeError(f"{name}: client did not finish")
            result = client_pipe.recv()
            cpu = proc_cpu(server.pid) - cpu_before
            threads = {name: (used - threads_before.get(name, 0.0)) / count * 1000
                       for name, used in thread_cpu(server.pid).items()}
            busy = ", ".join(f"{name} {ms:.3f}" for name, ms in sorted(threads.items(), key=lambda t: -t[1]) if ms > 0.005)
            print(f"  {name}: CPU ms/request by thread: {busy}")
            if sampler is not None:
                sampler.send_signal(2)
                sampler.wait(60)
        finally:
            client.join(30)
            if client.is_alive():
                client.kill()
        server_pipe.send("stop")
    finally:
        server.join(60)
        if server.is_alive():
            server.kill()
    ok = result["statuses"].get(200, 0)
    if ok != count:
        print(f"  {name}: answers {result['statuses']}", file=sys.stderr)
    return Figure(name, ok / result["elapsed"], result["p50"], result["p99"], ok,
                  cpu / count * 1000, cpu / result["elapsed"])


def _stored(database_url: str) -> int:
    from sqlalchemy import create_engine, text

    from gateway.store.db import normalise_url

    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inbound_mail WHERE source = 'mailgun'")).scalar_one())
    finally:
        engine.dispose()


def _throwaway_pg() -> tuple[str, Any]:
    from sqlalchemy import create_engine, text

    from gateway.store.db import normalise_url

    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    name = f"gwbench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return normalise_url(PG_URL).rsplit("/", 1)[0] + "/" + name, drop


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
    role_sets = {"web": ("web",), "serve": ("smtp", "web", "worker")}
    roles = list(role_sets) if args.roles == "both" else [args.roles]

    print(f"webhook ingest: N={args.messages} C={args.connections}, ~4 KB Mailgun mime posts, cpus={os.cpu_count()}")
    failed = False
    for backend in backends:
        for role in roles:
            baseline = _measure(ctx, baseline_main, (), args.messages, args.connections, "baseline")
            with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
                drop = None
                if backend == "sqlite":
                    url = f"sqlite:///{tmp}/gateway.db"
                else:
                    url, drop = _throwaway_pg()
                try:
                    ours = _measure(ctx, gateway_main, (url, tmp, role_sets[role], args.profile), args.messages,
                                    args.connections, f"gateway[{role}]", args.spy)
                    ours.stored = _stored(url)
                finally:
                    if drop:
                        drop()
            share = ours.rate / baseline.rate * 100
            durable = ours.stored == ours.ok
            failed |= not durable
            print(f"{backend:8} {role:5}  baseline {baseline.rate:7.0f} req/s p50 {baseline.p50:5.1f} ms "
                  f"p99 {baseline.p99:5.1f} ms | gateway {ours.rate:7.0f} req/s p50 {ours.p50:5.1f} ms "
                  f"p99 {ours.p99:5.1f} ms | CPU/req {baseline.cpu:.3f} vs {ours.cpu:.3f} ms, "
                  f"cores {baseline.cores:.2f} vs {ours.cores:.2f} | {share:5.1f} % of baseline (target >= 30 %) "
                  f"{'met' if share >= 30 else 'MISSED'} | 200s {ours.ok}, stored rows {ours.stored}"
                  f"{'' if durable else '  <-- MISMATCH'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
