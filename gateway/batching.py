"""Group commit for the API's small writes (replies today): many requests, one transaction.

Each write is a function of a Connection. Requests that arrive while one transaction is being
written share the next one, each inside its own SAVEPOINT, so one request's error (a
conversation that is not the caller's, bad input found late) never affects another's, and
all of them share one commit and one fsync. Without it, twenty studio apps replying at once
queued for SQLite's single writer one fsync at a time (bench/outbound.py: p99 71 ms).
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine

from gateway.db import write_tx

log = logging.getLogger(__name__)
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


class WriteBatcher:
    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Write | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-writes")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="api-writes")

    async def stop(self) -> None:
        if self._queue is not None and self._task is not None:
            await self._queue.put(None)  # everything queued before it is written first
            await self._task
        self._executor.shutdown(wait=True)

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
                outcomes = await loop.run_in_executor(self._executor, self._write, batch)
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

    def _write(self, batch: list[_Write]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with write_tx(self.engine) as conn:
            for item in batch:
                savepoint = conn.begin_nested()
                try:
                    value = item.fn(conn)
                except Exception as exc:
                    savepoint.rollback()
                    outcomes.append((False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((True, value))
        return outcomes
