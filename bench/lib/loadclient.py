"""The load clients, each run in a process of its own and identical for baseline and gateway.

SMTP: a raw-asyncio client, C connections, one message per connection ("per-conn": connect,
EHLO, one transaction, QUIT) or K messages on each of C kept connections ("reuse"). It reads
the EHLO reply and talks as Postfix's smtp client does: when the server offers PIPELINING,
MAIL FROM, RCPT TO and DATA go out in one write and their three replies are read after it
(RFC 2920); otherwise each command waits for its reply. After 354 the body, then the final
dot, then the 250 is awaited before the next transaction starts. Two latencies per 250:
"send" from connect (per-conn) or MAIL FROM (reuse) to the 250, and "dot" from writing the
final dot (the body already handed to the kernel) to reading the 250.

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
import uuid
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
    latencies: list[float] = field(default_factory=list)       # seconds, 250s only: send → 250
    dot_latencies: list[float] = field(default_factory=list)   # seconds, 250s only: final dot → 250
    inbound_ids: list[int] = field(default_factory=list)
    t_first: float = 0.0          # time.monotonic() of the first message's start
    t_last: float = 0.0           # time.monotonic() of the last 250
    errors: Counter = field(default_factory=Counter)
    timed_out: bool = False
    wire_bytes: int = 0
    cpu_seconds: float = 0.0
    pipelining: Counter = field(default_factory=Counter)       # connections by "PIPELINING offered?"

    @property
    def ok(self) -> int:
        return self.codes.get(250, 0)


_ID_RE = re.compile(rb"\((\d+)\)")
_END_OF_DATA = b"\r\n.\r\n"   # the body's last line has no CRLF of its own (mails.make_message)


async def _reply(reader: asyncio.StreamReader, lines: list[bytes] | None = None) -> tuple[int, bytes]:
    """The code and last line of one (possibly multi-line) reply; every line into `lines` if given."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        if lines is not None:
            lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes) -> tuple[int, bytes]:
    writer.write(line)
    return await _reply(reader)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """A connection past EHLO, and whether the server offers PIPELINING."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # With no buffer allowed, drain() returns only once every byte written is with the kernel:
    # the end-of-DATA clock starts when the body has left, also for a 200 KB body.
    writer.transport.set_write_buffer_limits(high=0)
    code, _ = await _reply(reader)
    if code != 220:
        raise ConnectionError(f"greeting {code}")
    writer.write(b"EHLO bench.client.example\r\n")
    lines: list[bytes] = []
    code, _ = await _reply(reader, lines)
    if code != 250:
        raise ConnectionError(f"EHLO {code}")
    keywords = {line[4:].split(maxsplit=1)[0].upper() for line in lines[1:] if line[4:].strip()}
    return reader, writer, b"PIPELINING" in keywords


async def _envelope(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mail: bytes, rcpt: bytes,
                    pipelining: bool) -> tuple[int, bytes]:
    """MAIL, RCPT and DATA: (354, ...) when the body may follow, else the reply that refused,
    with the transaction reset as Postfix does."""
    if not pipelining:
        code, text = await _command(reader, writer, mail)
        if code != 250:
            return code, text
        code, text = await _command(reader, writer, rcpt)
        if code != 250:
            await _command(reader, writer, b"RSET\r\n")
            return code, text
        code, text = await _command(reader, writer, b"DATA\r\n")
        if code != 354:
            await _command(reader, writer, b"RSET\r\n")
        return code, text
    writer.write(mail + rcpt + b"DATA\r\n")  # RFC 2920: one group, then its three replies
    replies = [await _reply(reader) for _ in range(3)]
    refused = next((reply for reply, want in zip(replies, (250, 250, 354)) if reply[0] != want), None)
    if refused is None:
        return replies[2]
    if replies[2][0] == 354:
        # A server must refuse DATA after a refused MAIL or every RCPT refused (RFC 2920 3.1);
        # one that says 354 anyway gets an empty message, as Postfix sends it.
        await _command(reader, writer, b".\r\n")
    if replies[0][0] == 250:
        await _command(reader, writer, b"RSET\r\n")
    return refused


async def _transaction(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: tuple[str, bytes, bool],
                       pipelining: bool) -> tuple[int, bytes, float]:
    """One message: the final reply's code and line, and when the final dot was written (0 if not)."""
    sender, data, eight_bit = msg
    mail = f"MAIL FROM:<{sender}>{' BODY=8BITMIME' if eight_bit else ''}\r\n".encode()
    code, text = await _envelope(reader, writer, mail, f"RCPT TO:<{RCPT}>\r\n".encode(), pipelining)
    if code != 354:
        return code, text, 0.0
    writer.write(data)
    await writer.drain()
    t_dot = time.monotonic()
    writer.write(_END_OF_DATA)
    code, text = await _reply(reader)
    return code, text, t_dot


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def smtp_load(port: int, messages: list[tuple[str, bytes, bool]], connections: int, mode: str,
                   timeout: float) -> ClientResult:
    """Send every message. `mode` "per-conn": C workers take messages from one queue and open a
    connection for each (connect, EHLO, one transaction, QUIT); "reuse": connection i sends
    messages[i::C] one transaction after another on one connection (reconnecting after an error)."""
    result = ClientResult()
    queue = list(range(len(messages)))
    queue.reverse()
    loop_time = time.monotonic

    def record(start: float, code: int, text: bytes, t_dot: float) -> None:
        now = loop_time()
        result.codes[code] += 1
        if code == 250:
            result.latencies.append(now - start)
            if t_dot:
                result.dot_latencies.append(now - t_dot)
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

    def failed(exc: Exception) -> None:
        result.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1

    async def per_connection() -> None:
        while queue:
            msg = messages[queue.pop()]
            start = started()
            writer = None
            try:
                reader, writer, pipelining = await _open(port)
                result.pipelining[pipelining] += 1
                record(start, *await _transaction(reader, writer, msg, pipelining))
                writer.write(b"QUIT\r\n")
                await _reply(reader)
            except (OSError, ConnectionError) as exc:
                failed(exc)
            finally:
                await _close(writer)

    async def reused(lane: int) -> None:
        reader = writer = None
        pipelining = False
        try:
            for msg in messages[lane::connections]:
                start = started()
                try:
                    if writer is None:
                        reader, writer, pipelining = await _open(port)
                        result.pipelining[pipelining] += 1
                    record(start, *await _transaction(reader, writer, msg, pipelining))
                except (OSError, ConnectionError) as exc:
                    failed(exc)
                    await _close(writer)
                    reader = writer = None
            if writer is not None:
                writer.write(b"QUIT\r\n")
                with contextlib.suppress(Exception):
                    await _reply(reader)
        finally:
            await _close(writer)

    if mode == "per-conn":
        tasks = [asyncio.ensure_future(per_connection()) for _ in range(connections)]
    else:
        tasks = [asyncio.ensure_future(reused(lane)) for lane in range(connections)]
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
    """Client process: build the messages first (untimed), say ready with their mean size, send on
    "go". The client runs on uvloop so that it is not what limits the servers."""
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

def multipart_request(path: str, port: int, fields: dict[str, bytes], headers: dict[str, str],
                      files: list[tuple[str, str, str, bytes]] = ()) -> bytes:  # type: ignore[assignment]
    """One HTTP/1.1 POST of multipart/form-data, as bytes on the wire: `fields` by name, then
    `files` as (name, filename, content type, data)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v + b"\r\n"
                    for k, v in fields.items())
    for name, filename, content_type, data in files:
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    return head + body


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
                     count: int, connections: int, warmup: int, pinned: bool = True) -> None:
    """Client process on the client core (any core unless `pinned`): `build(info, n)` makes the
    requests for the server that answered `info`; the first `warmup` are sent before "ready"
    and not measured."""
    import uvloop

    if pinned:
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
