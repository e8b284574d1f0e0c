"""Hostile input over real SMTP: every case gets a clean answer, the server keeps serving
other clients, memory stays bounded, and whatever was accepted ends `done` or `quarantined`.

Time is bounded, never measured: each client socket has a short timeout, and processing runs
under a deadline (`process_within`), so a hang fails the test instead of stalling the suite.
"""
from __future__ import annotations

import logging
import random
import re
import resource
import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import pytest
from sqlalchemy import select

from gateway.store.tables import BLOB
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND, MESSAGE
from gateway.inbound.processor import Processed
from tests.conftest import RunningGateway, SmtpReply, StudioInfo, send_on
from tests.mail import make_mail

CLIENT_TIMEOUT = 10.0       # seconds any single socket operation may take
PROCESS_DEADLINE = 15.0     # seconds one gw.process() may take for one hostile message
MEMORY_BOUND_KB = 1024 * 1024  # ru_maxrss is in KiB on Linux: 1 GiB of growth at most

LINE_TOO_LONG = SmtpReply(500, "Line too long (see RFC5321 4.5.3.1.6)")
COMMAND_TOO_LONG = (500, b"Command line too long")
# Loggers that report an exception escaping the SMTP side (hooks, session, acceptor).
SMTP_LOGGERS = ("gateway.smtp", "gateway.ingest", "mail.log", "asyncio")
HEAD = (b"From: Guest <guest@example.org>\r\nTo: inkwell@mail.test\r\n"
        b"Date: Fri, 20 Nov 2026 10:00:00 +0000\r\n")


# -- helpers -------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def nothing_escapes_the_smtp_side(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No exception reaches aiosmtpd, the handler's catch-alls or the event loop."""
    yield
    escaped = [r for r in caplog.get_records("call")
               if r.levelno >= logging.ERROR and r.name.startswith(SMTP_LOGGERS)]
    assert not escaped, [r.getMessage() for r in escaped]


def smtplib_stuffed(data: bytes) -> bytes:
    """smtplib.SMTP.data()'s transparency: a dot after any LF, bare or not, is doubled."""
    return re.sub(rb"(?m)^\.", b"..", data)


def unstuffed(data: bytes) -> bytes:
    """What a receiver keeps of DATA lines (RFC 5321 4.5.2): one leading dot removed."""
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def client(gw: RunningGateway) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=CLIENT_TIMEOUT)


@contextmanager
def bounded_memory() -> Iterator[None]:
    """The process's peak RSS (gateway thread included) grows by less than the bound."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MEMORY_BOUND_KB, f"peak RSS grew by {grown // 1024} MiB"


def process_within(gw: RunningGateway, deadline: float = PROCESS_DEADLINE) -> list[Processed]:
    """gw.process(), failing (not hanging) if it has not finished by the deadline."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="process-within")
    try:
        return pool.submit(gw.process).result(timeout=deadline)
    finally:
        pool.shutdown(wait=False)


def assert_still_serving(gw: RunningGateway, studio: StudioInfo) -> int:
    """A second, well-behaved client is served normally; returns its inbound id."""
    with client(gw) as other:
        assert other.noop()[0] == 250
        reply = send_on(other, make_mail(from_="Calm Guest <calm@example.org>"), studio.address)
    assert reply.code == 250 and reply.inbound_id is not None, reply
    return reply.inbound_id


def assert_settled(gw: RunningGateway, inbound_ids: list[int]) -> dict[int, str]:
    """Process everything; each given message ends done (with its row or a stated reason)
    or quarantined with a reason. Nothing is pending, processing or gone."""
    results = process_within(gw)
    last = {r.inbound_id: r for r in results}
    assert set(inbound_ids) <= set(last)
    with read_tx(gw.engine) as conn:
        rows = {r.id: r for r in conn.execute(select(INBOUND.c.id, INBOUND.c.status, INBOUND.c.error))}
        with_message = {r.inbound_mail_id for r in conn.execute(select(MESSAGE.c.inbound_mail_id))}
    assert not [r for r in rows.values() if r.status in ("pending", "processing")]
    for inbound_id in inbound_ids:
        row, result = rows[inbound_id], last[inbound_id]
        assert (row.status, result.status) in (("done", "done"), ("quarantined", "quarantined")), (row, result)
        if row.status == "quarantined":
            assert row.error and row.error.strip() and result.error
        else:
            assert result.outcomes
            for outcome in result.outcomes:
                assert outcome.message_id is not None or outcome.rule in ("duplicate", "unthreaded-automatic")
            if any(o.message_id is not None for o in result.outcomes):
                assert inbound_id in with_message
    return {i: rows[i].status for i in inbound_ids}


def stored_raw(gw: RunningGateway) -> list[bytes]:
    with read_tx(gw.engine) as conn:
        return [r.data for r in conn.execute(select(BLOB.c.data).join(
            INBOUND, INBOUND.c.raw_sha256 == BLOB.c.sha256).order_by(INBOUND.c.id))]


def deliver(gw: RunningGateway, studio: StudioInfo, raw: bytes) -> SmtpReply:
    with client(gw) as smtp:
        return send_on(smtp, raw, studio.address)


def accept_and_settle(gw: RunningGateway, raw: bytes, *, exact: bool = True) -> str:
    """One hostile message: accepted with 250, byte for byte, then done or quarantined."""
    studio = gw.add_studio("inkwell")
    with bounded_memory():
        reply = deliver(gw, studio, raw)
        assert reply.code == 250 and reply.inbound_id is not None, reply
        assert stored_raw(gw) == [raw if exact else unstuffed(smtplib_stuffed(raw))]
        calm = assert_still_serving(gw, studio)
        statuses = assert_settled(gw, [reply.inbound_id, calm])
    assert statuses[calm] == "done"
    return statuses[reply.inbound_id]


# -- parse-heavy messages --------------------------------------------------------------------

def test_header_flood_of_50000_lines(gw: RunningGateway) -> None:
    flood = b"".join(b"X-Flood-%d: value number %d\r\n" % (i, i) for i in range(50_000))
    raw = HEAD + b"Subject: flood\r\n" + flood + b"\r\nbody under a flood of headers\r\n"
    accept_and_settle(gw, raw)


def test_mime_nested_a_thousand_deep(gw: RunningGateway) -> None:
    depth = 1000
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    raw = (HEAD + b"Subject: deep\r\nMIME-Version: 1.0\r\n" + opening
           + b"Content-Type: text/plain\r\n\r\nat the bottom\r\n" + closing)
    accept_and_settle(gw, raw)


def test_twenty_thousand_parts(gw: RunningGateway) -> None:
    parts = b"".join(b"--sep\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(20_000))
    raw = (HEAD + b'Subject: many parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; '
           b'boundary="sep"\r\n\r\n' + parts + b"--sep--\r\n")
    accept_and_settle(gw, raw)


def test_one_megabyte_header_folded_over_many_lines(gw: RunningGateway) -> None:
    """A 1 MB logical header that obeys the line limit by folding: accepted, then cut cheaply."""
    folded = b"\r\n ".join([b"w" * 76] * (1024 * 1024 // 78))
    raw = HEAD + b"Subject: folded\r\nX-Huge: " + folded + b"\r\n\r\nbody\r\n"
    assert len(raw) > 1024 * 1024
    accept_and_settle(gw, raw)


def garbage_body(seed: int, size: int = 200_000) -> bytes:
    """Random bytes cut into lines under the limit; bare CR, bare LF and NUL stay where they fell."""
    garbage = random.Random(seed).randbytes(size)
    return b"\r\n".join(garbage[i:i + 500] for i in range(0, len(garbage), 500)) + b"\r\n"


def test_binary_garbage_and_nul_bytes_are_accepted_and_never_dropped(gw: RunningGateway) -> None:
    body = garbage_body(20261120) + b"NUL\x00in\x00the\x00middle\x00\r\n"
    with_headers = HEAD + b"Subject: garbage\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    headerless = b"\x00\x01\x02\xff\xfe" + body  # not even a header block
    studio = gw.add_studio("inkwell")
    with bounded_memory():
        replies = [deliver(gw, studio, raw) for raw in (with_headers, headerless)]
        assert [r.code for r in replies] == [250, 250], replies
        # Byte for byte, NULs included, as smtplib put it on the wire: smtplib also dot-stuffs
        # a "." after a bare LF, which the server rightly keeps (only CRLF starts a line).
        assert stored_raw(gw) == [unstuffed(smtplib_stuffed(raw)) for raw in (with_headers, headerless)]
        calm = assert_still_serving(gw, studio)
        ids = [r.inbound_id for r in replies if r.inbound_id is not None]
        assert len(ids) == 2
        statuses = assert_settled(gw, ids + [calm])  # done or quarantined with a reason
    assert statuses[calm] == "done"


def test_binary_garbage_without_nul_is_stored_as_a_message(gw: RunningGateway) -> None:
    body = garbage_body(7).replace(b"\x00", b"")
    raw = HEAD + b"Subject: garbage\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body
    assert accept_and_settle(gw, raw, exact=False) == "done"


def test_nul_bytes_in_the_body_are_stored_as_a_message(gw: RunningGateway) -> None:
    """A stray NUL in a guest's text is no reason to park the mail: SQLite stores it, and
    PostgreSQL must too (its text columns refuse NUL, so it has to be dropped on the way)."""
    raw = HEAD + b"Subject: nul\r\n\r\nHallo\x00, ein Termin\x00 bitte?\r\n"
    assert accept_and_settle(gw, raw) == "done"
    with read_tx(gw.engine) as conn:
        (text,) = conn.execute(select(MESSAGE.c.full_text).where(MESSAGE.c.subject == "nul")).scalars()
    assert "Termin" in text


@pytest.mark.parametrize("raw", [
    b"From: Gu\x00est <gu\x00est@example.org>\r\nTo: inkwell@mail.test\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: guest@example.org\r\nTo: inkwell@mail.test\r\nSubject: x\x00y\r\nX-Nul: \x00\r\n\r\nbody\r\n",
], ids=["in-from-address", "in-subject"])
def test_nul_bytes_in_headers_are_accepted_and_settle(gw: RunningGateway, raw: bytes) -> None:
    """Parsing happens after the 250, so no header content may turn acceptance into a 451."""
    accept_and_settle(gw, raw)


def test_nul_byte_in_the_envelope_sender_is_refused_at_mail_with_501(gw: RunningGateway) -> None:
    """A NUL in MAIL FROM is a syntax error (RFC 5321 4.1.2): a permanent 501 5.1.7 at MAIL,
    never a temporary 451 at DATA that would only make the peer retry the same bytes."""
    studio = gw.add_studio("inkwell")
    with client(gw) as smtp:
        smtp.ehlo()
        code, text = smtp.docmd("MAIL", "FROM:<gu\x00est@example.org>")
        assert (code, text) == (501, b"5.1.7 Bad sender address syntax")
        assert smtp.rset()[0] == 250
    assert_still_serving(gw, studio)


# -- limits aiosmtpd enforces while reading ------------------------------------------------

def test_a_single_10_mb_line_is_refused_with_500_and_the_session_goes_on(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = HEAD + b"Subject: one line\r\n\r\n" + b"z" * (10 * 1024 * 1024) + b"\r\n"
    with bounded_memory(), client(gw) as smtp:
        assert send_on(smtp, raw, studio.address) == LINE_TOO_LONG  # after reading it all
        assert smtp.rset()[0] == 250
        normal = make_mail()
        assert send_on(smtp, normal, studio.address).code == 250
    assert stored_raw(gw) == [normal]  # only the normal message: nothing of the long one
    assert_still_serving(gw, studio)


def test_a_one_megabyte_header_on_one_line_is_refused_with_500(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    raw = HEAD + b"Subject: long\r\nX-Long: " + b"h" * (1024 * 1024) + b"\r\n\r\nbody\r\n"
    with bounded_memory(), client(gw) as smtp:
        assert send_on(smtp, raw, studio.address) == LINE_TOO_LONG
        assert smtp.rset()[0] == 250
        assert send_on(smtp, make_mail(), studio.address).code == 250
    assert len(stored_raw(gw)) == 1
    assert_still_serving(gw, studio)


def test_command_line_longer_than_512_bytes_gets_500_and_the_session_goes_on(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    with client(gw) as smtp:
        smtp.ehlo()
        assert smtp.docmd("NOOP", "x" * 507)[0] == 250          # 512 bytes: the RFC 5321 limit
        assert smtp.docmd("NOOP", "x" * 508) == COMMAND_TOO_LONG  # 513 bytes
        assert smtp.docmd("NOOP", "x" * 100_000) == COMMAND_TOO_LONG  # past the stream limit too
        assert smtp.docmd("MAIL", "FROM:<" + "a" * 600 + "@example.org>") == COMMAND_TOO_LONG
        assert smtp.noop()[0] == 250
        assert send_on(smtp, make_mail(), studio.address).code == 250
    assert len(stored_raw(gw)) == 1


def test_too_many_unknown_commands_cut_the_client_off(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    with client(gw) as smtp:
        smtp.ehlo()
        answers = [smtp.docmd(f"XCMD{i}") for i in range(5)]
        assert answers[:4] == [(500, f'Error: command "XCMD{i}" not recognized'.encode()) for i in range(4)]
        assert answers[4] == (502, b"5.5.1 Too many unrecognized commands, goodbye.")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    assert_still_serving(gw, studio)


# -- the SMTP conversation itself ------------------------------------------------------------

class RawSession:
    """A client that writes exactly the bytes given, for what smtplib would not send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.stream = self.sock.makefile("rb")
        assert self.reply()[0] == 220

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, bytes]:
        """One (possibly multi-line) reply: its code and its last line."""
        while True:
            line = self.stream.readline()
            assert line.endswith(b"\r\n"), f"connection closed or cut: {line!r}"
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].rstrip(b"\r\n")

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


SMUGGLED = (b"MAIL FROM:<admin@bank.example>\r\nRCPT TO:<inkwell@mail.test>\r\nDATA\r\n"
            b"From: admin@bank.example\r\nTo: inkwell@mail.test\r\nSubject: smuggled\r\n\r\n"
            b"smuggled text\r\n")


@pytest.mark.parametrize("end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"],
                         ids=["LF.LF", "CR.CR", "LF.CRLF", "CRLF.LF"])
def test_smuggled_end_of_data_does_not_end_the_message(gw: RunningGateway, end: bytes) -> None:
    gw.add_studio("inkwell")  # RCPT needs the studio to exist
    payload = (HEAD + b"Subject: real\r\nMessage-ID: <real@example.org>\r\n\r\nreal body" + end
               + SMUGGLED + end + b"tail\r\n")
    session = RawSession(gw.smtp_port)
    try:
        session.write(b"EHLO attacker.example\r\n")
        assert session.reply()[0] == 250
        for command in (b"MAIL FROM:<guest@example.org>", b"RCPT TO:<inkwell@mail.test>", b"DATA"):
            session.write(command + b"\r\n")
            assert session.reply()[0] in (250, 354)
        session.write(payload + b".\r\nQUIT\r\n")
        code, text = session.reply()
        assert code == 250 and text.startswith(b"2.0.0")
        # Had the smuggled MAIL/RCPT/DATA been read as commands, their replies would come here.
        assert session.reply() == (221, b"Bye")
    finally:
        session.close()

    assert stored_raw(gw) == [unstuffed(payload)]  # one message, the smuggled text inside it
    with read_tx(gw.engine) as conn:
        assert len(conn.execute(select(INBOUND.c.id)).all()) == 1
    (result,) = process_within(gw)
    assert result.status == "done"
    with read_tx(gw.engine) as conn:
        (message,) = conn.execute(select(MESSAGE.c.subject, MESSAGE.c.full_text)).all()
    assert message.subject == "real"
    assert "smuggled text" in message.full_text and "tail" in message.full_text


def test_pipelined_commands_in_one_write_are_answered_in_order(gw: RunningGateway) -> None:
    """aiosmtpd does not advertise PIPELINING, but clients that pipeline anyway (RFC 2920
    style, as many MTAs do) must get one reply per command, in order."""
    studio = gw.add_studio("inkwell")
    first, second = make_mail(subject="erste"), make_mail(subject="zweite")
    session = RawSession(gw.smtp_port)
    try:
        session.write(b"EHLO client.example\r\n")
        assert session.reply()[0] == 250
        session.write(b"MAIL FROM:<guest@example.org>\r\nRCPT TO:<inkwell@mail.test>\r\n"
                      b"RCPT TO:<nobody@mail.test>\r\nDATA\r\n")
        assert [session.reply()[0] for _ in range(4)] == [250, 250, 550, 354]
        # RFC 2920: the message, its end and the next transaction's commands in one write.
        session.write(first + b".\r\nMAIL FROM:<guest@example.org>\r\nRCPT TO:<inkwell@mail.test>\r\n"
                      b"DATA\r\n")
        assert [session.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        session.write(second + b".\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        assert [session.reply()[0] for _ in range(4)] == [250, 250, 250, 221]
    finally:
        session.close()
    assert stored_raw(gw) == [first, second]
    assert [r.status for r in process_within(gw)] == ["done", "done"]
    items = gw.api(studio.token).get("/api/v1/conversations").json()["items"]
    assert sorted(i["subject"] for i in items) == ["erste", "zweite"]
