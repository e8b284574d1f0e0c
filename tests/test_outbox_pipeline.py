"""The outbox's pipeline: claims overlap sending, each reply goes out once, a crashed worker's
jobs come back after the lease, a stop finishes what was claimed, and results are recorded
while later messages are still being sent.

Transports are in-process fakes (the real relay is covered by test_outbound.py); the database
is real, on SQLite and PostgreSQL. Nothing sleeps: fakes hand control back with
`asyncio.sleep(0)` and wait for events the outbox sets.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from email import message_from_bytes
from typing import Any, Callable

from sqlalchemy import Connection, select

from gateway.store.db import read_tx, write_tx
from gateway.store.tables import MESSAGE
from gateway.store.models import utcnow
from gateway.outbound.compose import OutgoingMail
from gateway.outbound.outbox import PER_CONNECTION, Job, Outbox
from gateway.runtime import LATE_BODIES
from gateway.outbound.relay import SendResult
from gateway.store.tables import OUTBOUND_JOB
from gateway.outbound.replies import create_reply
from tests.conftest import RunningGateway
from tests.test_outbound import inquiry


class FakeRelay:
    """Accepts everything, remembering each message's Message-ID; `before_send` may wait."""

    def __init__(self, before_send: Callable[[int], Any] | None = None) -> None:
        self.sent: list[str] = []
        self.before_send = before_send

    async def send(self, mail: OutgoingMail) -> SendResult:
        if self.before_send is not None:
            await self.before_send(len(self.sent))
        await asyncio.sleep(0)  # an answer takes a round trip: let the other tasks run
        self.sent.append(message_from_bytes(mail.data)["Message-ID"].strip("<>"))
        return SendResult("sent", "250 2.0.0 Ok: queued")

    async def close(self) -> None:
        return None


def queue_replies(gw: RunningGateway, count: int) -> list[str]:
    """`count` queued replies in one conversation; their Message-IDs."""
    studio, _, conversation = inquiry(gw)
    with write_tx(gw.engine) as conn:
        replies = [create_reply(conn, studio_id=studio.id, conversation_id=conversation["id"], text=f"Antwort {i}",
                                settings=gw.settings) for i in range(count)]
    return [r.message_id for r in replies]  # type: ignore[union-attr]


def jobs(gw: RunningGateway) -> list[tuple[str, int, str | None]]:
    """(status, attempts, message delivery) of every job."""
    with read_tx(gw.engine) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(OUTBOUND_JOB.c.status, OUTBOUND_JOB.c.attempts, MESSAGE.c.delivery)
            .join(MESSAGE, MESSAGE.c.id == OUTBOUND_JOB.c.message_id).order_by(OUTBOUND_JOB.c.id))]


def test_claims_overlap_sending_and_each_reply_is_sent_once(gw: RunningGateway) -> None:
    ids = queue_replies(gw, 70)
    relays = [FakeRelay(), FakeRelay()]
    claims: list[tuple[int, int]] = []   # (jobs claimed, messages answered by then)

    class Watched(Outbox):
        def _claim(self, conn: Connection, limit: int, now: datetime) -> list[Job]:
            claimed = super()._claim(conn, limit, now)
            claims.append((len(claimed), sum(len(r.sent) for r in relays)))
            assert limit <= PER_CONNECTION * len(relays)   # the lease bound: never more waiting
            return claimed

    outbox = Watched(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=relays)  # type: ignore[arg-type]
    assert asyncio.run(outbox.run_once()) == 70
    assert sorted(relays[0].sent + relays[1].sent) == sorted(ids)
    assert relays[0].sent and relays[1].sent
    assert jobs(gw) == [("sent", 1, "sent")] * 70
    # Later claims were made while earlier jobs were still being sent, not after a whole round.
    assert len(claims) >= 4 and any(0 < answered < 70 for _, answered in claims[1:])
    assert asyncio.run(outbox.run_once()) == 0


def test_a_crashed_workers_jobs_are_sent_once_after_the_lease(gw: RunningGateway) -> None:
    [message_id] = queue_replies(gw, 1)
    crashed = Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[FakeRelay()])
    assert len(crashed.claim()) == 1   # ... and the worker dies before sending

    relay = FakeRelay()
    assert asyncio.run(Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[relay]).run_once()) == 0
    assert jobs(gw) == [("sending", 1, "sending")]
    after_lease = Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[relay],
                         clock=lambda: utcnow() + timedelta(seconds=gw.settings.outbound_lease + 1))
    assert asyncio.run(after_lease.run_once()) == 1
    assert relay.sent == [message_id] and jobs(gw) == [("sent", 2, "sent")]
    assert asyncio.run(after_lease.run_once()) == 0


def test_a_stop_finishes_and_records_what_was_claimed_and_claims_no_more(gw: RunningGateway) -> None:
    queue_replies(gw, 40)
    outbox: Outbox

    async def stop_at_first(sent: int) -> None:
        if sent == 0:
            outbox.stop()

    relay = FakeRelay(stop_at_first)
    outbox = Outbox(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[relay])
    handled = asyncio.run(outbox.run_once())
    assert 1 <= handled <= PER_CONNECTION < 40 and len(relay.sent) == handled
    states = jobs(gw)
    assert states[:handled] == [("sent", 1, "sent")] * handled
    assert states[handled:] == [("queued", 0, "queued")] * (40 - handled)


def test_results_are_recorded_while_later_messages_are_being_sent(gw: RunningGateway) -> None:
    ids = queue_replies(gw, PER_CONNECTION + 2)
    recorded: asyncio.Event
    loop: asyncio.AbstractEventLoop

    class Watched(Outbox):
        def _step(self, results: list[tuple[Job, SendResult]], want: int) -> Any:
            done = super()._step(results, want)   # committed when it returns
            if results:
                loop.call_soon_threadsafe(recorded.set)   # _step runs in a worker thread
            return done

    async def second_waits_for_the_first_to_be_recorded(sent: int) -> None:
        if sent == 1:
            await asyncio.wait_for(recorded.wait(), 30)   # fails the test if it never comes
            # Committed before this send: a crash now could resend nothing already answered.
            with read_tx(gw.engine) as conn:
                assert conn.execute(select(OUTBOUND_JOB.c.status).order_by(OUTBOUND_JOB.c.id)).scalars().first() == "sent"

    async def main() -> int:
        nonlocal recorded, loop
        recorded, loop = asyncio.Event(), asyncio.get_running_loop()
        relay = FakeRelay(second_waits_for_the_first_to_be_recorded)
        handled = await Watched(gw.engine, gw.settings, late_bodies=LATE_BODIES, transports=[relay]).run_once()
        assert relay.sent == ids
        return handled

    assert asyncio.run(main()) == PER_CONNECTION + 2
    assert jobs(gw) == [("sent", 1, "sent")] * (PER_CONNECTION + 2)
