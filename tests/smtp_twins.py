"""Stock aiosmtpd and the gateway's fast edge as twin servers, and a raw client that feeds both
the same bytes cut the same way (tests/test_smtp_edge_equivalence.py).

Both servers run in one background event loop on ephemeral loopback ports, built with the same
arguments and a fresh protocol and handler per connection. Between the transport and each
protocol sits a `Tap`: it forwards every event untouched and tells the client how many bytes the
server has taken in and when the connection ended. That is what makes a cut real: the client
sends the next piece only once the server has received the previous one, so the protocol reads
each piece on its own (asyncio runs the woken reader before it reads the socket again), where
TCP_NODELAY alone still lets the kernel merge pieces. Every wait is on a condition, bounded.

aiosmtpd keeps `command_size_limits` on the class, shared by both servers, cleared by every new
protocol and raised by every EHLO: conversations must never overlap, so `converse` waits for
the server to see the end of each connection before it returns.
"""
from __future__ import annotations

import asyncio
import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.inbound.smtp_edge import FastSMTP

KINDS: dict[str, type[SMTP]] = {"stock": SMTP, "edge": FastSMTP}
HOSTNAME = "edge.test"
DEADLINE = 10.0   # seconds a conversation may take: a hang fails the test instead of stalling it


@dataclass(frozen=True)
class Config:
    """The constructor arguments both servers of a pair get (besides hostname and decode_data)."""

    data_size_limit: int | None = 4096
    timeout: float = 30.0
    enable_SMTPUTF8: bool = False
    command_call_limit: tuple[tuple[str, int], ...] | None = None   # a dict, kept hashable
    holding_rcpt: bool = False     # RCPT TO:<hold@...> awaits forever, as a stalled lookup would


@dataclass(frozen=True)
class Stored:
    """One message as handle_DATA saw it: what a real handler would store."""

    mail_from: str | None
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    smtp_utf8: bool
    content: bytes


class Recorder:
    """The handler of one connection: records each message and accepts it."""

    def __init__(self) -> None:
        self.stored: list[Stored] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.original_content, bytes)
        self.stored.append(Stored(envelope.mail_from, tuple(envelope.rcpt_tos), tuple(envelope.mail_options),
                                  tuple(envelope.rcpt_options), envelope.smtp_utf8, envelope.original_content))
        return "250 OK"


class HoldingRecorder(Recorder):
    """A handler whose RCPT hook can stall, like the gateway's directory lookup when the
    database hangs: RCPT TO:<hold@...> awaits until the session ends; others are accepted as
    aiosmtpd accepts them without a hook."""

    def __init__(self, on_hold: Callable[[], None]) -> None:
        super().__init__()
        self._on_hold = on_hold

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("hold@"):
            self._on_hold()
            await asyncio.get_running_loop().create_future()     # cancelled with the session
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"


@dataclass
class Connection:
    """The server's side of one connection, as the tap saw it."""

    recorder: Recorder = field(default_factory=Recorder)
    received: int = 0
    lost: bool = False
    holding: bool = False          # a HoldingRecorder's RCPT hook is waiting


class Hub:
    """Where the loop thread tells the test thread about connections; one lock, one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connections: dict[tuple[str, int], Connection] = {}

    def add(self, peer: tuple[str, int], conn: Connection) -> None:
        with self.cond:
            self.connections[peer] = conn
            self.cond.notify_all()

    def forget(self, peer: tuple[str, int]) -> None:
        """A finished connection's entry goes: its client port may come again."""
        with self.cond:
            self.connections.pop(peer, None)

    def update(self, change: Callable[[], None]) -> None:
        with self.cond:
            change()
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, max(0.0, timeout))


class Tap(asyncio.Protocol):
    """Forwards every transport event to the real protocol, and reports receipt and the end."""

    def __init__(self, hub: Hub, make: Callable[[Recorder], SMTP], holding: bool) -> None:
        self._hub = hub
        self.conn = Connection()
        if holding:
            self.conn.recorder = HoldingRecorder(lambda: hub.update(self._hold))
        self._inner = make(self.conn.recorder)

    def _hold(self) -> None:
        self.conn.holding = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._hub.add(transport.get_extra_info("peername"), self.conn)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)      # in the reader's buffer before the client goes on

        def count() -> None:
            self.conn.received += len(data)
        self._hub.update(count)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

        def end() -> None:
            self.conn.lost = True
        self._hub.update(end)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Lab:
    """The background loop and the server pairs, started on first use per Config."""

    def __init__(self) -> None:
        self.hub = Hub()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smtp-twins", daemon=True)
        self._thread.start()
        self._servers: dict[tuple[str, Config], asyncio.Server] = {}

    def port(self, kind: str, config: Config) -> int:
        key = (kind, config)
        if key not in self._servers:
            future = asyncio.run_coroutine_threadsafe(self._start(KINDS[kind], config), self._loop)
            self._servers[key] = future.result(DEADLINE)
        return int(self._servers[key].sockets[0].getsockname()[1])

    async def _start(self, cls: type[SMTP], config: Config) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        limits = dict(config.command_call_limit) if config.command_call_limit is not None else None

        def protocol(recorder: Recorder) -> SMTP:
            return cls(recorder, hostname=HOSTNAME, decode_data=False, data_size_limit=config.data_size_limit,
                       timeout=config.timeout, enable_SMTPUTF8=config.enable_SMTPUTF8,
                       command_call_limit=limits, loop=loop)

        return await loop.create_server(lambda: Tap(self.hub, protocol, config.holding_rcpt),
                                        host="127.0.0.1", port=0)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers.values():
                server.close()
            for server in self._servers.values():
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(DEADLINE)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)
        self._loop.close()


@dataclass(frozen=True)
class Transcript:
    """What the client saw and the server stored: the comparable outcome of a conversation."""

    replies: tuple[bytes, ...]     # every reply line, in order, without CRLF
    stored: tuple[Stored, ...]
    hung_up: bool                  # the server closed (or reset) the connection


def finals(replies: bytes) -> int:
    """How many replies are complete: a reply ends with a line whose fourth byte is a space."""
    return sum(1 for line in replies.split(b"\r\n")[:-1] if line[3:4] != b"-")


class Client:
    """A raw socket client with a deadline, whose sends the server takes in one at a time."""

    def __init__(self, lab: Lab, kind: str, config: Config) -> None:
        self._hub = lab.hub
        self.kind = kind
        self.deadline = time.monotonic() + DEADLINE
        self.sock = socket.create_connection(("127.0.0.1", lab.port(kind, config)), timeout=DEADLINE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._peer = self.sock.getsockname()
        self.sent = 0
        self.replies = bytearray()
        self.hung_up = False
        self._wait(lambda: self._peer in self._hub.connections, "the server to accept")
        self.conn = self._hub.connections[self._peer]

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        assert self._hub.wait(predicate, self._left()), (
            f"{self.kind}: timed out waiting for {what}; replies so far: {bytes(self.replies)!r}")

    def send(self, data: bytes) -> None:
        """Send one piece and wait until the server has received it (or has gone)."""
        try:
            self.sock.sendall(data)
        except OSError as exc:                      # the server hung up first
            assert exc.errno in (errno.EPIPE, errno.ECONNRESET), exc
            return
        self.sent += len(data)
        self._wait(lambda: self.conn.received >= self.sent or self.conn.lost, f"receipt of byte {self.sent}")

    def send_cut(self, data: bytes, points: Sequence[int]) -> None:
        """Send `data` in pieces cut at `points` (offsets into data), each received on its own."""
        cuts = sorted({p for p in points if 0 < p < len(data)})
        for start, end in zip([0, *cuts], [*cuts, len(data)]):
            self.send(data[start:end])

    def _recv(self) -> bool:
        """Read what is there (waiting up to the deadline); False once the server hung up."""
        self.sock.settimeout(max(0.001, self._left()))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"{self.kind}: no reply within {DEADLINE}s; replies so far: "
                                 f"{bytes(self.replies)!r}") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.hung_up = True
            return False
        self.replies += chunk
        return True

    def read_replies(self, count: int) -> None:
        """Wait until `count` replies in all have come (or the server hung up)."""
        while finals(self.replies) < count and self._recv():
            pass

    def wait_holding(self) -> None:
        """Wait until the server's RCPT hook is stalled (Config.holding_rcpt)."""
        self._wait(lambda: self.conn.holding or self.conn.lost, "the RCPT hook to stall")

    def half_close(self) -> None:
        """Tell the server nothing more will come (FIN), and keep reading."""
        self.sock.shutdown(socket.SHUT_WR)

    def read_available(self) -> None:
        """Take whatever replies are already here, without waiting."""
        while not self.hung_up and select.select([self.sock], [], [], 0)[0]:
            self._recv()

    def pace(self, interval: float) -> bool:
        """Let `interval` pass, cut short by the server ending the connection: True if it did."""
        return self._hub.wait(lambda: self.conn.lost, min(interval, self._left()))

    def finish(self) -> Transcript:
        """Read until the server hangs up, wait until it has seen the end, and close."""
        while self._recv():
            pass
        self._wait(lambda: self.conn.lost, "the server to see the connection end")
        self.close()
        return self.transcript()

    def close(self) -> None:
        self.sock.close()
        self._hub.forget(self._peer)

    def transcript(self) -> Transcript:
        lines = bytes(self.replies).split(b"\r\n")
        assert lines[-1] == b"", f"{self.kind}: a reply was cut off: {bytes(self.replies)!r}"
        return Transcript(tuple(lines[:-1]), tuple(self.conn.recorder.stored), self.hung_up)


def converse(lab: Lab, kind: str, config: Config, script: Callable[[Client], Any]) -> Transcript:
    """Run `script` against one server and read to the end."""
    client = Client(lab, kind, config)
    try:
        script(client)
        return client.finish()
    finally:
        client.close()
