"""Synchronous replication: a COMMIT the standby did not confirm is never acknowledged.

On a throwaway cluster of our own (tests/pg_cluster.py) whose `synchronous_standby_names`
names a standby that never connects, every COMMIT waits for ever, as when the only standby is
down. Cancelling such a COMMIT (pg_cancel_backend, as a statement timeout would) makes
PostgreSQL commit locally and return success with the WARNING "might not have been
replicated": that must be a failure (451), and once a COMMIT has waited past
GATEWAY_DB_COMMIT_DEADLINE new mail gets 451 at once and /readyz 503.
"""
from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from gateway.store.db import commit_stalled, make_engine, read_tx, write_tx
from gateway.store.tables import INBOUND
from tests.conftest import SmtpReply, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.pg_cluster import PgCluster, scratch_dir

WAITING = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    root = scratch_dir("gw-syncrep-")
    primary = PgCluster.primary(root)
    try:
        primary.start()
        yield primary
    finally:
        primary.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _standby_required(cluster: PgCluster, name: str) -> None:
    """'' lets commits through; a name that never connects makes every COMMIT wait for it.
    Setting it back to '' also releases the COMMITs waiting now."""
    cluster.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
    cluster.sql("SELECT pg_reload_conf()")
    # pg_reload_conf only signals: wait until a new session sees the setting.
    for _ in range(1000):
        if cluster.sql("SHOW synchronous_standby_names")[0][0] == name:
            return
    raise AssertionError("the setting was not reloaded")


def _waiting_commits(cluster: PgCluster, count: int) -> list[int]:
    """The backends waiting for the standby, once there are `count` of them (bounded poll)."""
    for _ in range(20000):
        pids = [int(row[0]) for row in cluster.sql(WAITING)]  # type: ignore[call-overload]
        if len(pids) >= count:
            return pids
    raise AssertionError(f"never saw {count} COMMIT(s) waiting for the standby")


@pytest.fixture
def database(cluster: PgCluster) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex}"
    _standby_required(cluster, "")
    cluster.sql(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    _standby_required(cluster, "")


def test_cancelled_commit_warning_is_a_failure(cluster: PgCluster, database: str) -> None:
    engine = make_engine(database)
    try:
        with write_tx(engine) as conn:
            conn.execute(text("CREATE TABLE probe (n int)"))
        _standby_required(cluster, "absent_standby")
        outcome: list[Exception | None] = []

        def insert() -> None:
            try:
                with write_tx(engine) as conn:
                    conn.execute(text("INSERT INTO probe VALUES (1)"))
                outcome.append(None)
            except Exception as exc:  # handed to the test thread
                outcome.append(exc)

        writer = threading.Thread(target=insert)
        writer.start()
        [pid] = _waiting_commits(cluster, 1)
        cluster.sql(f"SELECT pg_cancel_backend({pid})")
        writer.join(timeout=60)
        assert not writer.is_alive()
        assert isinstance(outcome[0], OperationalError), outcome
        assert "might not have been replicated" in str(outcome[0])
        # PostgreSQL did commit it locally: that is why a plain success would have been a lie.
        _standby_required(cluster, "")
        with read_tx(engine) as conn:
            assert conn.execute(text("SELECT count(*) FROM probe")).scalar() == 1
    finally:
        engine.dispose()


def test_commit_waiting_past_the_deadline_refuses_new_mail(cluster: PgCluster, database: str,
                                                           tmp_path: Path) -> None:
    settings = make_settings(tmp_path, database, db_commit_deadline=1.0)
    running = start_gateway(settings)
    try:
        studio = running.add_studio("inkwell")
        assert running.send(make_mail(message_id=new_id()), studio.address).code == 250
        _standby_required(cluster, "absent_standby")
        first: list[SmtpReply] = []
        sender = threading.Thread(target=lambda: first.append(
            running.send(make_mail(message_id=new_id()), studio.address)))
        sender.start()
        [pid] = _waiting_commits(cluster, 1)
        # Mail handed over while that COMMIT holds the acceptor's slot waits in its queue (it
        # was never written): past the deadline it is answered 451 too, without a cancel.
        queued: list[SmtpReply] = []
        queued_sender = threading.Thread(target=lambda: queued.append(
            running.send(make_mail(message_id=new_id()), studio.address)))
        queued_sender.start()
        while commit_stalled(settings.db_commit_deadline) is None:  # bounded by the deadline
            sender.join(timeout=0.05)
        queued_sender.join(timeout=30)
        assert queued and queued[0].code == 451, queued
        # The COMMIT still waits (never cancelled by us); new mail is refused at once.
        refused = running.send(make_mail(message_id=new_id()), studio.address)
        assert refused.code == 451
        ready = running.api(None).get("/readyz")
        assert ready.status_code == 503
        assert "synchronous standby" in ready.json()["writes"]
        assert [int(r[0]) for r in cluster.sql(WAITING)] == [pid]  # type: ignore[call-overload]
        # An operator's cancel (or a statement timeout) ends the wait: not acknowledged either.
        cluster.sql(f"SELECT pg_cancel_backend({pid})")
        sender.join(timeout=60)
        assert first and first[0].code == 451, first
        _standby_required(cluster, "")
        assert running.send(make_mail(message_id=new_id()), studio.address).code == 250
        assert running.api(None).get("/readyz").status_code == 200
        with read_tx(running.engine) as conn:
            assert conn.execute(select(INBOUND.c.id)).all()  # the stored mail is all there
    finally:
        _standby_required(cluster, "")
        running.stop()


@pytest.mark.parametrize(("configured", "used"), [("off", "on"), ("local", "on"), ("remote_write", "on"),
                                                  ("on", "on"), ("remote_apply", "remote_apply")])
def test_commits_are_at_least_synchronous_and_remote_apply_is_kept(cluster: PgCluster, database: str,
                                                                   configured: str, used: str) -> None:
    """A weaker level is raised to `on`; an operator's `remote_apply` (a 250'd mail visible on
    the standby at once) is not lowered to `on`."""
    cluster.sql(f"ALTER DATABASE {database.rsplit('/', 1)[1]} SET synchronous_commit = {configured}")
    engine = make_engine(database)
    try:
        with read_tx(engine) as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == used
    finally:
        engine.dispose()
