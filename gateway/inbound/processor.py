"""The pipeline's back half: claim stored mail, parse, thread, persist; park what fails.

Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL so several worker processes share the
queue without taking the same row; SQLite has one writer at a time, which serialises claims
by itself. A claimed row carries a lease: a processor that dies mid-way leaves it to be
claimed again after the lease, and a message that has crashed processing `max_attempts`
times is quarantined so it cannot loop forever (Mailman's shunt queue). Nothing is deleted:
the raw bytes stay, and `gateway quarantine retry` puts a parked message back. The one
exception is mail whose every studio was deleted after accepting it: an erased account's mail
must not be kept anywhere, so it is discarded with its bytes (gateway/inbound/threader.StudiosGone).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import Connection, Engine, bindparam, or_, select, update
from sqlalchemy.exc import OperationalError

from gateway.store.tables import BLOB
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import INBOUND
from gateway.inbound.mime import ParsedMessage
from gateway.store.models import utcnow
from gateway.events import Chunk, Reaction, announce, finish
from gateway.inbound.authentication import authenticate_claimed, load_tables
from gateway.inbound.intake import discard_inbound
from gateway.inbound.isolation import CHILD_DIED, TOO_LONG, Died, Overran, child_for_thread, parse_within
from gateway.settings import Settings
from gateway.metrics import HELD, PROCESSED
from gateway.inbound.records import ChunkLookups
from gateway.inbound.threader import Inbound, Outcome, StudiosGone, Unprocessable, lookup_keys, thread_message

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)


@dataclass
class Processed:
    inbound_id: int
    status: str                 # done | quarantined | pending (will be retried) | discarded (studios deleted)
    outcomes: list[Outcome]
    error: str | None = None


# Built once, like the threader's statements: a claim runs every 32 messages.
_CLAIMABLE = select(INBOUND.c.id, INBOUND.c.attempts, INBOUND.c.size).where(or_(
    INBOUND.c.status == "pending",
    (INBOUND.c.status == "processing") & (INBOUND.c.claimed_at < bindparam("b_lease_start")),
)).order_by(INBOUND.c.id).limit(bindparam("b_limit")).with_for_update(skip_locked=True)
_SET_ASIDE = update(INBOUND).where(INBOUND.c.id.in_(bindparam("b_ids", expanding=True))).values(
    status="quarantined", processed_at=bindparam("b_now"), error=bindparam("b_error"))
_CLAIM = update(INBOUND).where(INBOUND.c.id.in_(bindparam("b_ids", expanding=True))).values(
    status="processing", claimed_at=bindparam("b_now"), claimed_by=bindparam("b_by"), attempts=INBOUND.c.attempts + 1)
_LOAD = select(INBOUND.c.id, INBOUND.c.mail_from, INBOUND.c.rcpt_to, INBOUND.c.raw_sha256, BLOB.c.data).join(
    BLOB, BLOB.c.sha256 == INBOUND.c.raw_sha256).where(
    INBOUND.c.id.in_(bindparam("b_ids", expanding=True))).order_by(INBOUND.c.id)


def claimer(pid: int | None = None) -> str:
    """Who holds a claim: this host and a process on it (this one by default)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"[:100]


def claim(engine: Engine, settings: Settings, limit: int) -> list[Inbound]:
    now = utcnow()
    with write_tx(engine) as conn:
        rows = _within_bytes(conn.execute(_CLAIMABLE, {"b_lease_start": now - LEASE, "b_limit": limit}).all())
        if not rows:
            return []
        exhausted = [r.id for r in rows if r.attempts >= settings.process_max_attempts]
        if exhausted:
            conn.execute(_SET_ASIDE, {"b_ids": exhausted, "b_now": now, "b_error":
                                      f"processing failed {settings.process_max_attempts} times; set aside"})
        ids = [r.id for r in rows if r.id not in set(exhausted)]
        if not ids:
            return []
        conn.execute(_CLAIM, {"b_ids": ids, "b_now": now, "b_by": claimer()})
        loaded = conn.execute(_LOAD, {"b_ids": ids}).all()
    return [Inbound(id=r.id, mail_from=r.mail_from, rcpt_to=json.loads(r.rcpt_to), raw=r.data,
                    raw_sha256=r.raw_sha256) for r in loaded]


CLAIM_BYTES = 32 * 1024 * 1024


def _within_bytes(rows: Sequence[Any]) -> Sequence[Any]:
    """The claimable rows up to CLAIM_BYTES of raw mail (at least one): a pass holds all of
    its mail in memory, and a claim of 128 large messages would hold gigabytes. The rest stay
    pending for the next pass (their row locks end with the claim's transaction)."""
    total = 0
    for count, row in enumerate(rows):
        total += row.size or 0
        if total > CLAIM_BYTES and count:
            return rows[:count]
    return rows


def process_pending(engine: Engine, settings: Settings, reactions: Sequence[Reaction], *, limit: int = 32,
                    chunk: int = 16) -> list[Processed]:
    """Process up to `limit` stored messages; returns what happened to each. Every message
    stored is announced to `reactions` in its own transaction (gateway/events.py).

    Parsing happens outside any transaction, and results are written `chunk` messages per
    transaction, so the processor never holds SQLite's single write lock for long: the
    acceptor, which has senders waiting for their `250`, gets it back within milliseconds.
    A chunk of 16 holds it about 3 ms (median, 4 KB mails), less than 8 did before the
    threader's statements went to the driver (5 ms); half the commits (each an fsync in WAL
    mode with synchronous=FULL) save a tenth of the processor's CPU.
    """
    claimed = claim(engine, settings, limit)
    if not claimed:
        return []
    secret = settings.secret()
    results: list[Processed] = []
    # Parsed in a child process under the time budget (gateway/inbound/isolation.py), which
    # parses the next chunk while this one is threaded here.
    outcomes = parse_within([item.raw for item in claimed], settings.process_time_budget)
    try:
        for start in range(0, len(claimed), chunk):
            try:
                parsed = [(item, next(outcomes)) for item in claimed[start:start + chunk]]
            except BaseException:
                release(engine, [item.id for item in claimed[start:]])  # no parser to be had: no attempt counted
                raise
            pairs = [(item, o) for item, o in parsed if isinstance(o, ParsedMessage)]
            failed = [(item, o) for item, o in parsed if not isinstance(o, ParsedMessage)]
            # Who sent it (SPF, DKIM, DMARC), checked side by side for the chunk; never raises.
            authenticate_claimed(engine, settings, [item for item, _ in pairs], [o for _, o in pairs])
            try:
                if failed:
                    results.extend(_set_aside_unparsed(engine, settings, failed))
                if pairs:
                    results.extend(_persist(engine, settings, secret, reactions, pairs))
            except OperationalError:
                # The database is locked or gone: hand the rest back without counting an attempt,
                # so an outage never pushes healthy mail into the quarantine. (Only rows still
                # "processing" go back; what was recorded stays.)
                release(engine, [item.id for item in claimed[start:]])
                raise
    finally:
        outcomes.close()  # stopped early: the parser child is replaced, not left mid-batch
    _count(results)
    return results


def _count(results: list[Processed]) -> None:
    """The metrics of a pass, once its transactions are committed (gateway/metrics.py)."""
    for result in results:
        PROCESSED.labels(result.status).inc()
        for outcome in result.outcomes:
            if outcome.threaded is not None and not outcome.threaded.visible:
                HELD.labels("automatic" if outcome.threaded.automatic else "mail").inc()


def _set_aside_unparsed(engine: Engine, settings: Settings,
                        failed: list[tuple[Inbound, Overran | Died]]) -> list[Processed]:
    """Record the messages whose parse overran its budget or lost its process.

    Over the budget is quarantined at once: the same bytes would take as long again, and each
    try holds up the mail behind it for the whole budget. A parser that died (the kernel's OOM
    killer, a crash in C) is an attempt like any crash, retried until GATEWAY_PROCESS_MAX_ATTEMPTS.
    """
    results: list[Processed] = []
    now = utcnow()
    with write_tx(engine) as conn:
        attempts = dict(conn.execute(_ATTEMPTS, {"ids": [item.id for item, _ in failed]}).all())
        for item, outcome in failed:
            if isinstance(outcome, Overran):
                status, error = "quarantined", f"{TOO_LONG} (more than {outcome.budget:g} s to parse)"
            else:
                final = attempts.get(item.id, 1) >= settings.process_max_attempts
                status, error = ("quarantined" if final else "pending"), f"{CHILD_DIED} (exit code {outcome.exitcode})"
            conn.execute(_SET_STATUS, {"b_id": item.id, "b_status": status, "b_error": error,
                                       "b_processed_at": now if status == "quarantined" else None})
            results.append(Processed(item.id, status, [], error))
    log_processed(results)
    return results


def release(engine: Engine, ids: list[int]) -> None:
    """Put claimed rows back to pending at once instead of waiting out the lease."""
    try:
        with write_tx(engine) as conn:
            conn.execute(update(INBOUND).where(INBOUND.c.id.in_(ids), INBOUND.c.status == "processing")
                         .values(status="pending", attempts=INBOUND.c.attempts - 1, claimed_at=None))
    except OperationalError:
        log.warning("could not release %d claimed message(s); they return after the lease", len(ids))


def release_claims_of(engine: Engine, holder: str) -> int:
    """Put back what a worker process that died held, without waiting out the lease; the count.

    Only for a process known to be dead (`gateway serve` learns it from the child's exit): a
    live one would go on with its batch. Its attempt stays counted, so a message that kills
    its worker every time is still set aside after GATEWAY_PROCESS_MAX_ATTEMPTS claims. A chunk
    it committed is done already; the rest is threaded again from the start, in one place.
    """
    with write_tx(engine) as conn:
        result = conn.execute(update(INBOUND).where(INBOUND.c.status == "processing",
                                                    INBOUND.c.claimed_by == holder)
                              .values(status="pending", claimed_at=None, claimed_by=None))
    return result.rowcount or 0


class _Retry(Exception):
    """A message of an optimistic chunk failed: redo the chunk with one savepoint each."""


def _persist(engine: Engine, settings: Settings, secret: bytes, reactions: Sequence[Reaction],
             pairs: list[tuple[Inbound, ParsedMessage]]) -> list[Processed]:
    """Thread one chunk in one transaction.

    Optimistic first: no savepoints (two round trips per message saved on PostgreSQL). If any
    message fails in a way that may have left half its rows, the chunk is rolled back and redone
    with a savepoint per message, so the failure is recorded against that message alone.
    """
    if len(pairs) > 1:
        try:
            return _persist_chunk(engine, settings, secret, reactions, pairs, isolate=False)
        except _Retry:
            pass
    return _persist_chunk(engine, settings, secret, reactions, pairs, isolate=True)


def _persist_chunk(engine: Engine, settings: Settings, secret: bytes, reactions: Sequence[Reaction],
                   pairs: list[tuple[Inbound, ParsedMessage]], *, isolate: bool) -> list[Processed]:
    results: list[Processed] = []
    studios: dict[str, int | None] = {}
    chunk = Chunk(studio_ids=studios, batched=not isolate)
    with write_tx(engine) as conn:
        attempts = dict(conn.execute(_ATTEMPTS, {"ids": [item.id for item, _ in pairs]}).all())
        # Asked once for the chunk; not when redoing it message by message, since a savepoint
        # rolled back would leave the lookups remembering rows that are gone.
        lookups = None if isolate else _prefetch(conn, settings, pairs, studios)
        for item, message in pairs:
            now = utcnow()
            savepoint = conn.begin_nested() if isolate else None
            try:
                outcomes = thread_message(conn, item, message, settings, secret, studios, lookups)
                for outcome in outcomes:
                    if outcome.threaded is not None:
                        announce(conn, outcome.threaded, settings, chunk, reactions)
                if savepoint is not None:
                    savepoint.commit()
            except StudiosGone as exc:  # raised before anything of the message was written
                if savepoint is not None:
                    savepoint.rollback()
                discard_inbound(conn, item.id)
                results.append(Processed(item.id, "discarded", [], str(exc)))
                continue
            except Unprocessable as exc:  # raised before anything of the message was written
                if savepoint is not None:
                    savepoint.rollback()
                results.append(Processed(item.id, "quarantined", [], str(exc)))
                conn.execute(_SET_STATUS, {"b_id": item.id, "b_status": "quarantined", "b_processed_at": now,
                                           "b_error": str(exc)[:2000]})
                continue
            except OperationalError:
                raise
            except Exception as exc:
                if savepoint is None:
                    raise _Retry() from exc
                savepoint.rollback()
                error = f"{type(exc).__name__}: {exc}"[:2000]
                final = attempts.get(item.id, 1) >= settings.process_max_attempts
                status = "quarantined" if final else "pending"
                results.append(Processed(item.id, status, [], error))
                conn.execute(_SET_STATUS, {"b_id": item.id, "b_status": status, "b_error": error,
                                           "b_processed_at": now if final else None})
                log.warning("inbound %d failed (%s): %s", item.id, status, error, exc_info=True)
                continue
            results.append(Processed(item.id, "done", outcomes))
        try:
            finish(conn, chunk)
        except OperationalError:
            raise
        except Exception as exc:  # not one message's fault: redo the chunk message by message
            raise _Retry() from exc
        done = [r.inbound_id for r in results if r.status == "done"]
        if done:
            conn.execute(_SET_DONE, {"b_ids": done, "b_processed_at": utcnow()})
    log_processed(results)  # once committed: a rolled-back chunk is redone, and logged then
    return results


def log_processed(results: Sequence[Processed]) -> None:
    """One line for each processed message: where it was threaded and by which rule, or why it
    was set aside. Reasons are ours (a parser's or threader's exception text), never the mail's
    content; an address in one is masked below DEBUG by gateway/logs.py."""
    for result in results:
        if result.status == "done":
            for outcome in result.outcomes:
                log.info("processed inbound %d: studio %d, conversation %s, message %s, rule %s", result.inbound_id,
                         outcome.studio_id, outcome.conversation_id, outcome.message_id, outcome.rule,
                         extra={"event": "processed", "inbound_id": result.inbound_id,
                                "studio_id": outcome.studio_id, "conversation_id": outcome.conversation_id,
                                "message_id": outcome.message_id, "rule": outcome.rule})
        else:
            level = logging.WARNING if result.status == "pending" else logging.INFO
            log.log(level, "inbound %d %s: %s", result.inbound_id,
                    "failed, will retry" if result.status == "pending" else result.status, result.error,
                    extra={"event": "retry" if result.status == "pending" else result.status,
                           "inbound_id": result.inbound_id, "reason": result.error})


def _prefetch(conn: Connection, settings: Settings, pairs: list[tuple[Inbound, ParsedMessage]],
              studios: dict[str, int | None]) -> ChunkLookups:
    lookups = ChunkLookups()
    keys = []
    for item, message in pairs:
        try:
            keys.extend(lookup_keys(conn, item, message, settings, studios))
        except OperationalError:
            raise
        except Exception:  # thread_message meets it again and records it against this message
            continue
    try:
        lookups.prefetch(conn, keys)
    except OperationalError:
        raise
    except Exception as exc:  # the transaction may be unusable (PostgreSQL): redo without lookups
        raise _Retry() from exc
    return lookups


_ATTEMPTS = select(INBOUND.c.id, INBOUND.c.attempts).where(INBOUND.c.id.in_(bindparam("ids", expanding=True)))
_SET_STATUS = update(INBOUND).where(INBOUND.c.id == bindparam("b_id")).values(
    status=bindparam("b_status"), processed_at=bindparam("b_processed_at"), error=bindparam("b_error"))
_SET_DONE = update(INBOUND).where(INBOUND.c.id.in_(bindparam("b_ids", expanding=True))).values(
    status="done", processed_at=bindparam("b_processed_at"), error=None)


def drain(engine: Engine, settings: Settings, reactions: Sequence[Reaction]) -> list[Processed]:
    """Process until nothing is pending (tests and `gateway quarantine retry`)."""
    done: list[Processed] = []
    while batch := process_pending(engine, settings, reactions):
        done.extend(batch)
    return done


_NEWEST_ARRIVAL = select(INBOUND.c.received_at).order_by(INBOUND.c.id.desc()).limit(1)
_OLDEST_PENDING = select(INBOUND.c.received_at).where(INBOUND.c.status == "pending").order_by(INBOUND.c.id).limit(1)
ARRIVING = timedelta(milliseconds=100)


def should_defer(engine: Engine, settings: Settings, now: datetime | None = None) -> bool:
    """Whether to leave waiting mail alone for a moment because more is arriving right now.

    Senders wait for their `250` with a connection open; the studio can wait a few seconds
    for the thread to appear. So while mail streams in, the CPU (and SQLite's one write lock)
    go to acceptance, until the oldest waiting message has waited GATEWAY_PROCESS_MAX_DEFER
    seconds: from then on the backlog is worked off however busy the receivers are.
    """
    if settings.process_max_defer <= 0:
        return False
    now = now or utcnow()
    with read_tx(engine) as conn:
        oldest = conn.execute(_OLDEST_PENDING).scalar()
        if oldest is None or now - oldest >= timedelta(seconds=settings.process_max_defer):
            return False
        newest = conn.execute(_NEWEST_ARRIVAL).scalar()
    return newest is not None and now - newest < ARRIVING


# PostgreSQL: messages a pass claims, and a chunk's (one transaction). The parser child parses
# ahead while this thread files chunks, but sat idle while a pass claimed and while its last
# chunk was filed; and each chunk costs about ten round trips of its own (claim lookups,
# prefetch, the events, BEGIN, COMMIT). A claim takes no lock others wait for (SKIP LOCKED),
# and a chunk takes its studios' event counters only at its end (gateway/eventlog.record_later),
# so larger ones hold nobody up. SQLite keeps 32 and 16: there every transaction holds the
# one write lock the acceptor's senders wait behind.
PG_CLAIM = 128
PG_CHUNK = 64
# PostgreSQL: processor threads in a worker process, each with its parser child. A thread
# waits on round trips and its child about half the time; a second one fills those waits and
# parses on the other core (bench/smtp_ingest.py --topology procfile, end to end: 0.28-0.30×
# the baseline with one, 0.33-0.35× with two, 20×1). Claims (SKIP LOCKED) keep them apart,
# and a chunk takes its studios' event counters only at its end, so they seldom wait on each
# other. SQLite keeps one: its one write lock would only be fought over.
PG_THREADS = 2


class ProcessorThread:
    """Runs the processor beside the servers (in PG_THREADS threads on PostgreSQL); woken at
    once when the acceptor stores mail.

    `on_idle` is called (in this thread) when a pass finds nothing left after passes that
    threaded mail: the end of a burst, when what waited for intake may go (the worker wakes its
    outbox, which queues the notifications noted meanwhile: gateway/outbound/notifications.py)."""

    def __init__(self, engine: Engine, settings: Settings, reactions: Sequence[Reaction],
                 on_idle: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.reactions = tuple(reactions)
        self.on_idle = on_idle
        self._stop = threading.Event()
        postgres = engine.dialect.name == "postgresql"
        count = PG_THREADS if postgres else 1
        self._wakes = [threading.Event() for _ in range(count)]  # one each: a wake-up is for all
        self._threads = [threading.Thread(target=self._run, args=(wake,), name=f"processor-{n}", daemon=True)
                         for n, wake in enumerate(self._wakes)]
        self._started = threading.Event()
        self._running = 0
        self.processed = 0
        self._idle = threading.Condition()
        self._claim, self._chunk = (PG_CLAIM, PG_CHUNK) if postgres else (32, 16)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        for wake in self._wakes:
            wake.set()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout=30)

    def wait_started(self, timeout: float = 120.0) -> bool:
        """Until every thread's parser child runs and the lookup tables are loaded (`gateway
        serve`'s worker children say they are ready then)."""
        return self._started.wait(timeout)

    def _run(self, wake: threading.Event) -> None:
        # The parser child is started now, so the first mail does not wait for its imports,
        # nor for the public suffix list (0.2 s, and once per process).
        if self.settings.process_time_budget > 0:
            try:
                child_for_thread().start()
            except Exception:
                log.exception("the parser process did not start; the first batch will try again")
        try:
            load_tables()
        except Exception:
            log.exception("the public suffix list did not load; the first check will try again")
        with self._idle:
            self._running += 1
            if self._running == len(self._threads):
                self._started.set()
        try:
            self._loop(wake)
        finally:
            child_for_thread().stop()

    def _loop(self, wake: threading.Event) -> None:
        worked = False
        while not self._stop.is_set():
            try:
                if should_defer(self.engine, self.settings):
                    self._stop.wait(ARRIVING.total_seconds() / 2)
                    continue
                batch = process_pending(self.engine, self.settings, self.reactions, limit=self._claim,
                                        chunk=self._chunk)
            except Exception:
                log.exception("processor pass failed; will retry")
                batch = []
            if batch:
                with self._idle:
                    self.processed += len(batch)
                    self._idle.notify_all()
                worked = True
                continue
            if worked and self.on_idle is not None:
                worked = False
                try:
                    self.on_idle()
                except Exception:
                    log.exception("the processor's idle hook failed")
            wake.wait(self.settings.poll_interval)
            wake.clear()

    def wait_processed(self, count: int, timeout: float = 30.0) -> bool:
        """Block until at least `count` messages were processed in total (tests, benchmarks)."""
        with self._idle:
            return self._idle.wait_for(lambda: self.processed >= count, timeout=timeout)
