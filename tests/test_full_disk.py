"""A full disk (issue 13): SMTP answers 452 4.3.1, webhooks 503, /readyz says writes fail, and
mail flows again once space returns, nothing lost.

The disk fills for real: SQLite's `PRAGMA max_page_count` on every connection the gateway opens
makes the database unable to grow, which SQLite reports exactly as a full disk (SQLITE_FULL,
"database or disk is full"). A table of filler rows written beforehand (through a plain sqlite3
connection, which the limit doesn't reach) is the space an operator frees: deleting it puts its
pages on SQLite's free list, where the gateway's connections may use them again.
"""
from __future__ import annotations

import errno
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import psycopg.errors
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import Pool

from gateway.access.studios import add_studio
from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.full import WriteHealth, is_storage_full
from gateway.store.tables import INBOUND
from tests import providers as p
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail


@pytest.fixture
def full_gateway(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[RunningGateway, Path]]:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    setup = make_engine(sqlite_url, busy_timeout=2.0)
    with write_tx(setup) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
    setup.dispose()
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE filler (data BLOB)")
    raw.executemany("INSERT INTO filler VALUES (?)", [(b"\0" * 4000,) for _ in range(1000)])   # ~4 MB
    raw.commit()
    raw.close()

    def no_growth(dbapi_connection: Any, record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            # Clamped to the file's current size: from now on it cannot grow.
            dbapi_connection.execute("PRAGMA max_page_count = 1")

    event.listen(Pool, "connect", no_growth)
    running = start_gateway(make_settings(tmp_path, sqlite_url, postmark_basic_auth=":".join(p.POSTMARK_AUTH)))
    try:
        yield running, path
    finally:
        running.stop()
        event.remove(Pool, "connect", no_growth)


def _inbound_count(running: RunningGateway) -> int:
    with read_tx(running.engine) as conn:
        return conn.execute(select(func.count()).select_from(INBOUND)).scalar_one()


def test_a_full_disk_answers_452_and_503_and_readyz_says_so_until_space_returns(
        full_gateway: tuple[RunningGateway, Path]) -> None:
    running, path = full_gateway
    mail = make_mail(attachments=[("scan.bin", "application/octet-stream", bytes(range(256)) * 2000)])  # 512 KB
    web = running.api(None)
    assert web.get("/readyz").status_code == 200

    reply = running.send(mail, "inkwell@mail.test")
    assert (reply.code, reply.text[:5]) == (452, "4.3.1")           # before: 451 4.3.0
    post = p.postmark_post({"OriginalRecipient": "inkwell@mail.test", "RawEmail": mail.decode("latin-1"),
                            "From": "guest@example.org"})
    answer = web.post(post.path, content=post.body, headers=post.headers)
    assert answer.status_code == 503 and "storage" in answer.json()["detail"]
    assert answer.headers["Retry-After"]
    ready = web.get("/readyz")
    assert ready.status_code == 503                                 # before: 200 "ok"
    assert ready.json()["writes"] == "storage full"
    assert _inbound_count(running) == 0

    raw = sqlite3.connect(path)                                    # the operator frees space
    raw.execute("DELETE FROM filler")
    raw.commit()
    raw.close()

    assert running.send(mail, "inkwell@mail.test").code == 250      # the sender's retry
    assert web.post(post.path, content=post.body, headers=post.headers).status_code == 200
    ready = web.get("/readyz")
    assert ready.status_code == 200 and ready.json()["writes"] == "ok"
    assert _inbound_count(running) == 2                              # nothing lost, nothing twice


def test_every_way_a_full_disk_arrives_is_recognised(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "tiny.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 3")
    with pytest.raises(sqlite3.OperationalError) as sqlite_full:
        conn.execute("INSERT INTO t VALUES (?)", (b"\0" * 100_000,))
    conn.close()
    assert is_storage_full(sqlite_full.value)
    assert is_storage_full(OperationalError("INSERT", {}, sqlite_full.value))          # as SQLAlchemy wraps it
    pg_full = psycopg.errors.DiskFull('could not extend file "base/16384/16385": No space left on device')
    assert is_storage_full(OperationalError("INSERT", {}, pg_full))
    with pytest.raises(OSError) as enospc:              # the kernel's own ENOSPC: /dev/full
        with open("/dev/full", "wb", buffering=0) as device:
            device.write(b"x")
    assert enospc.value.errno == errno.ENOSPC and is_storage_full(enospc.value)
    assert is_storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    try:
        try:
            raise enospc.value
        except OSError as inner:
            raise RuntimeError("writing the blob failed") from inner
    except RuntimeError as outer:
        assert is_storage_full(outer)
    assert not is_storage_full(sqlite3.OperationalError("database is locked"))
    assert not is_storage_full(OperationalError("SELECT", {}, psycopg.errors.AdminShutdown("terminating")))
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))


def test_write_health_recovers_after_a_success_or_its_window() -> None:
    health = WriteHealth(window=0.0)
    health.failed("storage full")
    assert health.failing() is None          # nothing written since, and the window is over
    health = WriteHealth(window=3600)
    health.failed("storage full")
    assert health.failing() == "storage full"
    health.succeeded()
    assert health.failing() is None
