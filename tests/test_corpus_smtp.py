"""CPython's email test corpus, delivered over real SMTP: every message is answered exactly,
and every accepted one ends stored or quarantined with a reason, never lost or stuck.

The corpus (Lib/test/test_email/data/msg_*.txt) is decades of odd real-world mail collected
by the stdlib's email package: missing headers, broken MIME, DSNs, nested rfc822 parts.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path

import pytest
import test  # CPython's own test package, for its data files
from sqlalchemy import func, select

from gateway.store.tables import BLOB
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND, MESSAGE
from tests.conftest import RunningGateway, SmtpReply, send_on
from tests.mail import make_mail

CORPUS = sorted(Path(p) for p in glob.glob(os.path.join(os.path.dirname(test.__file__),
                                                        "test_email", "data", "msg_*.txt")))

# aiosmtpd reads DATA with a 1001-byte stream limit and refuses a line longer than that,
# CRLF included (RFC 5321 4.5.3.1.6 allows 998 + CRLF; aiosmtpd is one byte lenient), with
# this exact answer, sent only after it has read the rest of the message.
AIOSMTPD_LINE_LIMIT = 1001
LINE_TOO_LONG = SmtpReply(500, "Line too long (see RFC5321 4.5.3.1.6)")
# Loggers that report an exception escaping the SMTP side (hooks, session, acceptor).
SMTP_LOGGERS = ("gateway.smtp", "gateway.ingest", "mail.log", "asyncio")
# Outcomes that store no message row, each for a stated reason (see threader.Outcome).
EXPLAINED_WITHOUT_ROW = {"duplicate", "unthreaded-automatic"}


def crlf(raw: bytes) -> bytes:
    """Line ends as SMTP carries them: every CRLF, bare CR and bare LF becomes CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", raw)


def longest_line_on_the_wire(raw: bytes) -> int:
    """Longest DATA line (CRLF included) after smtplib's dot-stuffing."""
    stuffed = re.sub(rb"(?m)^\.", b"..", raw)
    return max(len(line) + 2 for line in stuffed.split(b"\r\n"))


def test_corpus_is_present() -> None:
    assert len(CORPUS) >= 40, f"CPython's email corpus not found next to {test.__file__}"


def test_every_corpus_message_is_answered_and_ends_stored_or_quarantined(
        gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    studio = gw.add_studio("inkwell")
    caplog.set_level(logging.WARNING)
    expected: dict[str, SmtpReply] = {}
    replies: dict[str, SmtpReply] = {}
    sent: dict[int, tuple[str, bytes]] = {}  # inbound id -> (file, bytes as stored)
    with gw.smtp() as client:
        for path in CORPUS:
            raw = crlf(path.read_bytes())
            if not raw.endswith(b"\r\n"):
                raw += b"\r\n"  # smtplib would add it; the stored bytes must match what we sent
            too_long = longest_line_on_the_wire(raw) > AIOSMTPD_LINE_LIMIT
            expected[path.name] = LINE_TOO_LONG if too_long else SmtpReply(250, "")
            reply = replies[path.name] = send_on(client, raw, studio.address)
            if reply.code == 250:
                assert reply.inbound_id is not None, (path.name, reply)
                sent[reply.inbound_id] = (path.name, raw)
            assert client.rset()[0] == 250  # the session is reused, as an MTA would

        # The same session is still in good order after the whole corpus.
        assert client.noop()[0] == 250

    for name, want in expected.items():
        got = replies[name]
        if want.code == 250:
            assert (got.code, got.text[:6]) == (250, "2.0.0 "), (name, got)
        else:
            assert got == want, name
    assert len(sent) == sum(want.code == 250 for want in expected.values())

    with read_tx(gw.engine) as conn:  # byte for byte, before any processing
        stored = dict(conn.execute(select(INBOUND.c.id, BLOB.c.data).join(
            BLOB, BLOB.c.sha256 == INBOUND.c.raw_sha256)).all())
    assert stored == {inbound_id: raw for inbound_id, (_, raw) in sent.items()}

    results = gw.process()
    final = {r.inbound_id: r for r in results}  # a retried message: its last result counts
    assert set(final) == set(sent)

    with read_tx(gw.engine) as conn:
        rows = {r.id: r for r in conn.execute(select(INBOUND.c.id, INBOUND.c.status, INBOUND.c.error))}
        message_rows = dict(conn.execute(select(MESSAGE.c.inbound_mail_id, func.count())
                                         .group_by(MESSAGE.c.inbound_mail_id)).all())
    done, quarantined = [], []
    for inbound_id, (name, _) in sent.items():
        row, result = rows[inbound_id], final[inbound_id]
        assert row.status in ("done", "quarantined"), (name, row.status, row.error)
        assert result.status == row.status, (name, result, row.status)
        if row.status == "quarantined":
            assert row.error and row.error.strip(), name
            assert result.error, name
            quarantined.append(name)
            continue
        assert result.outcomes, name
        for outcome in result.outcomes:
            if outcome.message_id is None:
                assert outcome.rule in EXPLAINED_WITHOUT_ROW, (name, outcome)
            else:
                assert message_rows.get(inbound_id), (name, outcome)
        done.append(name)
    assert len(done) + len(quarantined) == len(sent)
    assert done, "not one corpus message was stored"
    print(f"\ncorpus: {len(CORPUS)} sent, {len(sent)} accepted, {len(done)} done, "
          f"{len(quarantined)} quarantined: {sorted(quarantined)}")

    # Nothing escaped the handler while the corpus went through.
    escaped = [r for r in caplog.records
               if r.levelno >= logging.ERROR and r.name.startswith(SMTP_LOGGERS)]
    assert not escaped, [r.getMessage() for r in escaped]

    # And a fresh client with a normal message is served as usual afterwards.
    with gw.smtp() as client:
        assert client.noop()[0] == 250
        after = send_on(client, make_mail(from_="After Corpus <after-corpus@example.org>"), studio.address)
    assert after.code == 250 and after.inbound_id is not None
    assert [(r.inbound_id, r.status) for r in gw.process()] == [(after.inbound_id, "done")]


@pytest.mark.parametrize("extra, want", [(0, 250), (1, 500)], ids=["at-limit", "one-over"])
def test_corpus_message_with_a_line_at_the_limit(gw: RunningGateway, extra: int, want: int) -> None:
    """No corpus file reaches the limit, so one is stretched to it: where 250 turns into 500."""
    studio = gw.add_studio("inkwell")
    line = b"x" * (AIOSMTPD_LINE_LIMIT - 2 + extra)  # content of the line, CRLF not counted
    raw = crlf(CORPUS[0].read_bytes()).rstrip(b"\r\n") + b"\r\n" + line + b"\r\n"
    with gw.smtp() as client:
        reply = send_on(client, raw, studio.address)
        if want == 500:
            assert reply == LINE_TOO_LONG
        else:
            assert reply.code == 250
        assert client.rset()[0] == 250
        assert send_on(client, make_mail(), studio.address).code == 250  # the session goes on
    with read_tx(gw.engine) as conn:
        data = [r.data for r in conn.execute(select(BLOB.c.data).join(
            INBOUND, INBOUND.c.raw_sha256 == BLOB.c.sha256).order_by(INBOUND.c.id))]
    assert len(data) == (2 if want == 250 else 1)
    if want == 250:
        assert data[0] == raw
