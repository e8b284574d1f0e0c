"""Files: the SQLite database and its WAL are 0600, the data directory 0700 (issue 18 "Files").

Under the usual umask 022 SQLite created the database 0644 and its WAL and shared-memory files
alike, and the data directory was 0755: every local user could read every studio's mail."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from gateway.store.db import make_engine, migrate
from tests.conftest import gateway_subprocess_env


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def test_a_new_database_and_its_wal_are_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "gateway.db"
    url = f"sqlite:///{database}"
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:  # an open connection keeps the WAL and shm files in place
            conn.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
            conn.execute(text("INSERT INTO probe VALUES (1)"))
            wal, shm = database.with_name("gateway.db-wal"), database.with_name("gateway.db-shm")
            assert wal.exists() and shm.exists()
            assert (mode(database), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        engine.dispose()
    assert mode(database.parent) == 0o700


def test_the_gateway_command_makes_an_older_install_private(tmp_path: Path) -> None:
    """An install from before: data directory 0755, database 0644 (as SQLite made them)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    sqlite3.connect(data / "gateway.db").close()
    assert (mode(data), mode(data / "gateway.db")) == (0o755, 0o644)
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATA_DIR=str(data), GATEWAY_MAIL_DOMAIN="mail.test", GATEWAY_SECRET_KEY="k" * 32)
    done = subprocess.run(gateway_command() + ["migrate"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (mode(data), mode(data / "gateway.db")) == (0o700, 0o600)


def test_a_shared_parent_directory_is_left_alone(tmp_path: Path) -> None:
    """A database pointed into an existing directory the gateway doesn't own as its data
    directory keeps that directory's mode; only the database file is made private."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    engine = make_engine(f"sqlite:///{shared / 'mail.db'}")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    assert (mode(shared), mode(shared / "mail.db")) == (0o755, 0o600)


def test_making_an_engine_keeps_the_locks_this_processs_connections_hold(tmp_path: Path) -> None:
    """Closing any descriptor of the database file drops every POSIX lock the process holds on
    it, SQLite's too: making a second engine (as the acceptor and the API's group commits do,
    with the first engine's connections open) must not open and close the existing file, or
    another process takes a write lock that a transaction here still holds, and a closing
    connection elsewhere removes the WAL under this one (sqlite.org/howtocorrupt.html 2.2)."""
    path = tmp_path / "data" / "gateway.db"
    url = f"sqlite:///{path}"
    make_engine(url).dispose()   # the file, made as the gateway makes it
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")   # in the WAL; this connection stays open
        make_engine(url, busy_timeout=0).dispose()
        # Another process opens, reads and closes: it must see that it is not the last one.
        subprocess.run([sys.executable, "-c", "import sqlite3, sys\n"
                        "c = sqlite3.connect(sys.argv[1]); c.execute('SELECT count(*) FROM t').fetchall(); c.close()",
                        str(path)], check=True, timeout=60)
        assert path.with_name(path.name + "-wal").exists(), "the WAL was removed under an open connection"
        conn.execute("INSERT INTO t VALUES (2)")
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
