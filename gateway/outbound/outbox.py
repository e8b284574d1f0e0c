"""The outbox worker: claim due jobs, compose, sign, send through the relay, record.

Claims use `FOR UPDATE SKIP LOCKED` (PostgreSQL), so several workers share the queue and each
reply is sent once; a claimed job carries a short lease (GATEWAY_OUTBOUND_LEASE, a minute) that
the worker renews every third of it while the job is in its hands, so a worker that died
mid-way (kill -9, OOM) leaves its jobs to another worker within about a minute rather than
after the half hour a fixed lease had to allow for a slow relay. A job the dead worker had
already handed to the relay is then sent again: delivery is at least once, with the same
Message-ID, so the guest's mail client shows one message. Claiming and composing overlap sending (run_once). Each result is recorded
within RECORD_WITHIN (10 ms) of the relay's answer, in the commit that claims the next jobs
when one is due by then (results of parallel connections share one transaction, like the
acceptor's group commits), which keeps the window in which a crash could send a reply twice
to milliseconds; a graceful stop claims nothing more, finishes the claimed messages and
records them first.

A reply whose message or conversation the studio deleted is not sent while it is deleted: it
stays queued, untouched, and goes out if it is restored (gateway/lifecycle/trash.py); the purge erases it
with its message. A reply already in flight when it is deleted is sent.

Temporary failures (connection trouble, 4xx) are retried with exponential backoff computed by
tenacity's wait strategy and stored as `next_attempt_at`, so retries survive restarts; after
GATEWAY_OUTBOUND_RETRY_FOR, or at once on 5xx, the reply is `failed` with the relay's answer.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Mapping, Protocol, Sequence

import tenacity
from sqlalchemy import Connection, Engine, and_, bindparam, exists, or_, select, update

from gateway.eventlog import DELIVERY_UPDATED, record as record_event
from gateway.metrics import OUTBOX
from gateway.store.db import read_tx, result_processor, write_tx
from gateway.store.tables import CONVERSATION, MESSAGE
from gateway.store.models import utcnow
from gateway.outbound.compose import LateBodies, OutgoingMail, Undeliverable, Withdrawn, compose_many
from gateway.store.prepared import Prepared
from gateway.outbound.relay import NO_STARTTLS, MaildirTransport, RelayConnection, RelayUrl, SendResult, Transport
from gateway.outbound.render import Renderer
from gateway.store.tables import OUTBOUND_JOB
from gateway.settings import Settings
from gateway.outbound.signing import DkimSigner
from gateway.access.visibility import LIVE_MESSAGE, SHOWN_MESSAGE

log = logging.getLogger(__name__)

# The job's message is shown: neither it nor its conversation is deleted. A notification to a
# profile (gateway/outbound/notifications.py) belongs to no conversation: only its own deletion counts.
_NOT_DELETED = exists(select(MESSAGE.c.id).where(
    MESSAGE.c.id == OUTBOUND_JOB.c.message_id,
    or_(SHOWN_MESSAGE, and_(MESSAGE.c.conversation_id.is_(None), LIVE_MESSAGE))))

# At most PER_CONNECTION claimed, unsent messages wait per relay connection (the next claim is
# made when a quarter of them are left, so sending rarely waits for a claim). Their lease is
# renewed while they wait and while they are sent (run_once's heartbeat), however slow the relay.
PER_CONNECTION = 8
COMPOSE_FAILED = "could not compose the message"  # a reply that never reached the relay (readiness.py)
# A result no relay gives: the mail was withdrawn before it was sent (compose.Withdrawn). Its job
# and message become `cancelled`, which neither the pause of a profile's notifications (bounced
# or failed: notify_preferences.py) nor a retry (failed only: retry.py) counts.
WITHDRAWN = "withdrawn"
CANCELLED = "cancelled"
RENEWALS_PER_LEASE = 3   # a renewal may fail or come late twice before another worker takes over
# On SQLite a commit costs an fsync and ~300 us of CPU (BEGIN IMMEDIATE, the pool, the WAL
# write), most of a step's cost. So a result waits up to this long (or until a window's worth
# of results is waiting) to be recorded in the commit of the next claim rather than one of its
# own: a crash can resend at most what the relay answered in that time. At 5 ms most results
# still needed commits of their own at ~2,500 messages a second (bench/outbound.py); at 10 ms
# nearly every commit is shared (3000 messages: 315 commits before, 130 now).
RECORD_WITHIN = 0.010

# Built once: building and caching a Core statement per call cost more CPU than SQLite takes to
# run it. Two subqueries rather than one OR: SQLite answered the OR by collecting and sorting
# every queued job (tens of ms per claim with a few thousand queued); each of these walks
# ix_outbound_job_status_due and stops at the limit. Expired leases are few (crashed workers):
# only after a crash can a claim take more than `limit` jobs (up to `limit` of each kind).
_DUE = (select(OUTBOUND_JOB.c.id)
        .where(OUTBOUND_JOB.c.status == "queued", OUTBOUND_JOB.c.next_attempt_at <= bindparam("now"), _NOT_DELETED)
        .order_by(OUTBOUND_JOB.c.next_attempt_at, OUTBOUND_JOB.c.id).limit(bindparam("limit"))
        .with_for_update(skip_locked=True))
_EXPIRED = (select(OUTBOUND_JOB.c.id)
            .where(OUTBOUND_JOB.c.status == "sending", OUTBOUND_JOB.c.claimed_at < bindparam("expired_before"),
                   _NOT_DELETED)
            .order_by(OUTBOUND_JOB.c.id).limit(bindparam("limit"))
            .with_for_update(skip_locked=True))
# RETURNING gives the attempts after the increment (PostgreSQL and SQLite >= 3.35 alike).
_CLAIM = (update(OUTBOUND_JOB)
          .where(or_(OUTBOUND_JOB.c.id.in_(_DUE.scalar_subquery()), OUTBOUND_JOB.c.id.in_(_EXPIRED.scalar_subquery())))
          .values(status="sending", claimed_at=bindparam("now"), attempts=OUTBOUND_JOB.c.attempts + 1)
          .returning(OUTBOUND_JOB.c.id, OUTBOUND_JOB.c.message_id, OUTBOUND_JOB.c.attempts, OUTBOUND_JOB.c.created_at))
_CLAIM_JOBS = Prepared(_CLAIM)
# A heartbeat: only this worker's claim (the attempt it made) of a job still being sent; a job
# already recorded, or taken over after a missed lease, is left alone.
_RENEW = Prepared(update(OUTBOUND_JOB)
                  .where(OUTBOUND_JOB.c.id == bindparam("job_id"), OUTBOUND_JOB.c.status == "sending",
                         OUTBOUND_JOB.c.attempts == bindparam("attempts"))
                  .values(claimed_at=bindparam("now", type_=OUTBOUND_JOB.c.claimed_at.type)))
_MESSAGE_SENDING = Prepared(update(MESSAGE).where(MESSAGE.c.id == bindparam("message_row_id"))
                            .values(delivery="sending"))
# Results: one row per statement, executed as executemany (one C loop in the driver on SQLite,
# pipelined by psycopg) rather than an IN list SQLAlchemy re-renders on every call.
_JOB_SENT = Prepared(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id == bindparam("job_id"))
                     .values(status="sent", claimed_at=None, last_error=None,
                             sent_at=bindparam("now", type_=OUTBOUND_JOB.c.sent_at.type)))
_MESSAGE_SENT = Prepared(update(MESSAGE).where(MESSAGE.c.id == bindparam("message_row_id"))
                         .values(delivery="sent", sent_at=bindparam("now", type_=MESSAGE.c.sent_at.type)))
# 30 s, 1 min, 2 min, ... capped at an hour between tries, plus up to 15 s of jitter so a relay
# coming back is not hit by every queued reply at the same second. (Full jitter, as before,
# could retry a refused connection a few milliseconds later: no backoff at all.)
BACKOFF = tenacity.wait_exponential(multiplier=30, max=3600) + tenacity.wait_random(0, 15)


# Replies waiting because the relay would not take our credentials encrypted (relay.NO_STARTTLS):
# walks ix_outbound_job_status_due over the queued jobs only.
_WAITING_FOR_TLS = (select(OUTBOUND_JOB.c.id)
                    .where(OUTBOUND_JOB.c.status == "queued", OUTBOUND_JOB.c.last_error == NO_STARTTLS).limit(1))


def relay_problem(conn: Connection) -> str | None:
    """What keeps replies from the relay that only an operator can mend, for /readyz (which may
    run in another process than the outbox, so the answer comes from the jobs themselves): the
    relay offered no STARTTLS for its credentials. Cleared by the first successful send."""
    return NO_STARTTLS if conn.execute(_WAITING_FOR_TLS).first() is not None else None


@dataclass
class Job:
    id: int
    message_row_id: int
    attempts: int
    created_at: datetime


def log_attempts(results: list[tuple[Job, SendResult]]) -> None:
    """One line for each delivery attempt with the relay's answer: INFO when it took the mail (or
    the mail was withdrawn), WARNING when not. The answer may name a recipient; gateway/logs.py
    masks it below DEBUG."""
    for job, result in results:
        log.log(logging.INFO if result.kind in ("sent", WITHDRAWN) else logging.WARNING,
                "outbound job %d (message %d), attempt %d: %s: %s", job.id, job.message_row_id, job.attempts,
                result.kind, result.detail, extra={"event": "delivery_attempt", "job_id": job.id,
                                                   "message_id": job.message_row_id, "attempt": job.attempts,
                                                   "result": result.kind, "answer": result.detail})


_JOB_PLACES = (select(MESSAGE.c.id, MESSAGE.c.studio_id, MESSAGE.c.conversation_id)
               .where(MESSAGE.c.id.in_(bindparam("ids", expanding=True))))


def delivery_events(conn: Connection, outcomes: list[tuple[Job, str]], now: datetime) -> None:
    """A `delivery.updated` event for each recorded attempt (sent, failed, retrying), in the
    transaction that records it (gateway/eventlog.py). By studio, then job: two workers
    recording for the same studios take the studios' counter rows in one order."""
    if not outcomes:
        return
    places = {row.id: row for row in conn.execute(_JOB_PLACES, {"ids": [job.message_row_id for job, _ in outcomes]})}
    # A message erased meanwhile has no studio to tell; a notification to a profile (no
    # conversation, gateway/outbound/notifications.py) is nothing a client of the studio can look up.
    kept = [o for o in outcomes if o[0].message_row_id in places
            and places[o[0].message_row_id].conversation_id is not None]
    # A reply's delivery state is part of its conversation, so an app following `updated_since`
    # (docs/api.md) learns that a reply went out or failed. The conversations first, in id order,
    # then the studios' counters: the order the processor and the reply API take them in, so two
    # transactions never wait on each other in a circle.
    touched = sorted({places[job.message_row_id].conversation_id for job, _ in kept})
    if touched:
        conn.execute(update(CONVERSATION).where(CONVERSATION.c.id.in_(touched)).values(updated_at=now))
    for job, delivery in sorted(kept, key=lambda o: (places[o[0].message_row_id].studio_id, o[0].id)):
        place = places[job.message_row_id]
        record_event(conn, place.studio_id, DELIVERY_UPDATED, now, conversation_id=place.conversation_id,
                     message_id=job.message_row_id, job_id=job.id, delivery=delivery)


class _Flag:
    """A flag that also wakes whoever waits on `event` when it is set (a timer's callback)."""

    def __init__(self, event: asyncio.Event) -> None:
        self._set = False
        self._event = event

    def set(self) -> None:
        self._set = True
        self._event.set()

    def clear(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set


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


class Feed(Protocol):
    """Mail the outbox queues for itself at the start of each round, in its own transactions,
    so that it goes out in that round: the profiles' notifications, which the processor only
    notes while it threads (gateway/outbound/notifications.queue_told). Returns how many it
    queued; it must be repeatable and safe to run in several workers at once."""
    def __call__(self, engine: Engine, settings: Settings, now: datetime) -> int: ...


class Outbox:
    def __init__(self, engine: Engine, settings: Settings, *, late_bodies: Mapping[str, LateBodies],
                 feeds: Sequence[Feed] = (), transports: list[Transport] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        """`late_bodies`: the bodies rendered only at send time, by auto_kind (required, so that no
        outbox forgets them: gateway/runtime.LATE_BODIES); `feeds`: see Feed (gateway/runtime.OUTBOX_FEEDS)."""
        self.engine = engine
        self.late_bodies = dict(late_bodies)
        self.feeds = tuple(feeds)
        self.settings = settings
        self.secret = settings.secret()
        self.clock = clock
        self.renderer = Renderer()
        self.signer = load_signer(settings)
        self.transports = transports if transports is not None else make_transports(settings)
        self.lease = timedelta(seconds=settings.outbound_lease)
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Called from the event loop's thread (the reply API in the same process)."""
        self._wake.set()

    # -- database steps (run in a thread) --

    def claim(self, limit: int | None = None) -> list[Job]:
        with write_tx(self.engine) as conn:
            return self._claim(conn, limit or PER_CONNECTION * len(self.transports), self.clock())

    def _claim(self, conn: Connection, limit: int, now: datetime) -> list[Job]:
        rows = _CLAIM_JOBS.execute(conn, now=now, expired_before=now - self.lease, limit=limit).fetchall()
        if rows:
            _MESSAGE_SENDING.execute_many(conn, [{"message_row_id": r[1]} for r in rows])
        rows.sort()  # RETURNING promises no order; by id, roughly oldest first
        created = result_processor(conn, OUTBOUND_JOB.c.created_at)
        return [Job(job_id, message_row_id, attempts, created(created_at))
                for job_id, message_row_id, attempts, created_at in rows]

    def feed(self) -> int:
        """Run the feeds; how many mails they queued. A feed that fails is logged and tried
        again next round: what it feeds waits, what is queued already goes out."""
        queued = 0
        for feed in self.feeds:
            try:
                queued += feed(self.engine, self.settings, self.clock())
            except Exception:
                log.exception("outbox feed %s failed; trying again next round", getattr(feed, "__name__", feed))
        return queued

    def renew(self, held: list[tuple[int, int]]) -> None:
        """Extend the lease of the jobs this worker holds, as (job id, attempts of its claim)."""
        with write_tx(self.engine) as conn:
            _RENEW.execute_many(conn, [{"job_id": job_id, "attempts": attempts, "now": self.clock()}
                                       for job_id, attempts in held])

    def compose_all(self, jobs: list[Job]) -> list[OutgoingMail | SendResult]:
        with read_tx(self.engine) as conn:
            built = compose_many(conn, [job.message_row_id for job in jobs], self.settings, self.secret,
                                 self.renderer, self.signer, self.late_bodies)
        composed: list[OutgoingMail | SendResult] = []
        for job in jobs:
            mail = built[job.message_row_id]
            if isinstance(mail, Withdrawn):  # nothing left to tell: not sent, and no failure
                composed.append(SendResult(WITHDRAWN, str(mail)))
            elif isinstance(mail, Exception):  # a reply that cannot be built will not build next time either
                log.error("composing outbound message %s failed: %r", job.message_row_id, mail)
                # An address no relay can carry says why (the studio reads it); anything else is
                # ours to fix and shows only its kind, never internals.
                why = str(mail) if isinstance(mail, Undeliverable) else type(mail).__name__
                composed.append(SendResult("permanent", f"{COMPOSE_FAILED}: {why}"[:1000]))
            else:
                composed.append(mail)
        return composed

    def record(self, results: list[tuple[Job, SendResult]]) -> None:
        with write_tx(self.engine) as conn:
            self._record(conn, results, self.clock())

    def _record(self, conn: Connection, results: list[tuple[Job, SendResult]], now: datetime) -> None:
        log_attempts(results)
        sent = [job for job, result in results if result.kind == "sent"]
        OUTBOX.labels("sent").inc(len(sent))
        if sent:  # the common case, in two statements however many
            _JOB_SENT.execute_many(conn, [{"job_id": j.id, "now": now} for j in sent])
            _MESSAGE_SENT.execute_many(conn, [{"message_row_id": j.message_row_id, "now": now} for j in sent])
        outcomes: list[tuple[Job, str]] = [(job, "sent") for job in sent]
        for job, result in results:
            if result.kind == "sent":
                continue
            status, next_at, detail = "failed", None, result.detail
            if result.kind == WITHDRAWN:
                status = CANCELLED
            elif result.kind == "temporary":
                next_at = now + backoff(job.attempts)
                if next_at - job.created_at > timedelta(seconds=self.settings.outbound_retry_for):
                    detail = f"gave up after {job.attempts} attempts; last: {result.detail}"
                else:
                    status = "queued"
            delivery = status
            outcomes.append((job, {"queued": "retrying", CANCELLED: CANCELLED}.get(status, "failed")))
            OUTBOX.labels({"queued": "retried", CANCELLED: CANCELLED}.get(status, "failed")).inc()
            # claimed_at keeps when this attempt was made: /readyz tells from it whether the relay
            # was reachable at the last attempt (outbound/readiness.py). Only `sending` is a lease.
            conn.execute(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id == job.id).values(
                status=status, claimed_at=now, last_error=detail,
                next_attempt_at=next_at if next_at is not None else OUTBOUND_JOB.c.next_attempt_at))
            conn.execute(update(MESSAGE).where(MESSAGE.c.id == job.message_row_id).values(delivery=delivery))
            if status == "failed":
                log.warning("outbound job %d failed for good: %s", job.id, detail,
                            extra={"event": "delivery_failed", "job_id": job.id, "message_id": job.message_row_id})
        delivery_events(conn, outcomes, now)

    def _step(self, results: list[tuple[Job, SendResult]], want: int,
              ) -> tuple[list[Job], list[OutgoingMail | SendResult]]:
        """Record `results` and claim up to `want` more jobs in one transaction (one fsync
        instead of two: on SQLite the commit is most of either's cost), then compose them.

        If that transaction fails, the results are recorded alone, so a failing claim cannot
        leave sent replies `sending` (they would be sent again after the lease)."""
        now = self.clock()
        jobs: list[Job] = []
        try:
            with write_tx(self.engine) as conn:
                if results:
                    self._record(conn, results, now)
                if want:
                    jobs = self._claim(conn, want, now)
        except Exception:
            if not (results and want):
                raise
            log.exception("recording %d outbound results with a claim failed; recording them alone",
                          len(results))
            self.record(results)
            jobs = []
        return jobs, self.compose_all(jobs) if jobs else []

    # -- the loop --

    async def run_once(self) -> int:
        """Send every job that is due, until none is left; the number handled.

        Claiming and composing overlap sending: one task keeps the database up to date
        (claims the next jobs when a quarter of the window is left, recording the results
        that arrived meanwhile in the same commit) while a lane per relay connection sends.
        A stop claims nothing more; the lanes finish, and record, what was claimed. The feeds
        run first (see Feed)."""
        window = PER_CONNECTION * len(self.transports)
        refill, enough = window // 4, window  # claim at, record without waiting at
        work: deque[tuple[Job, OutgoingMail | SendResult]] = deque()
        answered: list[tuple[Job, SendResult]] = []
        keeper_wake, lanes_wake = asyncio.Event(), asyncio.Event()
        state = {"claiming": True, "lanes": len(self.transports), "handled": 0}
        loop = asyncio.get_running_loop()
        held: dict[int, int] = {}  # claimed and not yet recorded: job id -> attempts of our claim

        async def heartbeat() -> None:
            """Renews the lease of what this worker holds until the round ends (cancelled)."""
            while True:
                await asyncio.sleep(self.lease.total_seconds() / RENEWALS_PER_LEASE)
                if held:
                    try:
                        await asyncio.to_thread(self.renew, list(held.items()))
                    except Exception:  # the next beat tries again; the lease allows for misses
                        log.exception("renewing the lease of %d outbound jobs failed", len(held))

        async def lane(transport: Transport) -> None:
            try:
                while True:
                    if work:
                        job, mail = work.popleft()
                        if len(work) == refill:
                            keeper_wake.set()  # time to claim more
                        result = mail if isinstance(mail, SendResult) else await transport.send(mail)
                        answered.append((job, result))
                        if len(answered) == 1 or len(answered) >= enough or not state["claiming"]:
                            keeper_wake.set()  # start the recording clock, or record now
                    elif state["claiming"]:
                        lanes_wake.clear()
                        await lanes_wake.wait()
                    else:
                        return
            finally:
                state["lanes"] -= 1
                keeper_wake.set()

        async def keeper() -> None:
            deadline: asyncio.TimerHandle | None = None
            while True:
                if state["claiming"] and (self._stopping or not state["lanes"]):
                    state["claiming"] = False
                    lanes_wake.set()
                want = window - len(work) if state["claiming"] and len(work) <= refill else 0
                if not want and (not answered or (state["claiming"] and len(answered) < enough)):
                    if not answered and not state["lanes"]:
                        return
                    if answered and deadline is None:
                        # Results wait up to RECORD_WITHIN for a claim to share its commit.
                        deadline = loop.call_later(RECORD_WITHIN, record_now.set)
                    keeper_wake.clear()
                    if not record_now.is_set():
                        await keeper_wake.wait()
                    if not record_now.is_set():
                        continue
                if deadline is not None:
                    deadline.cancel()
                    deadline = None
                record_now.clear()
                results = answered[:]
                answered.clear()
                try:
                    jobs, composed = await asyncio.to_thread(self._step, results, want)
                except Exception:  # results stay `sending` and are claimed again after the lease
                    log.exception("outbox database step failed (%d results, claiming %d)", len(results), want)
                    jobs, composed = [], []
                for job, _ in results:  # recorded, or (failing) left to the lease: held no more
                    held.pop(job.id, None)
                held.update((job.id, job.attempts) for job in jobs)
                if want and not jobs:
                    state["claiming"] = False  # nothing more is due (or claiming fails): finish up
                    lanes_wake.set()
                work.extend(zip(jobs, composed))
                state["handled"] += len(jobs)
                lanes_wake.set()

        if self.feeds and not self._stopping:
            await asyncio.to_thread(self.feed)
        record_now = _Flag(keeper_wake)
        beating = asyncio.create_task(heartbeat())
        try:
            # Every task runs to its end, so a lane that fails cannot leave results unrecorded.
            outcomes = await asyncio.gather(keeper(), *(lane(t) for t in self.transports), return_exceptions=True)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return state["handled"]

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
