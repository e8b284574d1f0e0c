"""Every message gets a time budget: a parse over it is stopped, the message quarantined, and
the mail behind it goes on (gateway/inbound/isolation.py). And a message whose processing was
started and never finished counts as an attempt."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import select, update

from gateway.inbound.isolation import CHILD_DIED, Died, Overran, ParseChild
from gateway.inbound.mime import ParsedMessage
from gateway.inbound.processor import (
    LEASE,
    claim,
    claimer,
    process_pending,
    release_claims_of,
)
from gateway.runtime import REACTIONS
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import BLOB, INBOUND
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail

# 2 MB of nested <div>: html5ever (under nh3, which sanitises every HTML part) is quadratic in
# nesting depth: 320 KB took 11 s, this takes minutes. Whatever is slow next, the budget holds.
DEEP_HTML = "\r\n".join(["<div>" * 190] * (400 * 1024 // 190))  # SMTP lines stay under 1,000


def poisoned_mail(subject: str = "Vergiftet") -> bytes:
    return (f"From: gift@example.org\r\nTo: inkwell@mail.test\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + DEEP_HTML + "\r\n").encode()


def test_a_parse_over_its_budget_is_stopped_and_the_rest_of_the_batch_goes_on() -> None:
    child = ParseChild()
    try:
        started = time.monotonic()
        outcomes = child.parse_all([make_mail(subject="vorher"), poisoned_mail(), make_mail(subject="danach")], 2.0)
        assert time.monotonic() - started < 60  # minutes without the budget
        assert [type(o) for o in outcomes] == [ParsedMessage, Overran, ParsedMessage]
        assert [o.subject for o in outcomes if isinstance(o, ParsedMessage)] == ["vorher", "danach"]
        assert child.started == 2  # the overrun child was killed and replaced
    finally:
        child.stop()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _busy(pid: int, cpu_seconds: float, timeout: float) -> bool:
    """Whether the process has used `cpu_seconds` of CPU beyond its start-up within `timeout`
    (polled: another process offers nothing to wait on)."""
    start, deadline = _cpu_seconds(pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _cpu_seconds(pid) - start >= cpu_seconds:
            return True
        time.sleep(0.05)
    return False


def test_a_parser_that_dies_gives_died_for_its_message_only() -> None:
    child = ParseChild()
    child.start()
    pid = child.pid
    assert pid is not None
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.extend(
        child.parse_all([poisoned_mail(), make_mail(subject="danach")], 120.0)))
    worker.start()
    try:
        assert _busy(pid, cpu_seconds=0.5, timeout=60)  # it is on the poisoned message
        os.kill(pid, signal.SIGKILL)  # the kernel's OOM killer, say, mid-parse
        worker.join(120)
        assert not worker.is_alive()
        assert isinstance(outcome[0], Died) and outcome[0].exitcode == -signal.SIGKILL
        assert isinstance(outcome[1], ParsedMessage) and outcome[1].subject == "danach"
    finally:
        child.stop()


def test_poisoned_mail_is_quarantined_within_its_budget_and_raw_kept(tmp_path: Path, database_url: str) -> None:
    gw = start_gateway(make_settings(tmp_path, database_url, process_time_budget=2.0))
    try:
        studio = gw.add_studio("inkwell")
        poisoned = gw.send(poisoned_mail(), studio.address)
        innocent = gw.send(make_mail(subject="Harmlos"), studio.address)
        assert poisoned.code == innocent.code == 250
        results = {r.inbound_id: r for r in gw.process()}
        assert results[poisoned.inbound_id].status == "quarantined"
        assert (results[poisoned.inbound_id].error or "").startswith("processing took too long")
        assert results[innocent.inbound_id].status == "done"
        with read_tx(gw.engine) as conn:
            row = conn.execute(select(INBOUND.c.status, INBOUND.c.error, BLOB.c.data).join(
                BLOB, BLOB.c.sha256 == INBOUND.c.raw_sha256).where(INBOUND.c.id == poisoned.inbound_id)).one()
        assert row.status == "quarantined" and row.error.startswith("processing took too long")
        assert row.data == poisoned_mail()  # nothing accepted is lost: `gateway quarantine retry` can have it
    finally:
        gw.stop()


def test_messages_started_and_never_finished_are_set_aside_after_max_attempts(
        tmp_path: Path, database_url: str) -> None:
    """A worker that dies on a message (killed, or taking the machine down) never records a
    failure; the attempt was counted when it claimed the message, so the third claim is the
    last and the fourth sets it aside, whether the claim came back by a dead worker's release
    or by the lease running out."""
    settings = make_settings(tmp_path, database_url, process_max_attempts=3)
    gw = start_gateway(settings)
    try:
        studio = gw.add_studio("inkwell")
        reply = gw.send(make_mail(), studio.address)
        for attempt in (1, 2, 3):
            [taken] = claim(gw.engine, settings, 10)  # started ...
            assert taken.id == reply.inbound_id
            if attempt % 2:  # ... and never finished: the worker died (serve frees its claims) ...
                assert release_claims_of(gw.engine, claimer()) == 1
            else:  # ... or hung, and its lease ran out
                with write_tx(gw.engine) as conn:
                    conn.execute(update(INBOUND).values(claimed_at=utcnow() - LEASE - LEASE))
        assert claim(gw.engine, settings, 10) == []
        with read_tx(gw.engine) as conn:
            row = conn.execute(select(INBOUND.c.status, INBOUND.c.attempts, INBOUND.c.error)).one()
        assert (row.status, row.attempts) == ("quarantined", 3)
        assert row.error == "processing failed 3 times; set aside"
    finally:
        gw.stop()


def test_end_to_end_poisoned_html_does_not_hold_up_the_mail_behind_it(tmp_path: Path, database_url: str) -> None:
    """Over SMTP into a running gateway with its processor: the poisoned mail is quarantined
    within its budget, the innocent one sent after it is in the API within seconds."""
    budget = 3.0
    running: RunningGateway = start_gateway(make_settings(tmp_path, database_url, process_time_budget=budget,
                                                          process_max_defer=0), roles=("smtp", "web", "worker"))
    try:
        studio = running.add_studio("inkwell")
        started = time.monotonic()
        with running.smtp() as client:
            client.sendmail("gift@example.org", [studio.address], poisoned_mail())
            client.sendmail("guest@example.org", [studio.address], make_mail(subject="Harmlos"))
        processor = running.gateway.processor
        assert processor is not None and processor.wait_processed(2, timeout=120)
        elapsed = time.monotonic() - started
        items = running.api(studio.token).get("/api/v1/conversations").json()["items"]
        assert [i["subject"] for i in items] == ["Harmlos"]
        # One budget, plus a new parser process, plus slack for a loaded machine: minutes without.
        assert elapsed < budget + 45
        with read_tx(running.engine) as conn:
            statuses = sorted(conn.execute(select(INBOUND.c.status)).scalars())
        assert statuses == ["done", "quarantined"]
    finally:
        running.stop()


def test_a_parser_killed_mid_message_counts_an_attempt_and_the_batch_goes_on(
        tmp_path: Path, database_url: str) -> None:
    """The kernel kills the parser child (out of memory, say) while it reads one message: that
    message is retried later like any crash (an attempt counted), the rest of the batch is
    threaded now."""
    gw = start_gateway(make_settings(tmp_path, database_url, process_time_budget=600.0))
    try:
        studio = gw.add_studio("inkwell")
        poisoned = gw.send(poisoned_mail(), studio.address)
        innocent = gw.send(make_mail(subject="Harmlos"), studio.address)

        def kill_the_busy_parser() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for child in multiprocessing.active_children():
                    if child.name == "gateway-parser" and child.pid and _busy(child.pid, 0.5, 60):
                        os.kill(child.pid, signal.SIGKILL)
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_the_busy_parser)
        killer.start()
        results = {r.inbound_id: r for r in process_pending(gw.engine, gw.settings, REACTIONS)}
        killer.join()
        assert results[poisoned.inbound_id].status == "pending"
        assert results[poisoned.inbound_id].error == f"{CHILD_DIED} (exit code {-signal.SIGKILL})"
        assert results[innocent.inbound_id].status == "done"
        with read_tx(gw.engine) as conn:
            row = conn.execute(select(INBOUND.c.status, INBOUND.c.attempts).where(
                INBOUND.c.id == poisoned.inbound_id)).one()
        assert (row.status, row.attempts) == ("pending", 1)
    finally:
        gw.stop()
