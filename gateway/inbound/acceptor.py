"""The one ingest pipeline's front door: every accepted message is durably stored here first.

SMTP and the provider webhooks both call `Acceptor.accept`. It answers only after the raw
bytes and the envelope are committed (fsync'd), and it does so in group commits: all messages
that arrive while one transaction is being written share the next transaction and its single
fsync. That is what lets acceptance keep pace with a do-nothing server while every `250` is
durable (the statements themselves are in gateway/inbound/intake.py). Parsing and threading
happen afterwards (see `processor.py`), as in Mailman, Zulip and Action Mailbox, so a message
that cannot be parsed is never refused for that.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from gateway.store.batching import next_batch
from gateway.store.full import WriteHealth, is_storage_full
from gateway.store.db import (InlineTx, KeptConnection, begin_inline, commit_stalled, is_busy, is_sqlite, make_engine, sqlite_write_lock, write_tx)
from gateway.inbound.intake import Envelope, Replayed, StudioIds, store_batch
from gateway.mail.addresses import parse_studio_address
from gateway.settings import Settings

log = logging.getLogger(__name__)



class TemporaryFailure(Exception):
    """Storage is unavailable: the sender must keep the message and retry (451 / 503)."""


class StorageFull(TemporaryFailure):
    """The disk (or the database's space) is full: temporary too, answered 452 4.3.1 / 503."""


def _temporary(exc: BaseException) -> TemporaryFailure:
    return StorageFull("storage full") if is_storage_full(exc) else TemporaryFailure(type(exc).__name__)


def log_accepted(inbound_id: int, envelope: Envelope, size: int, answer: str) -> None:
    """The one INFO line for each accepted message, written by the edge that gave the answer:
    facts only (no address: those are DEBUG-level data, docs/operations.md "Logs")."""
    studios = envelope.studio_ids
    log.info("accepted inbound %d for studio %s via %s, %d bytes: %s", inbound_id,
             ",".join(str(i) for i in studios) or "?", envelope.source, size, answer,
             extra={"event": "accepted", "inbound_id": inbound_id,
                    "studio_id": studios[0] if len(studios) == 1 else None,  # one studio: nearly always
                    "studio_ids": studios, "source": envelope.source, "size": size, "answer": answer})


@dataclass
class _Pending:
    raw: bytes
    envelope: Envelope
    future: asyncio.Future[int] = field(repr=False)


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
        self.health = WriteHealth()   # whether storing fails now; /readyz reports it
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
        else:
            # PostgreSQL: the group commits' own connections, kept from one to the next without
            # the pool's pre-ping (a round trip, and a GIL hand-off the SMTP loop waits for, at
            # every checkout); a connection that died meanwhile fails the batch's first
            # statement, and the batch is written once more on a fresh one (_store_pg).
            self._write_engine = make_engine(engine.url.render_as_string(hide_password=False),
                                             pool_size=self._in_flight, pre_ping=False)
        # the inline transactions' connection (SQLite), or the group commits' (PostgreSQL)
        self._kept = KeptConnection(self._write_engine) if self._inline else None
        self._kept_pg: list[Connection] = []

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
        if self._kept is not None:
            self._kept.close()
        for conn in self._kept_pg:
            conn.close()
        self._kept_pg.clear()
        if self._write_engine is not self.engine:
            self._write_engine.dispose()

    async def accept(self, raw: bytes, envelope: Envelope) -> int:
        """The inbound id once committed; raises TemporaryFailure or FloodLimited."""
        if self._queue is None:
            raise RuntimeError("Acceptor.start() was not awaited")
        if self._stopping:
            raise TemporaryFailure("shutting down")
        stalled = self._commit_stalled()
        if stalled is not None:
            raise TemporaryFailure(stalled)
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
            if not await self._slot(slots, batch):
                continue
            task = asyncio.create_task(self._write_off_loop(loop, batch, slots))
            writing.add(task)
            task.add_done_callback(writing.discard)

    def _commit_stalled(self) -> str | None:
        """A COMMIT has waited past GATEWAY_DB_COMMIT_DEADLINE (PostgreSQL only: a synchronous
        standby that does not answer); it is left to finish, never cancelled."""
        if self._inline:
            return None
        return commit_stalled(self.settings.db_commit_deadline)

    async def _slot(self, slots: asyncio.Semaphore, batch: list[_Pending]) -> bool:
        """Wait for a free group-commit slot; False, with the batch answered 451, when the
        COMMIT that holds it has waited past the deadline (this batch was never written)."""
        while True:
            try:
                await asyncio.wait_for(slots.acquire(), timeout=self.settings.db_commit_deadline / 4)
                return True
            except asyncio.TimeoutError:
                stalled = self._commit_stalled()
                if stalled is not None:
                    self.health.failed(stalled)
                    log.warning("%d message(s) queued behind a %s: answering temporary failure",
                                len(batch), stalled)
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(TemporaryFailure(stalled))
                    return False

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
        failure = _temporary(exc)
        self.health.failed("storage full" if isinstance(failure, StorageFull) else f"store failed: {failure}")
        log.warning("storing %d message(s) failed, answering temporary failure: %s%s",
                    len(batch), type(exc).__name__, " (storage full)" if isinstance(failure, StorageFull) else "")
        log.debug("store failure detail", exc_info=True)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(_temporary(exc))

    def _answer(self, batch: list[_Pending], results: list[int | Exception]) -> None:
        self.commits += 1
        self.committed += len(batch)
        for item, result in zip(batch, results):
            if item.future.done():  # the client went away; the message is stored regardless
                continue
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.envelope.studio_ids = self._studios_of(item.envelope)
                item.future.set_result(result)
        if any(not isinstance(r, Exception) for r in results):
            self.health.succeeded()
            if self.on_stored:
                self.on_stored()
        elif any(isinstance(r, StorageFull) for r in results):
            self.health.failed("storage full")

    def _studios_of(self, envelope: Envelope) -> list[int]:
        """The studios a stored message went to, from the ids store_batch's flood guard just looked
        up (every mail with a sender: the null reverse path arrives as "<>"). A mail with no sender
        at all, which only a webhook can post, shows no studio id; it is quarantined anyway."""
        found: list[int] = []
        for rcpt in envelope.rcpt_tos:
            address = parse_studio_address(rcpt, self.settings.mail_domain)
            studio_id = self._studio_ids.known(address.slug) if address is not None else None
            if studio_id is not None and studio_id not in found:
                found.append(studio_id)
        return found

    def _prepare(self, batch: list[_Pending]) -> tuple[InlineTx, list[int | Exception]] | None:
        """SQLite: run the batch's statements on the loop, leaving only the commit to the writer
        thread; None when the thread must do it all (a lock is held, or one message upsets the
        database). The lock is the one the process's other writers (the processor and outbox
        threads of `gateway serve`) queue on: writing past it, they met SQLite's busy handler,
        which sleeps up to 100 ms between tries."""
        assert self._lock is not None
        tx = begin_inline(self._write_engine, self._lock, self._kept)
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

    def _store_pg(self, items: list[tuple[bytes, Envelope]]) -> list[int | Exception]:
        """One group commit on PostgreSQL, on a connection kept from the last one: BEGIN, the
        flood query, the blobs with their rows in one statement (gateway/inbound/intake.py),
        COMMIT; the pool's checkout with its pre-ping and a statement more made six round
        trips, each a wait the SMTP loop shared the GIL across.

        A kept connection may have died while idle (a server restart, a failover,
        pg_terminate_backend): when a batch finds one dead (SQLAlchemy's disconnect check), it
        is written once more on a fresh connection, and a second failure is the senders' 451.
        Any other failure is the 451 at once. A 250 is given only for a COMMIT
        that succeeded; if the one that failed did commit after all, the mail is stored twice
        and filed once by its Message-ID, as when a sender retries after a 451."""
        reused = bool(self._kept_pg)
        try:
            return self._store_pg_on(self._kept_pg.pop() if reused else self._connect_pg(), items)
        except OperationalError as exc:
            # Only a connection found dead: a COMMIT the synchronous standby did not confirm
            # (gateway/store/db.guard_commits) must be the senders' 451, not written again.
            if not reused or not exc.connection_invalidated:
                raise
            log.info("a kept database connection was dead; writing the group commit on a fresh one")
        return self._store_pg_on(self._connect_pg(), items)

    def _connect_pg(self) -> Connection:
        return self._write_engine.connect().execution_options(write=True)

    def _store_pg_on(self, conn: Connection, items: list[tuple[bytes, Envelope]]) -> list[int | Exception]:
        try:
            with conn.begin():
                results = store_batch(conn, items, self.settings, self.secret, self._studio_ids)
        except OperationalError:
            conn.invalidate()  # dead, or in a state nobody knows: never kept
            conn.close()
            raise
        except BaseException:
            conn.close()  # rolled back; back to the pool
            raise
        self._kept_pg.append(conn)
        return results

    def _write(self, batch: list[_Pending]) -> list[int | Exception]:
        items = [(p.raw, p.envelope) for p in batch]
        try:
            return self._store(items) if is_sqlite(self.engine) else self._store_pg(items)
        except OperationalError:
            raise  # the database is unreachable or locked: every item of the batch must retry
        except Exception:
            pass
        # Something in one message upset the database (or a replayed token hit its key): store
        # them one by one, so an innocent sender in the same group commit is not told to retry.
        results: list[int | Exception] = []
        for index, item in enumerate(items):
            try:
                results.extend(self._store([item]) if is_sqlite(self.engine) else self._store_pg([item]))
            except OperationalError as exc:
                # The database went away (or filled up) half-way: the messages already committed
                # keep their 250 (a 451 would have them sent and stored again); the rest must retry.
                results.extend([_temporary(exc)] * (len(items) - index))
                break
            except IntegrityError:
                if item[1].nonce is None:
                    log.warning("storing one message failed on a constraint", exc_info=True)
                    results.append(TemporaryFailure("IntegrityError"))
                else:  # its one-time token is already recorded with a stored message
                    results.append(Replayed())
            except Exception as exc:
                log.warning("storing one message failed: %s", type(exc).__name__, exc_info=True)
                results.append(_temporary(exc))
        return results
