"""The one ingest pipeline's front half: every accepted message is durably stored here first.

SMTP and the provider webhooks both call `Acceptor.accept`. It answers only after the raw
bytes and the envelope are committed (fsync'd), and it does so in group commits: all messages
that arrive while one transaction is being written share the next transaction and its single
fsync. That is what lets acceptance keep pace with a do-nothing server while every `250` is
durable. Parsing and threading happen afterwards (see `processor.py`), as in Mailman, Zulip
and Action Mailbox, so a message that cannot be parsed is never refused for that.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import Connection, Engine, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.batching import next_batch
from gateway.blobs import blob_store
from gateway.conversations import normalize_subject, parse_studio_address, verify_reply_token
from gateway.db import (InlineTx, begin_inline, bind_processor, driver_execute, is_busy, is_sqlite, make_engine,
                        sqlite_write_lock, write_tx)
from gateway.headers import HeaderPeek, peek
from gateway.models import Conversation, Guest, InboundMail, Message, Studio, utcnow
from gateway.settings import Settings

log = logging.getLogger(__name__)

INBOUND = InboundMail.__table__  # type: ignore[attr-defined]
STUDIO = Studio.__table__  # type: ignore[attr-defined]
GUEST = Guest.__table__  # type: ignore[attr-defined]
CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
MESSAGE = Message.__table__  # type: ignore[attr-defined]


class TemporaryFailure(Exception):
    """Storage is unavailable: the sender must keep the message and retry (451 / 503)."""


class FloodLimited(Exception):
    """The sender opened too many new conversations at a studio this hour (450 4.7.1)."""


class Replayed(Exception):
    """A webhook request's one-time token was already used with a stored message."""


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    peer: str = ""
    source: str = "smtp"
    nonce: str | None = None  # a provider's one-time request token, recorded with the message


@dataclass
class _Pending:
    raw: bytes
    envelope: Envelope
    future: asyncio.Future[int] = field(repr=False)


# Built once: constructing SQLAlchemy statements costs more than SQLite takes to run them,
# and this runs while every sender in a group commit waits for its `250`.
_INSERT_ONE = insert(INBOUND).returning(INBOUND.c.id)
_INSERT_MANY = insert(INBOUND).returning(INBOUND.c.id, sort_by_parameter_order=True)
_STUDIOS = select(STUDIO.c.slug, STUDIO.c.id).where(STUDIO.c.slug.in_(bindparam("slugs", expanding=True)))
_OPENED = (
    select(GUEST.c.studio_id, GUEST.c.email, func.count(CONVERSATION.c.id).label("opened"))
    # studio_id in the join lets ix_conversation_guest_created (studio, guest, created) serve
    # it; without it the database scanned every conversation once per group commit.
    .join(CONVERSATION, (CONVERSATION.c.studio_id == GUEST.c.studio_id) & (CONVERSATION.c.guest_id == GUEST.c.id)
          & (CONVERSATION.c.created_at >= bindparam("since")))
    .where(GUEST.c.studio_id.in_(bindparam("studio_ids", expanding=True)),
           GUEST.c.email.in_(bindparam("emails", expanding=True)))
    .group_by(GUEST.c.studio_id, GUEST.c.email)
)


class StudioIds:
    """slug → studio id for the flood guard, cached briefly by the acceptor (one batch at a time).

    Studios change rarely and this lookup ran in every group commit; a studio created a moment
    ago is looked up at once (only hits are cached), and a stale id for a few seconds after a
    deletion only affects the flood brake, never where mail is filed.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._known: dict[str, tuple[int, float]] = {}

    def lookup(self, conn: Connection, slugs: set[str]) -> dict[str, int]:
        now = time.monotonic()
        found: dict[str, int] = {}
        missing: list[str] = []
        for slug in slugs:
            hit = self._known.get(slug)
            if hit is not None and hit[1] > now:
                found[slug] = hit[0]
            else:
                missing.append(slug)
        if missing:
            for slug, studio_id in conn.execute(_STUDIOS, {"slugs": missing}).all():
                found[slug] = studio_id
                self._known[slug] = (studio_id, now + self.ttl)
        return found


def store_batch(conn: Connection, items: list[tuple[bytes, Envelope]], settings: Settings,
                secret: bytes, studio_ids: StudioIds | None = None) -> list[int | Exception]:
    """Store raw messages inside the caller's transaction; per item an inbound id or FloodLimited.

    A handful of statements per batch, not per message: this runs while every sender in the
    batch waits for its `250`.
    """
    heads = [peek(raw) for raw, _ in items]
    replayed = _replayed(items)
    flooded = _flooded(conn, items, heads, settings, secret, studio_ids or StudioIds()) - replayed
    keep = [i for i in range(len(items)) if i not in flooded and i not in replayed]
    ids: list[int] = []
    if keep:
        now = utcnow()
        digests = blob_store.put_many(conn, [items[i][0] for i in keep])
        rows = [{"received_at": now, "source": items[i][1].source, "peer": items[i][1].peer[:200],
                 "mail_from": items[i][1].mail_from[:320], "rcpt_to": json.dumps(items[i][1].rcpt_tos),
                 "raw_sha256": digest, "size": len(items[i][0]), "status": "pending", "attempts": 0,
                 "nonce": items[i][1].nonce}
                for i, digest in zip(keep, digests)]
        if conn.dialect.name == "sqlite":
            ids = _insert_inbound_sqlite(conn, rows)
        elif len(rows) == 1:
            ids = [conn.execute(_INSERT_ONE, rows[0]).scalar_one()]
        else:
            ids = list(conn.execute(_INSERT_MANY, rows).scalars())
    stored = dict(zip(keep, ids))
    return [stored[i] if i in stored else Replayed() if i in replayed else FloodLimited(heads[i].from_email)
            for i in range(len(items))]


_INBOUND_COLUMNS = ("received_at", "source", "peer", "mail_from", "rcpt_to", "raw_sha256", "size", "status",
                    "attempts", "nonce")


def _insert_inbound_sqlite(conn: Connection, rows: list[dict[str, object]]) -> list[int]:
    """One multi-row INSERT … RETURNING through the driver: the acceptor's hottest statement.

    SQLAlchemy's insertmanyvalues costs more CPU than SQLite takes to run it. Ids are handed
    out in VALUES order (max(rowid)+1 per row, under the write lock this transaction holds),
    so the returned ids sorted ascending line up with `rows`, as SQLAlchemy's own sorting of
    an autoincrement key assumes.
    """
    received = bind_processor(conn, INBOUND.c.received_at)(rows[0]["received_at"])
    ids: list[int] = []
    per_row = ", ".join("?" * len(_INBOUND_COLUMNS))
    for start in range(0, len(rows), 500):  # SQLite allows 32766 parameters per statement
        chunk = rows[start:start + 500]
        sql = (f"INSERT INTO inbound_mail ({', '.join(_INBOUND_COLUMNS)}) VALUES "
               + ", ".join(f"({per_row})" for _ in chunk) + " RETURNING id")
        params = [received if name == "received_at" else row[name] for row in chunk for name in _INBOUND_COLUMNS]
        ids.extend(sorted(r[0] for r in driver_execute(conn, sql, params).fetchall()))
    return ids


def _replayed(items: list[tuple[bytes, Envelope]]) -> set[int]:
    """Indexes of items that repeat a one-time token already used earlier in the batch.

    A token used in an earlier transaction makes the insert collide on inbound_mail's unique
    (source, nonce) index instead (replays are rare, so the common case costs nothing extra);
    the Acceptor then stores the batch item by item and answers `Replayed` for that one.
    """
    seen: set[tuple[str, str]] = set()
    replayed: set[int] = set()
    for index, (_, envelope) in enumerate(items):
        if envelope.nonce is not None:
            key = (envelope.source, envelope.nonce)
            if key in seen:
                replayed.add(index)
            seen.add(key)
    return replayed


def _flooded(conn: Connection, items: list[tuple[bytes, Envelope]], heads: list[HeaderPeek],
             settings: Settings, secret: bytes, studio_ids: StudioIds) -> set[int]:
    """Indexes of items that would open one new conversation too many; replies always pass.

    One query finds the senders of this batch who opened conversations at its studios in the
    last hour (through the unique guest index, so its cost does not grow with the studio's
    traffic). Conversations of messages accepted but not yet threaded are not counted: the
    guard is a brake on floods, not an exact quota; messages of the batch itself are.
    """
    wanted: list[tuple[int, str, str]] = []  # (item index, slug, sender) for non-reply-address mail
    for index, ((_, envelope), head) in enumerate(zip(items, heads)):
        sender = head.from_email or envelope.mail_from.lower()
        if not sender:
            continue
        for rcpt in envelope.rcpt_tos:
            address = parse_studio_address(rcpt, settings.mail_domain)
            if address is not None:
                wanted.append((index, address.slug, sender))
    if not wanted:
        return set()
    studios = studio_ids.lookup(conn, {slug for _, slug, _ in wanted})
    if not studios:
        return set()
    opened = _opened(conn, list(set(studios.values())), list({sender for _, _, sender in wanted}),
                     utcnow() - timedelta(hours=1))
    flooded: set[int] = set()
    for index, slug, sender in wanted:
        studio_id = studios.get(slug)
        if studio_id is None or index in flooded:
            continue
        rcpt_details = [a.detail for a in (parse_studio_address(r, settings.mail_domain)
                                           for r in items[index][1].rcpt_tos) if a and a.slug == slug]
        if any(d and verify_reply_token(secret, studio_id, d) is not None for d in rcpt_details):
            continue
        key = (studio_id, sender)
        if opened.get(key, 0) < settings.flood_max_new_per_hour:
            opened[key] = opened.get(key, 0) + 1  # this message may open one more
            continue
        if not _looks_like_reply(conn, studio_id, sender, heads[index], settings):
            flooded.add(index)
    return flooded


def _opened(conn: Connection, studio_ids: list[int], emails: list[str], since: datetime) -> dict[tuple[int, str], int]:
    """Conversations each (studio, sender) opened since `since`.

    On SQLite the statement goes to the driver: SQLAlchemy re-renders an expanding IN on every
    execution, which cost more than the query (once per group commit, while senders wait).
    """
    if conn.dialect.name != "sqlite":
        rows = conn.execute(_OPENED, {"studio_ids": studio_ids, "emails": emails, "since": since})
        return {(row.studio_id, row.email): row.opened for row in rows}
    sql = ("SELECT guest.studio_id, guest.email, count(conversation.id) FROM guest "
           "JOIN conversation ON conversation.studio_id = guest.studio_id AND conversation.guest_id = guest.id "
           "AND conversation.created_at >= ? "
           f"WHERE guest.studio_id IN ({', '.join('?' * len(studio_ids))}) "
           f"AND guest.email IN ({', '.join('?' * len(emails))}) GROUP BY guest.studio_id, guest.email")
    params = [bind_processor(conn, CONVERSATION.c.created_at)(since), *studio_ids, *emails]
    return {(studio_id, email): count for studio_id, email, count in driver_execute(conn, sql, params).fetchall()}


def _looks_like_reply(conn: Connection, studio_id: int, sender: str, head: HeaderPeek,
                      settings: Settings) -> bool:
    ids = head.reply_ids[:100]
    if ids and conn.execute(
        select(MESSAGE.c.id).where(MESSAGE.c.studio_id == studio_id, MESSAGE.c.message_id.in_(ids)).limit(1)
    ).first():
        return True
    key = normalize_subject(head.subject)
    since = utcnow() - timedelta(days=settings.subject_fallback_days)
    return conn.execute(
        select(CONVERSATION.c.id).join(GUEST, CONVERSATION.c.guest_id == GUEST.c.id)
        .where(CONVERSATION.c.studio_id == studio_id, GUEST.c.email == sender,
               CONVERSATION.c.subject_key == key, CONVERSATION.c.last_message_at >= since).limit(1)
    ).first() is not None


PG_COMMITS_IN_FLIGHT = 1


class Acceptor:
    """Group-commit writer shared by all receivers in one process.

    On SQLite one writer thread owns the write transactions, so there is never more than one
    writer from this process. On PostgreSQL up to PG_COMMITS_IN_FLIGHT group commits run at
    once, each on its own connection: one alone left the process waiting on round trips.
    """

    def __init__(self, engine: Engine, settings: Settings, *, max_batch: int = 256,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.secret = settings.secret()
        self.max_batch = max_batch
        self.on_stored = on_stored
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # SQLite takes one writer at a time; PostgreSQL overlaps a few group commits.
        self._in_flight = 1 if is_sqlite(engine) else PG_COMMITS_IN_FLIGHT
        self._executor = ThreadPoolExecutor(max_workers=self._in_flight, thread_name_prefix="acceptor")
        self._busy_budget = settings.db_busy_timeout
        self._studio_ids = StudioIds()
        # On SQLite a group commit is a few hundred microseconds of statements and one fsync.
        # Running the statements in the writer thread cost more in GIL hand-offs between the
        # two threads (about ten per batch, each a context switch) than it saved, so they run
        # on the loop and only the commit, which waits on the disk without the GIL, goes to
        # the thread (bench/webhook_ingest.py: ~20 % more requests/s). If another process holds
        # the lock, the whole batch goes to the thread to wait there. PostgreSQL statements are
        # network round trips: always off the loop.
        self._inline = is_sqlite(engine)
        self.commits = 0    # group commits written, and the messages they carried: their ratio
        self.committed = 0  # is the batching that keeps acceptance cheap (logged at stop)
        self._write_engine = engine
        self._lock = sqlite_write_lock(engine)
        if is_sqlite(engine):
            # SQLite's own busy handler sleeps up to 100 ms between tries, far longer than the
            # few milliseconds another process (the worker) holds the write lock; senders would
            # wait for nothing. This writer connection gives up at once and retries every ms.
            self._write_engine = make_engine(str(engine.url), busy_timeout=0, pool_size=1)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="acceptor")

    async def stop(self, timeout: float = 10.0) -> None:
        """Store everything already handed over, answer it, then stop; later arrivals get 451."""
        if self._task and self._queue is not None:
            self._stopping = True
            await self._queue.put(None)  # FIFO: every message queued before it is written first
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except asyncio.TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None and not item.future.done():
                    item.future.set_exception(TemporaryFailure("shutting down"))
        self._executor.shutdown(wait=True)
        if self.commits:
            log.info("acceptor: %d messages in %d group commits (%.1f per commit)",
                     self.committed, self.commits, self.committed / self.commits)
        if self._write_engine is not self.engine:
            self._write_engine.dispose()

    async def accept(self, raw: bytes, envelope: Envelope) -> int:
        """The inbound id once committed; raises TemporaryFailure or FloodLimited."""
        if self._queue is None:
            raise RuntimeError("Acceptor.start() was not awaited")
        if self._stopping:
            raise TemporaryFailure("shutting down")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(raw, envelope, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self._in_flight)
        writing: set[asyncio.Task[None]] = set()
        while True:
            batch = await next_batch(self._queue, self.max_batch)
            if batch is None:  # stop: everything queued before it has been written
                if writing:
                    await asyncio.gather(*writing)
                return
            if self._inline:
                await self._write_inline(loop, batch)
                continue
            # PostgreSQL: a group commit is a few network round trips and a WAL flush during
            # which this process would sit idle; a few in flight on their own connections keep
            # the database busy (it orders concurrent commits itself).
            await slots.acquire()
            task = asyncio.create_task(self._write_off_loop(loop, batch, slots))
            writing.add(task)
            task.add_done_callback(writing.discard)

    async def _write_inline(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            prepared = self._prepare(batch)
            if prepared is not None:
                tx, results = prepared
                await tx.commit(loop, self._executor)
            else:
                results = await loop.run_in_executor(self._executor, self._write, batch)
        except Exception as exc:  # database or disk trouble: nothing of the batch was committed
            self._failed(batch, exc)
            return
        self._answer(batch, results)

    async def _write_off_loop(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending],
                              slots: asyncio.Semaphore) -> None:
        try:
            results = await loop.run_in_executor(self._executor, self._write, batch)
        except Exception as exc:  # database trouble: nothing of the batch was committed
            self._failed(batch, exc)
            return
        finally:
            slots.release()
        self._answer(batch, results)

    def _failed(self, batch: list[_Pending], exc: Exception) -> None:
        log.warning("storing %d message(s) failed, answering temporary failure: %s",
                    len(batch), type(exc).__name__)
        log.debug("store failure detail", exc_info=True)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(TemporaryFailure(type(exc).__name__))

    def _answer(self, batch: list[_Pending], results: list[int | Exception]) -> None:
        self.commits += 1
        self.committed += len(batch)
        for item, result in zip(batch, results):
            if item.future.done():  # the client went away; the message is stored regardless
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        if self.on_stored and any(not isinstance(r, Exception) for r in results):
            self.on_stored()

    def _prepare(self, batch: list[_Pending]) -> tuple[InlineTx, list[int | Exception]] | None:
        """SQLite: run the batch's statements on the loop, leaving only the commit to the writer
        thread; None when the thread must do it all (a lock is held, or one message upsets the
        database). The lock is the one the process's other writers (the processor and outbox
        threads of `gateway serve`) queue on: writing past it, they met SQLite's busy handler,
        which sleeps up to 100 ms between tries."""
        assert self._lock is not None
        tx = begin_inline(self._write_engine, self._lock)
        if tx is None:
            return None
        try:
            return tx, store_batch(tx.conn, [(p.raw, p.envelope) for p in batch], self.settings,
                                   self.secret, self._studio_ids)
        except OperationalError as exc:
            tx.abandon()
            if is_busy(exc):
                return None
            raise
        except Exception:
            tx.abandon()
            return None

    def _store(self, items: list[tuple[bytes, Envelope]]) -> list[int | Exception]:
        deadline = time.monotonic() + self._busy_budget
        delay = 0.0005
        while True:
            try:
                with write_tx(self._write_engine) as conn:
                    return store_batch(conn, items, self.settings, self.secret, self._studio_ids)
            except OperationalError as exc:
                if not is_busy(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)  # another writer holds SQLite's lock for a few ms: try again soon
            delay = min(delay * 2, 0.004)

    def _write(self, batch: list[_Pending]) -> list[int | Exception]:
        items = [(p.raw, p.envelope) for p in batch]
        try:
            return self._store(items)
        except OperationalError:
            raise  # the database is unreachable or locked: every item of the batch must retry
        except Exception:
            pass
        # Something in one message upset the database (or a replayed token hit its key): store
        # them one by one, so an innocent sender in the same group commit is not told to retry.
        results: list[int | Exception] = []
        for index, item in enumerate(items):
            try:
                results.extend(self._store([item]))
            except OperationalError as exc:
                # The database went away half-way: the messages already committed keep their
                # 250 (a 451 would have them sent and stored again); the rest must retry.
                results.extend([TemporaryFailure(type(exc).__name__)] * (len(items) - index))
                break
            except IntegrityError:
                if item[1].nonce is None:
                    log.warning("storing one message failed on a constraint", exc_info=True)
                    results.append(TemporaryFailure("IntegrityError"))
                else:  # its one-time token is already recorded with a stored message
                    results.append(Replayed())
            except Exception as exc:
                log.warning("storing one message failed: %s", type(exc).__name__, exc_info=True)
                results.append(TemporaryFailure(type(exc).__name__))
        return results
