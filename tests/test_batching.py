"""Group commits for API writes: shared transaction, isolated failures, answered after commit."""
from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Connection, func, insert, select

from gateway.batching import WriteBatcher
from gateway.db import read_tx
from gateway.ingest import STUDIO
from gateway.models import utcnow
from gateway.settings import Settings


def test_one_failing_write_does_not_touch_the_others_of_its_batch(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    def add(slug: str):  # type: ignore[no-untyped-def]
        def write(conn: Connection) -> int:
            return conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
                "slug": slug, "name": slug, "owner_email": f"o@{slug}.example", "locale": "de",
                "created_at": utcnow()}).scalar_one()
        return write

    def broken(conn: Connection) -> int:
        add("half")(conn)  # written, then the request fails: its savepoint is rolled back
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
