"""Group commits for API writes: shared transaction, isolated failures, answered after commit."""
from __future__ import annotations

import asyncio
from typing import Callable

import pytest
from sqlalchemy import Connection, func, insert, select

from gateway.store.batching import WriteBatcher
from gateway.store.db import read_tx
from gateway.store.tables import STUDIO
from gateway.store.models import utcnow
from gateway.settings import Settings


def _add_studio(slug: str) -> Callable[[Connection], int]:
    """A write for the batcher: one studio row, its id."""
    def add(conn: Connection) -> int:
        return conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
            "slug": slug, "name": slug.title(), "owner_email": f"o@{slug}.example", "locale": "de",
            "created_at": utcnow()}).scalar_one()
    return add


def test_one_failing_write_does_not_touch_the_others_of_its_batch(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    def add(slug: str):  # type: ignore[no-untyped-def]
        def write(conn: Connection) -> int:
            return conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
                "slug": slug, "name": slug, "owner_email": f"o@{slug}.example", "locale": "de",
                "created_at": utcnow()}).scalar_one()
        return write

    def broken(conn: Connection) -> int:
        add("half")(conn)  # written, then the request fails: its write is rolled back
        raise ValueError("bad input found late")

    async def scenario() -> list[object]:
        batcher = WriteBatcher(engine)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.run(add("one")), batcher.run(broken), batcher.run(add("two")),
                                        batcher.run(add("one")),  # unique slug: fails on its own
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert isinstance(results[1], ValueError) and isinstance(results[3], Exception)
    with read_tx(engine) as conn:
        assert sorted(conn.execute(select(STUDIO.c.slug)).scalars()) == ["one", "two"]
        assert conn.execute(select(func.count()).select_from(STUDIO)).scalar_one() == 2


def test_run_before_start_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError):
        asyncio.run(WriteBatcher(engine).run(lambda conn: None))


def test_a_batch_meeting_another_connections_lock_waits_off_the_loop(sqlite_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite batches run on the event loop; when another process holds the database's write
    lock the batch must neither fail nor stall the loop: it waits in the writer thread."""
    import sqlite3

    from gateway.store.db import make_engine, migrate

    migrate(sqlite_url)
    engine = make_engine(sqlite_url, busy_timeout=5.0)
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)

    add = _add_studio("late")

    async def scenario() -> int:
        batcher = WriteBatcher(engine)
        await batcher.start()
        try:
            other.execute("BEGIN IMMEDIATE")  # "another process" writes
            task = asyncio.create_task(batcher.run(add))
            for _ in range(5):  # the loop keeps turning while the write waits for the lock
                await asyncio.sleep(0)
                assert not task.done()
            other.execute("COMMIT")
            return await task
        finally:
            await batcher.stop()

    try:
        studio_id = asyncio.run(scenario())
        with read_tx(engine) as conn:
            assert conn.execute(select(STUDIO.c.slug).where(STUDIO.c.id == studio_id)).scalar_one() == "late"
    finally:
        other.close()
        engine.dispose()


def test_a_database_failing_half_way_keeps_the_writes_already_committed_answered(  # type: ignore[no-untyped-def]
        settings: Settings, engine) -> None:
    """When writes are retried one by one and the database fails half-way, a write already
    committed must be answered as stored: a 503 would make the app send that reply twice."""
    from sqlalchemy.exc import OperationalError

    from gateway.store.batching import WriteUnavailable

    add = _add_studio("kept")

    def bad(conn: Connection) -> int:
        raise ValueError("bad input found late")

    def database_gone(conn: Connection) -> int:
        raise OperationalError("INSERT", None, Exception("disk I/O error"))

    async def scenario() -> list[object]:
        batcher = WriteBatcher(engine)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.run(add), batcher.run(bad), batcher.run(database_gone),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    stored, refused, unavailable = asyncio.run(scenario())
    assert isinstance(stored, int) and isinstance(refused, ValueError) and isinstance(unavailable, WriteUnavailable)
    with read_tx(engine) as conn:
        assert conn.execute(select(STUDIO.c.id).where(STUDIO.c.slug == "kept")).scalar_one() == stored


def test_two_processes_batches_taking_two_studios_events_crosswise_are_all_stored(pg_database_url: str) -> None:
    """Each batch writes an event for studio A then B, the other's for B then A: PostgreSQL
    aborts one as a deadlock, and its writes are then stored one by one instead of being
    answered 503 (two web processes' group commits, gateway/eventlog.py's per-studio counters)."""
    import threading

    from gateway.eventlog import MESSAGE_CREATED, record
    from gateway.store.db import make_engine
    from gateway.store.tables import STUDIO_EVENT, STUDIO_EVENT_COUNTER
    from sqlalchemy import text

    engine = make_engine(pg_database_url)
    with engine.begin() as conn:
        a, b = (conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
            "slug": slug, "name": slug, "owner_email": f"o@{slug}.example", "locale": "de",
            "created_at": utcnow()}).scalar_one() for slug in ("crosswise-a", "crosswise-b"))
    both_hold_their_first = threading.Barrier(2, timeout=30)
    first_writes = {"batch1", "batch2"}
    calls: list[int] = []

    def write(studio: int, wait_as: str | None = None):  # type: ignore[no-untyped-def]
        def fn(conn: Connection) -> int:
            calls.append(studio)
            conn.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
            record(conn, studio, MESSAGE_CREATED, utcnow(), conversation_id=1, message_id=len(calls))
            if wait_as in first_writes:  # only the first time: the retried writes go straight on
                first_writes.discard(wait_as)
                both_hold_their_first.wait()
            return studio
        return fn

    async def scenario() -> list[object]:
        one, two = WriteBatcher(engine), WriteBatcher(engine)
        await one.start()
        await two.start()
        try:
            return await asyncio.gather(one.run(write(a, "batch1")), one.run(write(b)),
                                        two.run(write(b, "batch2")), two.run(write(a)), return_exceptions=True)
        finally:
            await one.stop()
            await two.stop()

    try:
        results = asyncio.run(scenario())
        assert results == [a, b, b, a], results
        assert len(calls) == 6  # the deadlock happened: one batch's two writes ran again, alone
        with engine.connect() as conn:
            for studio in (a, b):
                seqs = conn.execute(select(STUDIO_EVENT.c.seq).where(STUDIO_EVENT.c.studio_id == studio)
                                    .order_by(STUDIO_EVENT.c.seq)).scalars().all()
                assert seqs == [1, 2]  # the aborted batch's numbers were given back: no gap
                assert conn.execute(select(STUDIO_EVENT_COUNTER.c.seq).where(
                    STUDIO_EVENT_COUNTER.c.studio_id == studio)).scalar_one() == 2
    finally:
        engine.dispose()


def test_sqlite_group_commits_leave_the_wal_checkpoint_to_a_thread_of_their_own(sqlite_url: str) -> None:
    """The commit of a group never copies the WAL into the database itself (that waited for an
    fsync of its own, every few commits of 200 KB form posts); a thread of the batcher does,
    after the commit. Read without its WAL (immutable), the database file has the row."""
    import sqlite3

    from gateway.store.db import make_engine

    path = sqlite_url.split("///", 1)[1]
    engine = make_engine(sqlite_url, busy_timeout=5.0)
    # Open throughout: closing the last connection would checkpoint, whoever asked for it.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("SELECT count(*) FROM studio").fetchall()   # the WAL's shared memory is open

    add = _add_studio("copied")

    async def scenario() -> int:
        batcher = WriteBatcher(engine)
        await batcher.start()
        try:
            studio_id = await batcher.run(add)
            assert batcher._kept is not None  # the inline connection: SQLite's autocheckpoint is off
            inline = batcher._kept.take()
            try:
                assert inline.connection.driver_connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
            finally:
                batcher._kept.give_back(inline)
            return studio_id
        finally:
            await batcher.stop()   # waits for the checkpoint thread

    try:
        asyncio.run(scenario())
        plain = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            assert plain.execute("SELECT slug FROM studio WHERE slug = 'copied'").fetchall() == [("copied",)]
        finally:
            plain.close()
    finally:
        holder.close()
        engine.dispose()


def test_a_batch_waiting_for_another_process_asks_again_itself_rather_than_in_sqlites_busy_handler(  # type: ignore[no-untyped-def]
        sqlite_url: str, monkeypatch) -> None:
    """When a worker process of `gateway serve` holds the write lock, the writer thread asks
    again every BUSY_RETRY (at most 4 ms apart) on a connection that never waits in SQLite's
    busy handler, which sleeps up to 100 ms between tries and decided the reply API's p99."""
    import sqlite3
    import threading

    from gateway.store import batching
    from gateway.store.db import make_engine, migrate

    migrate(sqlite_url)
    engine = make_engine(sqlite_url, busy_timeout=5.0)
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    waits: list[float] = []
    asked_twice = threading.Event()
    real_sleep = batching.time.sleep

    def sleep(seconds: float) -> None:  # the writer thread's pauses between its tries
        waits.append(seconds)
        if len(waits) >= 2:
            asked_twice.set()
        real_sleep(seconds)

    monkeypatch.setattr(batching.time, "sleep", sleep)

    add = _add_studio("asked")

    async def scenario() -> int:
        batcher = WriteBatcher(engine)
        await batcher.start()
        try:
            other.execute("BEGIN IMMEDIATE")  # "another process" writes
            task = asyncio.create_task(batcher.run(add))
            assert await asyncio.to_thread(asked_twice.wait, 30)
            assert not task.done()
            other.execute("COMMIT")
            return await task
        finally:
            await batcher.stop()

    try:
        studio_id = asyncio.run(scenario())
        assert waits and max(waits) <= batching.BUSY_RETRY[1]
        with read_tx(engine) as conn:
            assert conn.execute(select(STUDIO.c.slug).where(STUDIO.c.id == studio_id)).scalar_one() == "asked"
    finally:
        other.close()
        engine.dispose()
