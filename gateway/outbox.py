"""The outbox worker: claim due jobs, compose, sign, send through the relay, record.

Claims use `FOR UPDATE SKIP LOCKED` (PostgreSQL), so several workers share the queue and each
reply is sent once; a claimed job carries a lease, so a worker that died mid-way leaves it to
be claimed again. Each result is recorded as soon as the relay has answered (results of
parallel connections share one transaction, like the acceptor's group commits), which keeps
the window in which a crash could send a reply twice to a few milliseconds; a graceful stop
finishes the messages in flight and records them first.

A reply whose message or conversation the studio deleted is not sent while it is deleted: it
stays queued, untouched, and goes out if it is restored (gateway/trash.py); the purge erases it
with its message. A reply already in flight when it is deleted is sent.

Temporary failures (connection trouble, 4xx) are retried with exponential backoff computed by
tenacity's wait strategy and stored as `next_attempt_at`, so retries survive restarts; after
GATEWAY_OUTBOUND_RETRY_FOR, or at once on 5xx, the reply is `failed` with the relay's answer.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import tenacity
from sqlalchemy import Engine, exists, or_, select, update

from gateway.db import read_tx, write_tx
from gateway.ingest import MESSAGE
from gateway.models import utcnow
from gateway.outbound import OutgoingMail, compose_many
from gateway.relay import MaildirTransport, RelayConnection, RelayUrl, SendResult, Transport
from gateway.render import Renderer
from gateway.replies import OUTBOUND_JOB
from gateway.settings import Settings
from gateway.signing import DkimSigner
from gateway.visibility import SHOWN_MESSAGE

log = logging.getLogger(__name__)

# The job's message is shown: neither it nor its conversation is deleted.
_NOT_DELETED = exists(select(MESSAGE.c.id).where(MESSAGE.c.id == OUTBOUND_JOB.c.message_id, SHOWN_MESSAGE))

# A claimed round must finish well within the lease, or another worker would take its jobs
# again while they are in flight: at most PER_CONNECTION messages per relay connection per
# round, each bounded by the relay timeout per SMTP step, against a 30-minute lease.
LEASE = timedelta(minutes=30)
PER_CONNECTION = 8
# 30 s, 1 min, 2 min, ... capped at an hour between tries, plus up to 15 s of jitter so a relay
# coming back is not hit by every queued reply at the same second. (Full jitter, as before,
# could retry a refused connection a few milliseconds later: no backoff at all.)
BACKOFF = tenacity.wait_exponential(multiplier=30, max=3600) + tenacity.wait_random(0, 15)


@dataclass
class Job:
    id: int
    message_row_id: int
    attempts: int
    created_at: datetime


def backoff(attempts: int) -> timedelta:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempts, 1)
    return timedelta(seconds=BACKOFF(state))


def load_signer(settings: Settings) -> DkimSigner | None:
    if settings.dkim_selector and settings.dkim_private_key_file:
        return DkimSigner.from_file(domain=settings.mail_domain, selector=settings.dkim_selector,
                                    path=settings.dkim_private_key_file)
    return None


def make_transports(settings: Settings) -> list[Transport]:
    if settings.smtp_relay_url is None:
        path = settings.data_dir / "outbox-maildir"
        log.info("no GATEWAY_SMTP_RELAY_URL: outgoing mail is written to the Maildir %s", path.resolve())
        return [MaildirTransport(path)]
    relay = RelayUrl.parse(settings.smtp_relay_url.get_secret_value())
    return [RelayConnection(relay, settings.smtp_relay_timeout, settings.resolved_smtp_hostname)
            for _ in range(settings.outbound_connections)]


class Outbox:
    def __init__(self, engine: Engine, settings: Settings, *, transports: list[Transport] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.settings = settings
        self.secret = settings.secret()
        self.clock = clock
        self.renderer = Renderer()
        self.signer = load_signer(settings)
        self.transports = transports if transports is not None else make_transports(settings)
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Called from the event loop's thread (the reply API in the same process)."""
        self._wake.set()

    # -- database steps (run in a thread) --

    def claim(self, limit: int | None = None) -> list[Job]:
        limit = limit or PER_CONNECTION * len(self.transports)
        now = self.clock()
        with write_tx(self.engine) as conn:
            rows = conn.execute(
                select(OUTBOUND_JOB.c.id, OUTBOUND_JOB.c.message_id, OUTBOUND_JOB.c.attempts, OUTBOUND_JOB.c.created_at)
                .where(or_((OUTBOUND_JOB.c.status == "queued") & (OUTBOUND_JOB.c.next_attempt_at <= now),
                           (OUTBOUND_JOB.c.status == "sending") & (OUTBOUND_JOB.c.claimed_at < now - LEASE)),
                       _NOT_DELETED)
                .order_by(OUTBOUND_JOB.c.next_attempt_at, OUTBOUND_JOB.c.id).limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            conn.execute(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id.in_(ids)).values(
                status="sending", claimed_at=now, attempts=OUTBOUND_JOB.c.attempts + 1))
            conn.execute(update(MESSAGE).where(MESSAGE.c.id.in_([r.message_id for r in rows])).values(
                delivery="sending"))
        return [Job(r.id, r.message_id, r.attempts + 1, r.created_at) for r in rows]

    def compose_all(self, jobs: list[Job]) -> list[OutgoingMail | SendResult]:
        with read_tx(self.engine) as conn:
            built = compose_many(conn, [job.message_row_id for job in jobs], self.settings, self.secret,
                                 self.renderer, self.signer)
        composed: list[OutgoingMail | SendResult] = []
        for job in jobs:
            mail = built[job.message_row_id]
            if isinstance(mail, Exception):  # a reply that cannot be built will not build next time either
                log.error("composing outbound message %s failed: %r", job.message_row_id, mail)
                composed.append(SendResult("permanent", f"could not compose the message: {type(mail).__name__}"))
            else:
                composed.append(mail)
        return composed

    def record(self, results: list[tuple[Job, SendResult]]) -> None:
        now = self.clock()
        with write_tx(self.engine) as conn:
            sent = [job for job, result in results if result.kind == "sent"]
            if sent:  # the common case, in two statements however many there are
                conn.execute(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id.in_([j.id for j in sent])).values(
                    status="sent", claimed_at=None, last_error=None, sent_at=now))
                conn.execute(update(MESSAGE).where(MESSAGE.c.id.in_([j.message_row_id for j in sent])).values(
                    delivery="sent", sent_at=now))
            for job, result in results:
                if result.kind == "sent":
                    continue
                status, next_at, detail = "failed", None, result.detail
                if result.kind == "temporary":
                    next_at = now + backoff(job.attempts)
                    if next_at - job.created_at > timedelta(seconds=self.settings.outbound_retry_for):
                        detail = f"gave up after {job.attempts} attempts; last: {result.detail}"
                    else:
                        status = "queued"
                delivery = status
                conn.execute(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id == job.id).values(
                    status=status, claimed_at=None, last_error=detail,
                    next_attempt_at=next_at if next_at is not None else OUTBOUND_JOB.c.next_attempt_at))
                conn.execute(update(MESSAGE).where(MESSAGE.c.id == job.message_row_id).values(delivery=delivery))
                log.warning("outbound message %s: %s (%s)", job.message_row_id, status, detail)

    def _claim_and_compose(self) -> tuple[list[Job], list[OutgoingMail | SendResult]]:
        jobs = self.claim()
        return jobs, self.compose_all(jobs) if jobs else []

    # -- the loop --

    async def run_once(self) -> int:
        """Send every job that is due now; the number handled."""
        jobs, composed = await asyncio.to_thread(self._claim_and_compose)
        if not jobs:
            return 0
        results: asyncio.Queue[tuple[Job, SendResult] | None] = asyncio.Queue()
        recorder = asyncio.create_task(self._record_results(results))
        work = list(zip(jobs, composed))

        async def lane(transport: Transport) -> None:
            while work:
                job, mail = work.pop(0)
                result = mail if isinstance(mail, SendResult) else await transport.send(mail)
                await results.put((job, result))

        try:
            await asyncio.gather(*(lane(t) for t in self.transports))
        finally:
            await results.put(None)
            await recorder
        return len(jobs)

    async def _record_results(self, results: asyncio.Queue[tuple[Job, SendResult] | None]) -> None:
        done = False
        while not done:
            batch = [await results.get()]
            while not results.empty():
                batch.append(results.get_nowait())
            done = None in batch  # the end marker: everything before it is in this batch
            items = [b for b in batch if b is not None]
            if items:
                try:
                    await asyncio.to_thread(self.record, items)
                except Exception:  # the jobs stay `sending` and are claimed again after the lease
                    log.exception("recording %d outbound results failed", len(items))

    async def run(self) -> None:
        """Until stop(): send what is due, then wait for a wake-up or the poll interval.

        A stop lets the round in flight finish (its results recorded), then closes the relay
        connections."""
        try:
            await self._loop()
        finally:
            for transport in self.transports:
                await transport.close()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("outbox round failed; retrying after the poll interval")
                handled = 0
            if handled and not self._stopping:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)
            except asyncio.TimeoutError:
                pass

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
