"""Prepared statements (gateway/store/prepared.py) store and find exactly what SQLAlchemy would."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine, bindparam, insert, select

from gateway.store.tables import BLOB
from gateway.store.db import bind_processor, read_tx, write_tx
from gateway.store.tables import STUDIO
from gateway.store.prepared import Prepared

WHEN = datetime(2026, 11, 26, 3, 25, 31, 979648, tzinfo=timezone.utc)

_ADD = Prepared(insert(STUDIO).values(
    slug=bindparam("slug"), name=bindparam("name"), owner_email="owner@example.org", locale="de",
    created_at=bindparam("created_at", type_=STUDIO.c.created_at.type)).returning(STUDIO.c.id))
# A literal ('de') and one parameter used twice: both bound in the driver's order.
_FIND = Prepared(select(STUDIO.c.id, STUDIO.c.name).where(
    STUDIO.c.locale == "de", (STUDIO.c.slug == bindparam("key")) | (STUDIO.c.name == bindparam("key"))))


def test_prepared_insert_stores_times_as_sqlalchemy_does(engine: Engine) -> None:
    with write_tx(engine) as conn:
        prepared_id = _ADD.execute(conn, slug="prepared", name="Prepared", created_at=WHEN).fetchone()[0]
        core_id = conn.execute(insert(STUDIO).returning(STUDIO.c.id), {
            "slug": "core", "name": "Core", "owner_email": "owner@example.org", "locale": "de",
            "created_at": WHEN}).scalar_one()
    with read_tx(engine) as conn:
        stored = dict(conn.execute(select(STUDIO.c.id, STUDIO.c.created_at.cast(STUDIO.c.slug.type))).all())
        assert stored[prepared_id] == stored[core_id]  # the same text on SQLite, the same instant on PostgreSQL
        assert "+00:00" not in stored[prepared_id] or engine.dialect.name != "sqlite"
        read_back = dict(conn.execute(select(STUDIO.c.id, STUDIO.c.created_at)).all())
        assert read_back[prepared_id] == WHEN


def test_prepared_select_binds_literals_and_repeated_parameters(engine: Engine) -> None:
    with write_tx(engine) as conn:
        a = _ADD.execute(conn, slug="inkwell", name="Inkwell", created_at=WHEN).fetchone()[0]
        b = _ADD.execute(conn, slug="nadel", name="Nadelwerk", created_at=WHEN).fetchone()[0]
        assert _FIND.execute(conn, key="inkwell").fetchall() == [(a, "Inkwell")]
        assert _FIND.execute(conn, key="Nadelwerk").fetchall() == [(b, "Nadelwerk")]
        assert _FIND.execute(conn, key="nobody").fetchall() == []


def test_bind_processor_gives_the_driver_what_sqlalchemy_gives_it(engine: Engine) -> None:
    """Blobs and raw mail are inserted through the driver with bind_processor: their times must
    compare and sort with the ones SQLAlchemy writes (on SQLite they are text)."""
    with engine.connect() as conn:
        value = bind_processor(conn, BLOB.c.created_at)(WHEN)
        if engine.dialect.name == "sqlite":
            assert value == "2026-11-26 03:25:31.979648"
        else:
            assert value == WHEN
