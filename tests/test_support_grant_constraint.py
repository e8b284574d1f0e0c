"""One open support grant per studio is a constraint of the database, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.access.studios import add_studio
from gateway.access.support import active_grant, grant_access
from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import PROFILE, SUPPORT_GRANT


def _studio(engine: Engine) -> tuple[int, int]:
    with write_tx(engine) as conn:
        studio_id, _ = add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        owner = conn.execute(select(PROFILE.c.id).where(PROFILE.c.studio_id == studio_id)).scalar_one()
    return studio_id, owner


def test_a_second_open_grant_is_refused_by_the_database(engine: Engine) -> None:
    """Before: only grant_access kept to one; any other write could add a second active grant."""
    studio_id, owner = _studio(engine)
    now = utcnow()
    with write_tx(engine) as conn:
        grant_access(conn, studio_id, owner, "owner:o", timedelta(hours=2), "", now)
    with pytest.raises(IntegrityError):
        with write_tx(engine) as conn:
            conn.execute(insert(SUPPORT_GRANT), {"studio_id": studio_id, "profile_id": owner, "note": "",
                                                 "created_at": now, "expires_at": now + timedelta(hours=1)})


def test_granting_again_after_expiry_or_replacement_leaves_exactly_one_open(engine: Engine) -> None:
    studio_id, owner = _studio(engine)
    start = utcnow()
    with write_tx(engine) as conn:
        grant_access(conn, studio_id, owner, "owner:o", timedelta(hours=1), "", start)
    later = start + timedelta(hours=3)   # the first has expired, unrevoked
    with write_tx(engine) as conn:
        first = grant_access(conn, studio_id, owner, "owner:o", timedelta(hours=2), "", later)
        second = grant_access(conn, studio_id, owner, "owner:o", timedelta(hours=5), "longer", later)
    with read_tx(engine) as conn:
        open_grants = conn.execute(select(func.count()).select_from(SUPPORT_GRANT).where(
            SUPPORT_GRANT.c.closed_at.is_(None))).scalar_one()
        active = active_grant(conn, studio_id, later)
    assert open_grants == 1 and active is not None and active.id == second.id != first.id


def test_two_owners_granting_at_once_leave_one_active_grant(settings_engine_pair: tuple[Engine, Engine]) -> None:
    one, two = settings_engine_pair
    studio_id, owner = _studio(one)
    now = utcnow()
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def grant(engine: Engine, hours: int) -> None:
        try:
            barrier.wait(timeout=10)
            with write_tx(engine) as conn:
                grant_access(conn, studio_id, owner, "owner:o", timedelta(hours=hours), "", now)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=grant, args=(e, h)) for e, h in ((one, 2), (two, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    with read_tx(one) as conn:
        assert conn.execute(select(func.count()).select_from(SUPPORT_GRANT).where(
            SUPPORT_GRANT.c.studio_id == studio_id, SUPPORT_GRANT.c.revoked_at.is_(None))).scalar_one() == 1


@pytest.fixture
def settings_engine_pair(settings: object) -> object:
    url = settings.resolved_database_url  # type: ignore[attr-defined]
    engines = (make_engine(url, busy_timeout=5.0), make_engine(url, busy_timeout=5.0))
    yield engines
    for e in engines:
        e.dispose()
