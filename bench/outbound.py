"""Replies: API latency beside a do-nothing Litestar route, send rate beside a plain aiosmtplib loop.

    .venv/bin/python bench/outbound.py [--replies N] [--messages N] [--connections C]

1. Reply API: after WARMUP requests, C=20 keep-alive clients POST `{"text": ...}` to /api/v1/conversations/{id}/replies
   of a gateway `web` process (SQLite), beside a Litestar app whose POST route decodes the
   same JSON and answers 202 with a small document. p50/p99 client-side; target: reply p99
   under 3x the do-nothing route's p99.
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
import asyncio
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from litestar import Litestar, post  # noqa: E402  (handler annotations resolve here)
from litestar.params import JSONBody  # noqa: E402
import msgspec  # noqa: E402

from bench.webhook_ingest import pin, run_load  # noqa: E402

DOMAIN = "mail.bench"
WARMUP = 500  # requests before each measured API run
TEXT = ("Hallo Lena,\n\ndanke für deine Anfrage! Freitag um 14 Uhr passt uns gut. Bring gern deine "
        "Skizze mit, dann besprechen wir Größe und Platzierung.\n\nViele Grüße\nInkwell Tattoo\n")


class ReplyBody(msgspec.Struct):
    text: str


@post("/api/v1/conversations/{conversation_id:int}/replies", status_code=202)
async def do_nothing(conversation_id: int, data: JSONBody[ReplyBody]) -> dict[str, Any]:
    """The baseline: decode the same JSON, answer 202 with a small document, store nothing."""
    return {"id": conversation_id, "direction": "outbound", "delivery": "queued", "text": data.text}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(tmp: str, **extra: Any) -> Any:
    from gateway.settings import Settings

    return Settings(data_dir=Path(tmp), database_url=f"sqlite:///{tmp}/gateway.db", mail_domain=DOMAIN,
                    secret_key="bench-secret-0123456789abcdef", http_port=0, smtp_port=0, log_level="WARNING",
                    **extra)


def _seed(settings: Any) -> tuple[int, str]:
    """One studio, one guest inquiry threaded into a conversation: (conversation id, token)."""
    from gateway.store.db import get_engine, migrate, write_tx
    from gateway.inbound.intake import Envelope, store_batch
    from gateway.inbound.processor import drain
    from gateway.runtime import REACTIONS
    from gateway.access.studios import add_studio

    migrate(settings.resolved_database_url)
    engine = get_engine(settings.resolved_database_url)
    raw = (f"From: Lena <lena@example.org>\r\nTo: inkwell@{DOMAIN}\r\nSubject: Tattoo Anfrage\r\n"
           "Message-ID: <seed@example.org>\r\nDate: Fri, 20 Nov 2026 10:00:00 +0000\r\n\r\nHallo!\r\n").encode()
    with write_tx(engine) as conn:
        _, token = add_studio(conn, "inkwell", "Inkwell Tattoo", "owner@inkwell.example")
        store_batch(conn, [(raw, Envelope("lena@example.org", [f"inkwell@{DOMAIN}"]))], settings, settings.secret())
    drain(engine, settings, REACTIONS)
    with write_tx(engine) as conn:
        conversation_id = conn.exec_driver_sql("SELECT id FROM conversation").scalar_one()
    return conversation_id, token


# --- 1. reply API --------------------------------------------------------------------------------

def api_server_main(pipe: Any, tmp: str | None) -> None:
    import uvicorn
    import uvloop

    pin("server")

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        if tmp is None:
            server = uvicorn.Server(uvicorn.Config(Litestar([do_nothing], logging_config=None, openapi_config=None),
                                                   http="httptools", loop="none", lifespan="on",
                                                   access_log=False, log_level="warning"))
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            pipe.send((sock.getsockname()[1], 1, ""))
            await asyncio.to_thread(pipe.recv)
            server.should_exit = True
            await task
            return
        from gateway.runtime import Gateway, settle_heap

        settings = _settings(tmp)
        conversation_id, token = await asyncio.to_thread(_seed, settings)
        gateway = Gateway(settings, ("web",))
        await gateway.start(http_sock=sock)
        settle_heap()  # as run_until_signalled does
        pipe.send((sock.getsockname()[1], conversation_id, token))
        await asyncio.to_thread(pipe.recv)
        await gateway.stop()

    uvloop.run(main())


def api_client_main(pipe: Any, port: int, conversation_id: int, token: str, count: int, connections: int) -> None:
    import uvloop

    pin("client")
    body = msgspec.json.encode({"text": TEXT})
    head = (f"POST /api/v1/conversations/{conversation_id}/replies HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    requests = [head + body] * count

    async def main() -> dict[str, Any]:
        # Warm up both servers alike (connections, first-use compilation, caches) before the
        # measured run: with a few thousand requests, p99 is the 40-odd slowest, and the
        # first requests' one-time costs were enough to decide it.
        await run_load(port, [head + body] * WARMUP, connections)
        pipe.send("ready")
        await asyncio.to_thread(pipe.recv)
        return await run_load(port, requests, connections)

    pipe.send(uvloop.run(main()))


def measure_api(ctx: Any, tmp: str | None, count: int) -> dict[str, Any]:
    server_pipe, child = ctx.Pipe()
    server = ctx.Process(target=api_server_main, args=(child, tmp), daemon=True)
    server.start()
    try:
        assert server_pipe.poll(120), "API server did not start"
        port, conversation_id, token = server_pipe.recv()
        client_pipe, client_child = ctx.Pipe()
        client = ctx.Process(target=api_client_main, args=(client_child, port, conversation_id, token, count, 20),
                             daemon=True)
        client.start()
        assert client_pipe.poll(120) and client_pipe.recv() == "ready"
        client_pipe.send("go")
        assert client_pipe.poll(600), "client did not finish"
        result = client_pipe.recv()
        client.join(30)
        server_pipe.send("stop")
    finally:
        server.join(60)
        if server.is_alive():
            server.kill()
    result["rate"] = count / result["elapsed"]
    return result


# --- 2. outbound -------------------------------------------------------------------------------

def plain_loop_main(pipe: Any, port: int, message: bytes, count: int, connections: int, reuse: bool) -> None:
    import aiosmtplib
    import uvloop

    pin("client")

    async def main() -> float:
        remaining = list(range(count))

        async def lane() -> None:
            smtp = None
            while remaining:
                remaining.pop()
                if smtp is None:
                    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
                    await smtp.connect()
                await smtp.sendmail(f"inkwell@{DOMAIN}", ["lena@example.org"], message)
                if not reuse:
                    await smtp.quit()
                    smtp = None
            if smtp is not None:
                await smtp.quit()

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(connections)))
        return time.perf_counter() - started

    pipe.send(count / uvloop.run(main()))


def outbox_main(pipe: Any, port: int, count: int, connections: int, dkim: str | None) -> None:
    import uvloop

    from gateway.store.db import get_engine, write_tx
    from gateway.outbound.outbox import Outbox
    from gateway.runtime import LATE_BODIES
    from gateway.outbound.replies import create_reply
    from gateway.outbound.signing import generate_keypair

    pin("client")
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        extra: dict[str, Any] = {}
        if dkim:
            key = Path(tmp) / "dkim.pem"
            key.write_bytes(generate_keypair(dkim).private_pem)
            extra = {"dkim_selector": "bench", "dkim_private_key_file": key}
        settings = _settings(tmp, smtp_relay_url=f"smtp://127.0.0.1:{port}", outbound_connections=connections,
                             **extra)
        conversation_id, _ = _seed(settings)
        engine = get_engine(settings.resolved_database_url)
        with write_tx(engine) as conn:
            studio_id = conn.exec_driver_sql("SELECT id FROM studio").scalar_one()
            for _ in range(count):
                create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=TEXT, settings=settings)

        async def main() -> float:
            outbox = Outbox(engine, settings, late_bodies=LATE_BODIES)
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
        pipe.send((sent / elapsed, sent))


def sample_message() -> bytes:
    """A composed reply as the outbox sends it (for the plain loop and the DKIM timings)."""
    from gateway.store.db import get_engine, write_tx
    from gateway.outbound.compose import compose
    from gateway.outbound.render import Renderer
    from gateway.outbound.replies import create_reply

    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        settings = _settings(tmp)
        conversation_id, _ = _seed(settings)
        engine = get_engine(settings.resolved_database_url)
        with write_tx(engine) as conn:
            studio_id = conn.exec_driver_sql("SELECT id FROM studio").scalar_one()
            reply = create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=TEXT,
                                 settings=settings)
            assert reply is not None
            mail = compose(conn, reply.message_row_id, settings, settings.secret(), Renderer(), None)
        engine.dispose()
        return mail.data


def dkim_costs(message: bytes) -> dict[str, float]:
    from gateway.outbound.signing import DkimSigner, generate_keypair

    costs = {}
    for kind in ("rsa", "ed25519"):
        signer = DkimSigner(domain=DOMAIN, selector="bench", private_pem=generate_keypair(kind).private_pem)
        signer.sign(message)
        runs = 200 if kind == "ed25519" else 50
        started = time.process_time()
        for _ in range(runs):
            signer.sign(message)
        costs[kind] = (time.process_time() - started) / runs * 1000
    return costs


def _run(ctx: Any, target: Any, args: tuple[Any, ...], timeout: float = 600) -> Any:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"{target.__name__} did not finish")
        return parent.recv()
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=4000, help="reply API requests")
    parser.add_argument("--messages", type=int, default=3000, help="outbound messages")
    parser.add_argument("--connections", type=int, default=4, help="relay connections (outbox and plain loop)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    print(f"outbound bench: {os.cpu_count()} cpus; reply API C=20, N={args.replies}; "
          f"send N={args.messages}, {args.connections} connections")

    base = measure_api(ctx, None, args.replies)
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        ours = measure_api(ctx, tmp, args.replies)
    ratio = ours["p99"] / base["p99"]
    print(f"reply API   baseline {base['rate']:6.0f} req/s p50 {base['p50']:5.1f} ms p99 {base['p99']:5.1f} ms | "
          f"gateway {ours['rate']:6.0f} req/s p50 {ours['p50']:5.1f} ms p99 {ours['p99']:5.1f} ms | "
          f"p99 {ratio:.1f}x baseline (target < 3x) {'met' if ratio < 3 else 'MISSED'} | "
          f"answers {ours['statuses']}")

    message = sample_message()
    costs = dkim_costs(message)
    print(f"DKIM signing per message ({len(message)} bytes): RSA-2048 {costs['rsa']:.2f} ms, "
          f"Ed25519 {costs['ed25519']:.2f} ms (CPU)")

    if shutil.which("smtp-sink") is None:
        print("outbound rates skipped: smtp-sink not found (apt-get install postfix)")
        return 0
    port = _free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        per_conn = _run(ctx, plain_loop_main, (port, message, args.messages, args.connections, False))
        reuse = _run(ctx, plain_loop_main, (port, message, args.messages, args.connections, True))
        rate, sent = _run(ctx, outbox_main, (port, args.messages, args.connections, None))
        share = rate / reuse * 100
        print(f"outbound    plain aiosmtplib loop: {per_conn:6.0f} msg/s one per connection, {reuse:6.0f} msg/s "
              f"reusing | outbox {rate:6.0f} msg/s ({sent} sent) = {share:.0f} % of the reusing loop "
              f"(target >= 60 %) {'met' if share >= 60 else 'MISSED'}")
        for kind in ("ed25519", "rsa"):
            count = max(200, args.messages // (10 if kind == "rsa" else 2))
            signed_rate, signed = _run(ctx, outbox_main, (port, count, args.connections, kind))
            print(f"outbound    with DKIM {kind}: {signed_rate:6.0f} msg/s ({signed} sent)")
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
