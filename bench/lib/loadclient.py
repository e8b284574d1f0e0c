"""The load clients, each run in a process of its own and identical for baseline and gateway.

SMTP: a raw-asyncio client, C connections, one message per connection ("per-conn": connect,
EHLO, one transaction, QUIT) or many per connection ("reuse"); latency is time-to-250 from
connect (per-conn) or MAIL FROM (reuse) to the reply after the final dot.

HTTP: a raw-asyncio HTTP/1.1 keep-alive client, C connections sending pre-built requests
back to back; latency from the first byte written to the last byte of the answer.

Both build their messages or requests before the clock starts, then say "ready" and send on
"go"; measure.py starts them and turns their results into figures.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.lib.mails import RCPT, make_message
from bench.lib.procs import pin

# --- SMTP ---------------------------------------------------------------------------------------

@dataclass
class ClientResult:
    sent: int = 0
    codes: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)   # seconds, 250s only
    inbound_ids: list[int] = field(default_factory=list)
    t_first: float = 0.0          # time.monotonic() of the first message's start
    t_last: float = 0.0           # time.monotonic() of the last 250
    errors: Counter = field(default_factory=Counter)
    timed_out: bool = False
    wire_bytes: int = 0
    cpu_seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.codes.get(250, 0)


_ID_RE = re.compile(rb"\((\d+)\)")


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    last = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        last = line
        if line[3:4] != b"-":
            return int(line[:3]), last


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> tuple[int, bytes]:
    writer.write(line)
    return await _reply(reader)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    code, _ = await _reply(reader)
    if code != 220:
        raise ConnectionError(f"greeting {code}")
    code, _ = await _command(reader, writer, b"EHLO bench.client.example\r\n")
    if code != 250:
        raise ConnectionError(f"EHLO {code}")
    return reader, writer


async def _transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       msg: tuple[str, bytes, bool]) -> tuple[int, bytes]:
    sender, data, eight_bit = msg
    code, text = await _command(reader, writer, f"MAIL FROM:<{sender}>{' BODY=8BITMIME' if eight_bit else ''}\r\n".encode())
    if code != 250:
        return code, text
    code, text = await _command(reader, writer, f"RCPT TO:<{RCPT}>\r\n".encode())
    if code != 250:
        await _command(reader, writer, b"RSET\r\n")
        return code, text
    code, text = await _command(reader, writer, b"DATA\r\n")
    if code != 354:
        return code, text
    writer.write(data)
    writer.write(b"\r\n.\r\n")
    return await _reply(reader)


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def smtp_load(port: int, messages: list[tuple[str, bytes, bool]], connections: int, mode: str,
                   timeout: float) -> ClientResult:
    """Send every message; `mode` is "per-conn" (connect, one message, QUIT) or "reuse"."""
    result = ClientResult()
    queue = list(range(len(messages)))
    queue.reverse()
    loop_time = time.monotonic

    def record(start: float, code: int, text: bytes) -> None:
        now = loop_time()
        result.codes[code] += 1
        if code == 250:
            result.latencies.append(now - start)
            result.t_last = max(result.t_last, now)
            match = _ID_RE.search(text)
            if match:
                result.inbound_ids.append(int(match.group(1)))

    def started() -> float:
        now = loop_time()
        if not result.t_first:
            result.t_first = now
        result.sent += 1
        return now

    async def per_connection() -> None:
        while queue:
            msg = messages[queue.pop()]
            start = started()
            writer = None
            try:
                reader, writer = await _open(port)
                code, text = await _transaction(reader, writer, msg)
                record(start, code, text)
                writer.write(b"QUIT\r\n")
                await _reply(reader)
            except (OSError, ConnectionError) as exc:
                result.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            finally:
                await _close(writer)

    async def reused() -> None:
        reader = writer = None
        try:
            while queue:
                msg = messages[queue.pop()]
                if writer is None:
                    reader, writer = await _open(port)
                start = started()
                try:
                    code, text = await _transaction(reader, writer, msg)
                except (OSError, ConnectionError) as exc:
                    result.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
                    writer.close()
                    reader = writer = None
                    continue
                record(start, code, text)
            if writer is not None:
                writer.write(b"QUIT\r\n")
                with contextlib.suppress(Exception):
                    await _reply(reader)
        finally:
            await _close(writer)

    worker = per_connection if mode == "per-conn" else reused
    tasks = [asyncio.ensure_future(worker()) for _ in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        result.timed_out = True
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            result.errors[repr(task.exception())[:100]] += 1
    result.wire_bytes = sum(len(m[1]) for m in messages)
    return result


def smtp_client_main(pipe: Any, port: int, run: str, count: int, size: str, connections: int,
                     mode: str, timeout: float) -> None:
    """Client process: build the messages first (untimed), say ready with their mean size, send on "go"."""
    import uvloop

    messages = [make_message(run, i, size) for i in range(count)]
    pipe.send(("ready", sum(len(m[1]) for m in messages) / max(1, count)))
    pipe.recv()  # "go"
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        cpu = time.process_time()
        result = runner.run(smtp_load(port, messages, connections, mode, timeout))
        result.cpu_seconds = time.process_time() - cpu
    pipe.send(("result", result))


# --- HTTP ---------------------------------------------------------------------------------------

@dataclass
class HttpResult:
    elapsed: float                # first request written → last answer read, seconds
    statuses: dict[int, int]
    latencies: list[float]        # seconds, ascending


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


async def http_load(port: int, requests: list[bytes], connections: int, timeout: float = 600) -> HttpResult:
    """Send every request over `connections` keep-alive connections, each waiting for its answer."""
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
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), timeout=timeout)
    return HttpResult(time.perf_counter() - started, statuses, sorted(latencies))


def http_client_main(pipe: Any, info: dict[str, Any], build: Callable[[dict[str, Any], int], list[bytes]],
                     count: int, connections: int, warmup: int) -> None:
    """Client process on the client core: `build(info, n)` makes the requests for the server that
    answered `info`; the first `warmup` are sent before "ready" and not measured."""
    import uvloop

    pin("client")
    port = info["http_port"]
    requests = build(info, warmup + count)
    if warmup:
        # Warm up both servers alike (connections, first-use compilation, caches): with a few
        # thousand requests, p99 is the 40-odd slowest, and the first requests' one-time costs
        # were enough to decide it.
        uvloop.run(http_load(port, requests[:warmup], connections))
    pipe.send(("ready", None))
    pipe.recv()  # "go"
    pipe.send(("result", uvloop.run(http_load(port, requests[warmup:], connections))))
