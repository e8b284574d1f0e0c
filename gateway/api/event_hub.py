"""One web process's fan-out of the studio event log to its open streams (api/events.py).

Short polling, not LISTEN/NOTIFY: one task per web process looks at the counters of the
studios that have a stream open here (one indexed query for all of them, every
GATEWAY_EVENTS_POLL_INTERVAL, 25 ms by default, nothing while no stream is open; at once when
a transaction of this process that recorded events commits, eventlog.listen), reads the new
events of the studios whose counter moved (one query per such studio, however many streams it
has) and hands each stream the same prepared bytes. The same on SQLite and PostgreSQL, in one
process or several, whoever wrote the event (a worker child, another host): the log is the only
channel, so there is no second delivery path to keep in step with it, and no connection
per process held in LISTEN through a failover. The cost of a stream is a set entry and an
asyncio.Event; the cost of a poll does not grow with the number of streams.

Gap-free by the log's numbering (gateway/eventlog.py): a stream knows the last number it sent
and the last number it was told exists, and reads what lies between itself whenever what it
was handed does not follow on (it joined between two polls, or fell behind).
"""
from __future__ import annotations

import asyncio
import json
import logging

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine

from gateway import eventlog
from gateway.eventlog import Event, current, events_after
from gateway.store.db import read_now
from gateway.store.db import read_soon as read

T = TypeVar("T")

log = logging.getLogger(__name__)
MAX_PENDING = 1000   # frames a stream may hold unsent; beyond, it reads them again itself


def frame(event: Event) -> bytes:
    """One event as Server-Sent Events text: its number, its type as the event name, its object."""
    data = json.dumps(event.as_dict(), separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n".encode()


class Subscriber:
    """One open stream: where it is, what it was told exists, what it was handed to send."""

    def __init__(self, studio_id: int, last: int) -> None:
        self.studio_id = studio_id
        self.last = last             # the number of the last event sent
        self.target = last           # the highest number known to exist
        self.frames: list[tuple[int, bytes]] = []
        self.wake = asyncio.Event()

    def offer(self, counter: int, frames: list[tuple[int, bytes]]) -> None:
        if counter <= self.target and not frames:
            return
        self.target = max(self.target, counter)
        if len(self.frames) + len(frames) <= MAX_PENDING:
            self.frames.extend(frames)
        self.wake.set()

    def take(self) -> list[bytes]:
        """The handed frames that follow on from `last`, in order; the rest is read again."""
        out: list[bytes] = []
        for seq, data in self.frames:
            if seq == self.last + 1:
                out.append(data)
                self.last = seq
        self.frames.clear()
        return out


class EventHub:
    def __init__(self, engine: Engine, reader: Engine | None, interval: float) -> None:
        self.engine, self.reader, self.interval = engine, reader, interval
        self.streams: dict[int, set[Subscriber]] = {}
        self.seen: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self._told: Callable[[], object] | None = None
        self.closing = False

    def subscribe(self, studio_id: int, last: int) -> Subscriber:
        if self._task is None or self._task.done():
            if self._told is None:  # an event committed in this process: read now, not at the next poll
                loop, poked = asyncio.get_running_loop(), self._poked
                self._told = lambda: None if loop.is_closed() else loop.call_soon_threadsafe(poked.set)
                eventlog.listen(self._told)
            self._task = asyncio.create_task(self._run(), name="event hub")
        sub = Subscriber(studio_id, last)
        self.streams.setdefault(studio_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.streams.get(sub.studio_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.streams[sub.studio_id]
                self.seen.pop(sub.studio_id, None)

    def close(self) -> None:
        """End every stream (the process is stopping); new ones end at once too."""
        self.closing = True
        for subs in self.streams.values():
            for sub in subs:
                sub.wake.set()

    def stop(self) -> None:
        if self._told is not None:
            eventlog.unlisten(self._told)
            self._told = None
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        poked = self._poked
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await poked.wait()
            except TimeoutError:
                pass
            poked.clear()
            if not self.streams:
                continue
            try:
                await self.poll()
            except Exception:  # the database away for a moment: the next poll tries again
                log.warning("event hub: reading the event log failed", exc_info=True)

    async def _read(self, look: Callable[[Connection], T]) -> T:
        """SQLite: on the loop's reader. PostgreSQL: in a thread, outside a transaction
        (store/db.read_now), two round trips fewer for every poll of every process."""
        if self.reader is not None or self.engine.dialect.name != "postgresql":
            return await read(self.engine, self.reader, look)

        def now() -> T:
            with read_now(self.engine) as conn:
                return look(conn)
        return await asyncio.to_thread(now)

    async def poll(self) -> None:
        studios = list(self.streams)
        seen = {s: self.seen.get(s) for s in studios}

        def look(conn: Connection) -> dict[int, tuple[int, list[Event]]]:
            found: dict[int, tuple[int, list[Event]]] = {}
            for studio_id, counter in current(conn, studios).items():
                before = seen[studio_id]
                if before is None or counter <= before:
                    found[studio_id] = (counter, [])
                else:
                    found[studio_id] = (counter, events_after(conn, studio_id, before, counter, MAX_PENDING))
            return found

        for studio_id, (counter, events) in (await self._read(look)).items():
            subs = self.streams.get(studio_id)
            if subs is None:
                continue
            frames = [(event.seq, frame(event)) for event in events]
            previous = self.seen.get(studio_id)
            self.seen[studio_id] = counter if previous is None else max(previous, counter)
            for sub in subs:
                sub.offer(counter, frames)
