"""The outbox's lease: short, renewed while a worker sends, taken over soon after a worker dies.

A worker killed with SIGKILL while the relay holds its DATA leaves its claimed replies behind;
another worker takes them after GATEWAY_OUTBOUND_LEASE (a minute), not half an hour, and sends
each once more with the same Message-ID (at least once). A live worker that takes longer than
the lease keeps its replies: it renews the lease, so nobody sends them twice meanwhile.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from gateway.outbound.outbox import Outbox
from gateway.runtime import LATE_BODIES
from gateway.store.db import read_tx
from gateway.store.tables import OUTBOUND_JOB
from tests.conftest import MAIL_DOMAIN, SECRET, make_settings, start_gateway, gateway_subprocess_env
from tests.relay_sink import RelaySink
from tests.test_outbound import send_due
from tests.test_outbox_pipeline import FakeRelay, jobs, queue_replies
from tests.test_serve import gateway_command


def test_a_killed_workers_replies_are_taken_over_after_a_minute_and_sent_once_more(
        tmp_path: Path, database_url: str) -> None:
    with RelaySink(hold=True) as hanging, RelaySink() as relay:
        running = start_gateway(make_settings(tmp_path, database_url, smtp_relay_url=relay.url))
        worker: subprocess.Popen[bytes] | None = None
        try:
            ids = queue_replies(running, 3)
            env = gateway_subprocess_env()
            env.update(GATEWAY_DATA_DIR=str(tmp_path / "worker"), GATEWAY_DATABASE_URL=database_url,
                       GATEWAY_SECRET_KEY=SECRET, GATEWAY_MAIL_DOMAIN=MAIL_DOMAIN,
                       GATEWAY_SMTP_RELAY_URL=hanging.url, GATEWAY_OUTBOUND_CONNECTIONS="1")
            worker = subprocess.Popen(gateway_command() + ["worker"], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert hanging.arrived.wait(60), "the worker never reached the relay's DATA"
            worker.send_signal(signal.SIGKILL)  # mid-send: the relay has the first reply's DATA
            worker.wait(30)
            assert jobs(running) == [("sending", 1, "sending")] * 3  # all three were in its hands

            assert send_due(running) == 0  # within the lease: it might still be alive
            assert send_due(running, later=timedelta(seconds=61)) == 3  # the default lease: a minute
            assert sorted(m.message["Message-ID"].strip("<>") for m in relay.received) == sorted(ids)
            assert jobs(running) == [("sent", 2, "sent")] * 3
        finally:
            if worker is not None and worker.poll() is None:
                worker.kill()
                worker.wait(30)
            running.stop()


def test_a_worker_slower_than_the_lease_renews_it_and_nobody_else_sends_its_replies(
        tmp_path: Path, database_url: str) -> None:
    running = start_gateway(make_settings(tmp_path, database_url, outbound_lease=0.3))
    try:
        [message_id] = queue_replies(running, 1)

        def claimed_at() -> object:
            with read_tx(running.engine) as conn:
                return conn.execute(select(OUTBOUND_JOB.c.claimed_at)).scalar_one()

        async def main() -> tuple[list[str], list[str], int]:
            entered, release = asyncio.Event(), asyncio.Event()

            async def slow(_: int) -> None:
                entered.set()
                await release.wait()

            slow_relay, other_relay = FakeRelay(slow), FakeRelay()
            settings = running.settings
            sending = asyncio.create_task(
                Outbox(running.engine, settings, late_bodies=LATE_BODIES, transports=[slow_relay]).run_once())
            await asyncio.wait_for(entered.wait(), 30)
            first = await asyncio.to_thread(claimed_at)
            # Wait (bounded) until the heartbeat has moved the lease past the first claim's end.
            deadline = time.monotonic() + 30
            while (renewed := await asyncio.to_thread(claimed_at)) <= first + timedelta(seconds=0.3):  # type: ignore[operator]
                assert time.monotonic() < deadline, "the lease was never renewed"
                await asyncio.sleep(0.05)
            assert renewed > first  # type: ignore[operator]
            # The claim is older than the lease, but renewed: another worker takes nothing.
            taken = await Outbox(running.engine, settings, late_bodies=LATE_BODIES,
                                 transports=[other_relay]).run_once()
            release.set()
            handled = await sending
            return slow_relay.sent, other_relay.sent, handled + taken

        slow_sent, other_sent, handled = asyncio.run(main())
        assert slow_sent == [message_id] and other_sent == [] and handled == 1
        assert jobs(running) == [("sent", 1, "sent")]
    finally:
        running.stop()


def test_the_lease_is_a_setting_and_a_minute_by_default(tmp_path: Path) -> None:
    assert make_settings(tmp_path, "sqlite://").outbound_lease == 60.0
    assert make_settings(tmp_path, "sqlite://", outbound_lease=5).outbound_lease == 5.0
