"""SQLite writers of several processes take turns on a file lock (gateway/store/writers.py).

Another process is a real one (multiprocessing, spawn): flock excludes open files of other
processes, never two users of one open file, so a thread would not show it.
"""
from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from gateway.store.db import make_engine, write_tx
from gateway.store.writers import SUFFIX, writers_of


def _hold(database: str, channel: Connection) -> None:
    """In another process: hold the writers' lock until told to let go."""
    writers = writers_of(Path(database))
    channel.send(writers.acquire(5.0))
    channel.recv()
    writers.release()
    channel.send("released")


@pytest.fixture
def holder(tmp_path: Path):  # type: ignore[no-untyped-def]
    database = tmp_path / "gateway.db"
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_hold, args=(str(database), theirs), daemon=True)
    process.start()
    try:
        assert ours.recv() is True      # it holds the lock now
        yield database, ours
    finally:
        process.kill()
        process.join(5)


def test_a_writer_waits_for_another_process_and_gives_up_after_the_busy_timeout(holder) -> None:  # type: ignore[no-untyped-def]
    database, _ = holder
    engine = make_engine(f"sqlite:///{database}", busy_timeout=0.2)
    try:
        with pytest.raises(OperationalError, match="another process"), write_tx(engine):
            pass
    finally:
        engine.dispose()


def test_a_writer_goes_on_once_the_other_process_lets_go(holder) -> None:  # type: ignore[no-untyped-def]
    database, channel = holder
    channel.send("go")
    assert channel.recv() == "released"
    engine = make_engine(f"sqlite:///{database}", busy_timeout=0.2)
    try:
        with write_tx(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        assert (database.parent / (database.name + SUFFIX)).stat().st_mode & 0o077 == 0  # private, like the database
    finally:
        engine.dispose()


def test_a_nested_write_keeps_the_lock_until_the_outer_one_ends(tmp_path: Path) -> None:
    writers = writers_of(tmp_path / "gateway.db")
    assert writers.acquire(0.1)
    assert writers.acquire(0.1)     # the same thread again (write_tx within write_tx)
    writers.release()
    assert writers._depth == 1      # still held: the outer transaction has not ended
    writers.release()
    assert writers._depth == 0
