"""What one SMTP client, or all of them together, may hold (issue 13), over real sockets:
connections per peer address, MAIL/RSET/unknown-RCPT budgets per session, a short cache of
unknown recipients, and a cap on the DATA bytes all sessions hold at once."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, event, select

from gateway.access.studios import add_studio
from gateway.inbound.acceptor import Acceptor
from gateway.inbound.directory import StudioDirectory
from gateway.inbound.smtp import DataBudget, start_smtp_server
from gateway.settings import Settings
from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.tables import INBOUND
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail

TIMEOUT = 20.0     # any single socket operation; a hang fails instead of stalling


class Raw:
    """A client writing exactly the bytes given, from a chosen loopback source address."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
        self.stream = self.sock.makefile("rb")

    def greeting(self) -> bytes:
        return self.stream.readline()

    def say(self, line: bytes) -> bytes:
        """Send one command, return the last line of its reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def reply(self) -> bytes:
        while True:
            line = self.stream.readline()
            if line[3:4] != b"-":
                return line

    def closed_by_server(self) -> bool:
        return self.stream.read() == b""   # EOF (bounded by the socket timeout)

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


@pytest.fixture
def limited(tmp_path: Path, database_url: str) -> Iterator[Callable[..., RunningGateway]]:
    started: list[RunningGateway] = []

    def start(**overrides: Any) -> RunningGateway:
        running = start_gateway(make_settings(tmp_path, database_url, **overrides))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _session(port: int, source: str = "127.0.0.1") -> Raw:
    client = Raw(port, source)
    assert client.greeting().startswith(b"220")
    assert client.say(b"EHLO client.example").startswith(b"250 ")
    return client


# -- connections per peer address --------------------------------------------------------------

def test_connections_beyond_the_per_address_cap_get_421_at_connect(limited: Callable[..., RunningGateway]) -> None:
    gw = limited(smtp_max_connections_per_ip=2)
    first, second = _session(gw.smtp_port), _session(gw.smtp_port)
    try:
        third = Raw(gw.smtp_port)
        assert third.greeting().startswith(b"421 4.7.0")
        assert third.closed_by_server()
        third.close()
        other = _session(gw.smtp_port, source="127.0.0.2")   # another address is not held up
        assert other.say(b"NOOP").startswith(b"250")
        other.close()
        assert first.say(b"QUIT").startswith(b"221")
        assert first.closed_by_server()
        first.close()
        again = _session(gw.smtp_port)                        # a freed slot serves at once
        assert again.say(b"NOOP").startswith(b"250")
        again.close()
    finally:
        second.close()


# -- per-session budgets ----------------------------------------------------------------------

@pytest.mark.parametrize("command, setting", [(b"MAIL FROM:<guest@example.org>", "smtp_max_mail_per_session"),
                                              (b"RSET", "smtp_max_rset_per_session")])
def test_mail_and_rset_beyond_their_budget_get_421_and_the_connection_closes(
        limited: Callable[..., RunningGateway], command: bytes, setting: str) -> None:
    gw = limited(**{setting: 3})
    client = _session(gw.smtp_port)
    try:
        for _ in range(3):
            assert client.say(command).startswith(b"250")
            if command.startswith(b"MAIL"):
                assert client.say(b"RSET").startswith(b"250")
        assert client.say(command).startswith(b"421 4.7.0")
        assert client.closed_by_server()
    finally:
        client.close()


def test_unknown_recipients_beyond_the_budget_get_421_and_the_connection_closes(
        limited: Callable[..., RunningGateway]) -> None:
    gw = limited(smtp_max_unknown_rcpt_per_session=3)
    gw.add_studio("inkwell")
    client = _session(gw.smtp_port)
    try:
        assert client.say(b"MAIL FROM:<guest@example.org>").startswith(b"250")
        replies = [client.say(b"RCPT TO:<%s@mail.test>" % name) for name in (b"anna", b"inkwell", b"bert")]
        assert [r[:3] for r in replies] == [b"550", b"250", b"550"]      # a known one doesn't count
        assert client.say(b"RCPT TO:<info@elsewhere.example>").startswith(b"550")   # not ours: unknown
        assert client.say(b"RCPT TO:<carl@mail.test>").startswith(b"421 4.7.0")
        assert client.closed_by_server()
    finally:
        client.close()
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(INBOUND.c.id)).first() is None


# -- the unknown-recipient cache ---------------------------------------------------------------

def _count_studio_lookups(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM studio" in statement and "studio.slug" in statement:
            seen.append(statement)

    return seen


def test_an_unknown_recipient_asked_again_and_again_costs_one_query(limited: Callable[..., RunningGateway]) -> None:
    gw = limited(smtp_max_unknown_rcpt_per_session=100)
    lookups = _count_studio_lookups(gw.engine)
    client = _session(gw.smtp_port)
    try:
        assert client.say(b"MAIL FROM:<guest@example.org>").startswith(b"250")
        for _ in range(50):
            assert client.say(b"RCPT TO:<info@mail.test>").startswith(b"550 5.1.1")
        assert client.say(b"RCPT TO:<admin@mail.test>").startswith(b"550 5.1.1")
    finally:
        client.close()
    assert len(lookups) == 2          # before: 51, one per RCPT


def test_the_unknown_cache_is_bounded_and_short_lived(settings: Settings) -> None:
    engine = make_engine(settings.resolved_database_url, busy_timeout=2.0)
    lookups = _count_studio_lookups(engine)
    directory = StudioDirectory(engine, unknown_ttl=0.5, unknown_size=3)

    async def scenario() -> None:
        for name in ("a", "b", "c", "d"):                  # four names, room for three
            assert not await directory.exists(name)
        assert not await directory.exists("d")            # remembered
        assert len(lookups) == 4
        assert not await directory.exists("a")            # the oldest was dropped: asked again
        assert len(lookups) == 5
        with write_tx(engine) as conn:                     # the studio is created (as by the CLI)
            add_studio(conn, "d", "D", "owner@d.example")
        assert not await directory.exists("d")            # still refused while remembered ...
        deadline = time.monotonic() + 10
        while not await directory.exists("d"):            # ... and for no longer than unknown_ttl
            assert time.monotonic() < deadline, "a new studio stayed refused"
            await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()


# -- DATA bytes in flight across sessions ------------------------------------------------------

def _lines(size: int) -> bytes:
    return (b"p" * 98 + b"\r\n") * (size // 100)


class _Server:
    """The SMTP server with a real acceptor and database on its own loop thread, holding the
    DataBudget so the test can see what the sessions hold."""

    def __init__(self, settings: Settings, budget: DataBudget) -> None:
        self.engine = make_engine(settings.resolved_database_url, busy_timeout=2.0)
        self.loop = asyncio.new_event_loop()
        self.budget = budget
        ready = threading.Event()

        async def boot() -> None:
            self.acceptor = Acceptor(self.engine, settings)
            await self.acceptor.start()
            sock = socket.create_server(("127.0.0.1", 0))
            self.server = await start_smtp_server(self.acceptor, self.engine, settings, sock=sock,
                                                  data_budget=budget)
            self.port = sock.getsockname()[1]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(boot())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(30)

    def held_reaches(self, check: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not check(self.budget.held):
            assert time.monotonic() < deadline, f"held stayed at {self.budget.held}"
            time.sleep(0.01)

    def stop(self) -> None:
        async def down() -> None:
            self.server.close()
            await self.server.wait_closed()
            await self.acceptor.stop()

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()
        self.engine.dispose()


def test_data_beyond_the_bytes_in_flight_gets_452_at_data_and_421_mid_transfer(tmp_path: Path,
                                                                               database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, smtp_max_message_size=60_000)
    server = _Server(settings, DataBudget(limit=100_000))
    with write_tx(server.engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
    body = make_mail()
    try:
        first = _session(server.port)
        for line in (b"MAIL FROM:<guest@example.org>", b"RCPT TO:<inkwell@mail.test>"):
            assert first.say(line).startswith(b"250")
        assert first.say(b"DATA").startswith(b"354")
        first.sock.sendall(body + _lines(50_000))     # held, not finished
        server.held_reaches(lambda held: held >= 50_000)

        second = _session(server.port)
        assert second.say(b"MAIL FROM:<other@example.org> SIZE=60000").startswith(b"250")
        assert second.say(b"RCPT TO:<inkwell@mail.test>").startswith(b"250")
        assert second.say(b"DATA").startswith(b"452 4.3.1")               # 50 KB + 60 KB > 100 KB
        second.close()

        third = _session(server.port)                                       # no SIZE: let in ...
        for line in (b"MAIL FROM:<third@example.org>", b"RCPT TO:<inkwell@mail.test>"):
            assert third.say(line).startswith(b"250")
        assert third.say(b"DATA").startswith(b"354")
        third.sock.sendall(b"Subject: big\r\n\r\n" + _lines(55_000))
        assert third.reply().startswith(b"421 4.3.1")                       # ... cut off when over
        assert third.closed_by_server()
        third.close()

        first.sock.sendall(b".\r\n")                                        # the first completes
        assert first.reply().startswith(b"250 2.0.0")
        first.close()
        server.held_reaches(lambda held: held == 0)                         # all given back

        fourth = _session(server.port)                                      # and room again
        assert fourth.say(b"MAIL FROM:<other@example.org> SIZE=60000").startswith(b"250")
        assert fourth.say(b"RCPT TO:<inkwell@mail.test>").startswith(b"250")
        assert fourth.say(b"DATA").startswith(b"354")
        fourth.sock.sendall(body + b".\r\n")
        assert fourth.reply().startswith(b"250 2.0.0")
        fourth.close()
        with read_tx(server.engine) as conn:
            senders = sorted(conn.execute(select(INBOUND.c.mail_from)).scalars())
        assert senders == ["guest@example.org", "other@example.org"]
    finally:
        server.stop()


def test_an_oversized_message_still_gets_552_not_421(tmp_path: Path, database_url: str) -> None:
    """Past the size limit the edge keeps only the tail, so the budget counts no more."""
    settings = make_settings(tmp_path, database_url, smtp_max_message_size=20_000)
    server = _Server(settings, DataBudget(limit=30_000))
    with write_tx(server.engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
    try:
        client = _session(server.port)
        for line in (b"MAIL FROM:<guest@example.org>", b"RCPT TO:<inkwell@mail.test>"):
            assert client.say(line).startswith(b"250")
        assert client.say(b"DATA").startswith(b"354")
        client.sock.sendall(b"Subject: huge\r\n\r\n" + (b"z" * 70 + b"\r\n") * 2000 + b".\r\n")   # 144 KB
        assert client.reply().startswith(b"552")
        assert client.say(b"NOOP").startswith(b"250")
        client.close()
        server.held_reaches(lambda held: held == 0)
    finally:
        server.stop()
