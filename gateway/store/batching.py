"""Group commit for the API's small writes (replies today): many requests, one transaction.

Each write is a function of a Connection. Requests that arrive while one transaction is being
written share the next one, and all of them share one commit and one fsync. One request's
error (bad input found late) never affects another's: if a write raises, the transaction is
rolled back and each write is retried in a transaction of its own. Without group commits,
twenty studio apps replying at once queued for SQLite's single writer one fsync at a time
(bench/outbound.py: p99 71 ms).
"""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import OperationalError

from gateway.store.db import (InlineTx, KeptConnection, begin_inline, busy_timeout_of, is_busy, is_sqlite, make_engine,
                              sqlite_write_lock, write_tx)

log = logging.getLogger(__name__)

# SQLSTATEs of a transaction the server rolled back to let another go on: deadlock_detected and
# serialization_failure. Retrying the work is the remedy both document.
_CONFLICTS = frozenset({"40P01", "40001"})


def transaction_conflict(exc: OperationalError) -> bool:
    """True when the database aborted the transaction over a conflict with another (PostgreSQL)."""
    return getattr(exc.orig, "sqlstate", None) in _CONFLICTS
T = TypeVar("T")


Q = TypeVar("Q")


async def next_batch(queue: asyncio.Queue[Q | None], max_batch: int) -> list[Q] | None:
    """The next group commit's items: whatever is queued, at least one (waits for it), at most
    max_batch; None at the stop sentinel, which stays queued behind the items before it, so
    everything handed over before a stop is still written."""
    first = await queue.get()
    if first is None:
        return None
    batch = [first]
    while len(batch) < max_batch and not queue.empty():
        item = queue.get_nowait()
        if item is None:
            queue.put_nowait(None)
            break
        batch.append(item)
    return batch


class WriteUnavailable(Exception):
    """The transaction could not be committed: nothing of it was stored (answered 503)."""


@dataclass
class _Write:
    fn: Callable[[Connection], Any]
    future: asyncio.Future[Any] = field(repr=False)


# At most one checkpoint of the inline connection's commits this often (seconds): a pause in
# writes still gets one after its first commit; under load the WAL grows by at most this long's
# commits between them (about 20 MB at 400 form posts/s with a 200 KB image each).
CHECKPOINT_EVERY = 0.2


def _no_autocheckpoint(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.execute("PRAGMA wal_autocheckpoint=0")


# SQLite: how long the writer thread waits before asking again for a lock another process holds,
# doubling from the first to the second (seconds). The worker processes of `gateway serve` hold
# it a few milliseconds per transaction (the outbox marking a reply sent, the processor's chunk).
BUSY_RETRY = (0.0005, 0.004)


class WriteBatcher:
    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Write | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-writes")
        # SQLite: a batch's statements (tens of microseconds each) run on the loop and only the
        # commit, which waits for the fsync without the GIL, goes to the thread, as in the
        # acceptor (gateway/inbound/acceptor.py): handing every statement to a thread cost more in GIL
        # hand-offs than the statements themselves (bench/outbound.py). The loop never waits
        # for a lock: this connection gives up at once (busy_timeout 0) and the process's own
        # writers are asked without blocking; when either is busy, the thread does it all.
        self._inline_engine: Engine | None = None
        self._kept: KeptConnection | None = None
        self.commits = 0  # group commits and the writes they carried (logged at stop)
        self.written = 0
        self._lock = sqlite_write_lock(engine)
        # SQLite copies its WAL back into the database (a checkpoint, with an fsync of its own)
        # in whichever commit finds the WAL past 1000 pages: in the writer thread, so the next
        # group commit waited for it. Form posts carry a 200 KB image each, so every few group
        # commits waited for one (bench/form_submit.py: 230/s with it, 330-445/s without). The
        # inline connection leaves checkpoints to a thread of their own, started after a commit
        # when none is running and none started in the last CHECKPOINT_EVERY; every other
        # connection (and process) keeps checkpointing as before, so the WAL stays bounded even
        # if this thread falls behind. Checkpointing after every group commit wrote the pages
        # every commit changes (the tables' and indexes' last pages, the event counter) back
        # once per commit and fsync'd the database each time: 0.4-0.7 ms of CPU per form post
        # on the checkpoint thread, about half that spaced out (bench/form_submit.py).
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-checkpoint")
        self._checkpointing: asyncio.Future[None] | None = None
        self._next_checkpoint = 0.0  # the loop's clock
        self._busy_budget = busy_timeout_of(engine)  # seconds a batch may wait for another process's lock
        if is_sqlite(engine):
            # Two pooled connections: the loop's kept one, and the writer thread's when a lock is held.
            self._inline_engine = make_engine(str(engine.url), busy_timeout=0, pool_size=2)
            event.listen(self._inline_engine, "connect", _no_autocheckpoint)
            self._kept = KeptConnection(self._inline_engine)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="api-writes")

    async def stop(self) -> None:
        if self._queue is not None and self._task is not None:
            await self._queue.put(None)  # everything queued before it is written first
            await self._task
            if self._inline_engine is not None and self.commits:  # the commits since the last one
                await asyncio.get_running_loop().run_in_executor(self._checkpoints, self._checkpoint)
        self._executor.shutdown(wait=True)
        self._checkpoints.shutdown(wait=True)
        if self._kept is not None:
            self._kept.close()
        if self._inline_engine is not None:
            self._inline_engine.dispose()
        if self.commits:
            log.info("API writes: %d in %d group commits (%.1f per commit)",
                     self.written, self.commits, self.written / self.commits)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """fn's result once its transaction is committed; fn's own exception if it raised."""
        if self._queue is None:
            raise RuntimeError("WriteBatcher.start() was not awaited")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Write(fn, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await next_batch(self._queue, self.max_batch)
            if batch is None:
                return
            try:
                outcomes = await self._write_batch(loop, batch)
                self.commits += 1
                self.written += len(batch)
            except Exception as exc:  # the commit failed: nothing of the batch is stored
                log.warning("API write batch of %d failed: %s", len(batch), type(exc).__name__)
                outcomes = [(False, WriteUnavailable(type(exc).__name__))] * len(batch)
            for item, (ok, value) in zip(batch, outcomes):
                if item.future.done():
                    continue
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

    async def _write_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Write]) -> list[tuple[bool, Any]]:
        prepared = self._prepare(batch)
        if prepared is None:
            return await loop.run_in_executor(self._executor, self._write, batch)
        tx, outcomes = prepared
        await tx.commit(loop, self._executor)
        if (self._checkpointing is None or self._checkpointing.done()) and loop.time() >= self._next_checkpoint:
            self._next_checkpoint = loop.time() + CHECKPOINT_EVERY
            self._checkpointing = loop.run_in_executor(self._checkpoints, self._checkpoint)
        return outcomes

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint: it copies what no reader still needs and never waits for a lock
        (SQLite's own autocheckpoint is also passive)."""
        try:
            raw = self.engine.raw_connection()
            try:
                raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # type: ignore[union-attr]
            finally:
                raw.close()
        except Exception as exc:  # the next commit tries again; other connections still checkpoint
            # SQLite's message says which trouble it was ("database is locked", "disk I/O
            # error"); it never carries data of the rows.
            log.warning("WAL checkpoint failed: %s: %s", type(exc).__name__, str(exc)[:200])

    def _prepare(self, batch: list[_Write]) -> tuple[InlineTx, list[tuple[bool, Any]]] | None:
        """SQLite: the batch's statements run here, on the loop (gateway/store/db.begin_inline); None
        when the thread must do it all (a lock is held, or a write raised: the thread retries
        them one by one)."""
        if self._inline_engine is None or self._lock is None:
            return None
        try:
            tx = begin_inline(self._inline_engine, self._lock, self._kept)
        except OperationalError:
            return None
        if tx is None:
            return None
        try:
            return tx, [(True, item.fn(tx.conn)) for item in batch]
        except Exception:
            tx.abandon()
            return None

    def _write(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        try:
            return self._write_together(batch)
        except OperationalError as exc:
            if not transaction_conflict(exc):
                raise  # the database is unreachable or locked: every write of the batch must retry
            # PostgreSQL aborted the batch to break a deadlock: two processes' batches took two
            # studios' event counters (gateway/eventlog.py) in opposite orders. Each write alone
            # takes one studio's rows, so written one by one they queue instead of failing.
            log.info("API write batch of %d met a deadlock; writing it one by one", len(batch))
        except Exception as exc:
            if len(batch) == 1:
                return [(False, exc)]
        # One write failed inside the shared transaction (and rolled all of it back): write each
        # in a transaction of its own, so the others are stored and only it sees its error.
        outcomes: list[tuple[bool, Any]] = []
        for index, item in enumerate(batch):
            try:
                outcomes.extend(self._write_together([item]))
            except OperationalError as exc:
                # The database went away half-way: what was committed stays answered as stored
                # (a 503 would make the app send that reply twice); the rest must retry.
                outcomes.extend([(False, WriteUnavailable(type(exc).__name__))] * (len(batch) - index))
                break
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    def _write_together(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        """Every write in one transaction. A write that raises rolls the whole transaction
        back: a SAVEPOINT around each would cost two more statements per write, for a case
        (an error after a write has begun) that input checks before the batch make rare.

        SQLite: when another process (a worker of `gateway serve`) holds the write lock, ask
        again every BUSY_RETRY instead of waiting in SQLite's busy handler, which sleeps 1, 2, 5,
        10, 15, 20, 25 ... ms between its tries: a lock held 10 ms kept the batch waiting 18 ms,
        one held 20 ms 33 ms, and every reply of the batch with it (bench/outbound.py --roles
        serve: reply p99 36-56 ms beside the do-nothing route's 8-14 ms)."""
        if self._inline_engine is None:
            with write_tx(self.engine) as conn:
                return [(True, item.fn(conn)) for item in batch]
        assert self._lock is not None
        deadline = time.monotonic() + self._busy_budget
        delay = BUSY_RETRY[0]
        while True:
            # This process's writers queue on its lock (the inline engine's zero busy timeout
            # would make write_tx give up at once); write_tx takes it again, as it is reentrant.
            if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError(
                    "database is locked (by other writers of this process)"))
            try:
                with write_tx(self._inline_engine) as conn:
                    return [(True, item.fn(conn)) for item in batch]
            except OperationalError as exc:
                if not is_busy(exc) or time.monotonic() + delay > deadline:
                    raise
            finally:
                self._lock.release()
            time.sleep(delay)  # without the GIL: the loop goes on serving meanwhile
            delay = min(delay * 2, BUSY_RETRY[1])
