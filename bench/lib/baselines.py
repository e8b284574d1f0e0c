"""The do-nothing baselines every figure is printed beside, measured in the same run.

- `smtp_baseline_main`: stock aiosmtpd whose handle_DATA answers "250 OK" at once, with the
  gateway's SMTP settings, on the stock asyncio event loop (smtp_ingest).
- `litestar_baseline_main`: a Litestar app with one POST route that reads the body (the
  Mailgun route of webhook_ingest) or decodes the reply JSON (outbound's reply API) and
  answers like the gateway, storing nothing; on uvicorn with uvloop and httptools.
- `sse_baseline_main`: a Litestar Server-Sent Events route fed from memory (sse_fanout).
- `plain_smtp_loop_main`: aiosmtplib sending one pre-built message again and again (outbound).
- `flanker_cpu`: flanker parsing mails and nothing else (processor_cpu).

The Litestar routes are defined when that server starts, so the SMTP benchmark's processes
never import Litestar. (No `from __future__ import annotations` here: Litestar reads the
routes' annotations as objects.)
"""
import asyncio
import logging
import socket
import time
from typing import Any

from bench.lib.mails import RCPT, SEED_SENDER
from bench.lib.procs import pin


class NullHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def smtp_baseline_main(pipe: Any) -> None:
    """A do-nothing stock aiosmtpd with the gateway's SMTP settings, on the stock asyncio loop:
    the server an outside check would compare with (it does not offer PIPELINING)."""
    from aiosmtpd.smtp import SMTP

    from bench.lib.gateway_calls import smtp_limits
    from bench.lib.mails import MAIL_DOMAIN

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # as the gateway's process has it
    size_limit, idle_timeout = smtp_limits()

    async def main() -> None:
        handler = NullHandler()

        def factory() -> SMTP:
            return SMTP(handler, data_size_limit=size_limit, enable_SMTPUTF8=True, decode_data=False,
                        hostname=MAIL_DOMAIN, ident="baseline ESMTP", timeout=idle_timeout)

        # Bound by host and port, as aiosmtpd's Controller binds: the stock loop sets TCP_NODELAY
        # only on sockets whose proto is IPPROTO_TCP, which getaddrinfo gives and a socket from
        # socket.create_server() (proto 0) does not. Without it every multi-line reply (EHLO)
        # waited ~40 ms for a delayed ACK and this server took 20×1 mail at a third of its speed.
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        pipe.send(("ready", {"smtp_port": server.sockets[0].getsockname()[1]}))
        await asyncio.to_thread(pipe.recv)  # "stop"
        server.close()
        await server.wait_closed()
        pipe.send(("stopped", None))

    asyncio.run(main())


def _route(name: str) -> Any:
    import msgspec
    from litestar import Request, Response, post
    from litestar.params import JSONBody

    if name == "mailgun":
        @post("/webhooks/mailgun/mime", request_max_body_size=70 * 1024 * 1024, status_code=200)
        async def mailgun(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
            """Read the body, answer as the gateway does, store nothing."""
            await request.body()
            return Response({"status": "stored", "id": 1}, status_code=200)

        return mailgun

    if name == "form":
        @post("/f/{slug:str}", request_max_body_size=33 * 1024 * 1024, status_code=200)
        async def form(request: Request[Any, Any, Any], slug: str) -> Response[str]:
            """Parse the multipart form with Litestar's own parser, answer a small page, store nothing."""
            await request.form()
            return Response("<!doctype html><p role=status>Danke!</p>", media_type="text/html", status_code=200)

        return form

    class ReplyBody(msgspec.Struct):
        text: str

    @post("/api/v1/conversations/{conversation_id:int}/replies", status_code=202)
    async def reply(conversation_id: int, data: JSONBody[ReplyBody]) -> dict[str, Any]:
        """Decode the same JSON, answer 202 with a small document, store nothing."""
        return {"id": conversation_id, "direction": "outbound", "delivery": "queued", "text": data.text}

    return reply


def litestar_baseline_main(pipe: Any, route: str, pinned: bool = True) -> None:
    """A do-nothing Litestar app with the one route "mailgun", "form" or "reply", pinned to the
    server core unless `pinned` is false."""
    from litestar import Litestar

    if pinned:
        pin("server")
    _serve(pipe, Litestar([_route(route)], logging_config=None, openapi_config=None))


def _sse_routes() -> list[Any]:
    from litestar import get, post
    from litestar.response import Stream

    waiting: set[asyncio.Future] = set()
    fired = [0]

    async def frames() -> Any:
        yield b"retry: 3000\n\n"
        while True:
            future = asyncio.get_running_loop().create_future()
            waiting.add(future)
            try:
                yield await future
            finally:
                waiting.discard(future)

    @get("/events")
    async def events() -> Stream:
        """Stream a frame each time /fire is called; nothing else."""
        return Stream(frames(), media_type="text/event-stream")

    @post("/fire", status_code=202)
    async def fire() -> dict:
        fired[0] += 1
        data = f'id: {fired[0]}\nevent: message.created\ndata: {{"id":{fired[0]}}}\n\n'.encode()
        for future in list(waiting):
            if not future.done():
                future.set_result(data)
        return {"id": fired[0]}

    return [events, fire]


def sse_baseline_main(pipe: Any) -> None:
    """A do-nothing Litestar SSE app (sse_fanout): GET /events gets a frame whenever POST /fire
    is called, from an in-memory broadcast: no database, no polling."""
    from litestar import Litestar

    pin("server")
    _serve(pipe, Litestar(_sse_routes(), logging_config=None, openapi_config=None), graceful=1)


def _serve(pipe: Any, app: Any, graceful: float | None = None) -> None:
    """`app` on uvicorn (uvloop, httptools) on a port of its own until the pipe says "stop"."""
    import uvicorn
    import uvloop

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, http="httptools", loop="none", lifespan="on",
                                               access_log=False, log_level="warning",
                                               timeout_graceful_shutdown=graceful))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        pipe.send(("ready", {"http_port": sock.getsockname()[1]}))
        await asyncio.to_thread(pipe.recv)  # "stop"
        server.should_exit = True
        await task
        pipe.send(("stopped", None))

    uvloop.run(main())


def plain_smtp_loop_main(pipe: Any, port: int, message: bytes, count: int, connections: int, reuse: bool) -> None:
    """aiosmtplib sending `message` `count` times over `connections` lanes, one message per
    connection or reusing each; sends ("result", messages per second)."""
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
                await smtp.sendmail(RCPT, [SEED_SENDER], message)
                if not reuse:
                    await smtp.quit()
                    smtp = None
            if smtp is not None:
                await smtp.quit()

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(connections)))
        return time.perf_counter() - started

    pipe.send(("result", count / uvloop.run(main())))


def flanker_cpu(texts: list[str]) -> float:
    """CPU seconds flanker alone takes to parse `texts` (as the gateway imports it)."""
    from bench.lib.gateway_calls import flanker_mime

    parser = flanker_mime()
    before = time.process_time()
    for text in texts:
        parser.from_string(text)
    return time.process_time() - before
