"""Failover on a real PostgreSQL pair: the gateway follows the promoted standby by itself.

A synchronous primary and its streaming standby (tests/pg_cluster.py), and the gateway on the
multi-host URL `?host=primary&host=standby&target_session_attrs=read-write`, which libpq
reads as "the first of these that accepts writes". The primary is killed (pg_ctl stop -m
immediate, as a crash), and until the standby is promoted SMTP answers 451 and the API 503
with Retry-After; after the promotion both answer again without a restart, and every message
that got a 250 is on the new primary. (bench/failover_drill.py does the same under load.)
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.backup import pg_client
from gateway.backup.snapshot import take_backup
from gateway.store.db import read_tx
from gateway.store.tables import INBOUND
from tests import providers
from tests.conftest import make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.pg_cluster import PgCluster, scratch_dir


def multi_host_url(*clusters: PgCluster, db: str = "postgres") -> str:
    hosts = "&".join(f"host={cluster.host}" for cluster in clusters)
    return f"postgresql+psycopg://postgres@/{db}?{hosts}&target_session_attrs=read-write"


@pytest.fixture
def pair() -> Iterator[tuple[PgCluster, PgCluster]]:
    root = scratch_dir("gw-failover-")
    primary = PgCluster.primary(root)
    standby: PgCluster | None = None
    try:
        primary.start()
        primary.sql("CREATE DATABASE gateway")
        standby = primary.standby(root)
        standby.start()
        primary.sql("ALTER SYSTEM SET synchronous_standby_names = 'standby'")
        primary.sql("SELECT pg_reload_conf()")
        for _ in range(20000):  # bounded: the standby connects within a second or so
            if primary.sql("SELECT sync_state FROM pg_stat_replication") == [("sync",)]:
                break
        else:
            raise AssertionError("the standby never became synchronous")
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_primary_dies_standby_promoted_gateway_follows(pair: tuple[PgCluster, PgCluster], tmp_path: Path) -> None:
    primary, standby = pair
    running = start_gateway(make_settings(tmp_path, multi_host_url(primary, standby, db="gateway"),
                                          mailgun_signing_key=providers.MAILGUN_KEY))
    try:
        studio = running.add_studio("inkwell")

        def webhook() -> int:
            post = providers.mailgun_post(providers.mailgun_mime_form(make_mail(message_id=new_id()), studio.address))
            return running.api(None).post(post.path, content=post.body, headers=post.headers).status_code

        before = running.send(make_mail(message_id=new_id()), studio.address)
        assert before.code == 250

        primary.stop("immediate")
        refused = running.send(make_mail(message_id=new_id()), studio.address)
        assert refused.code == 451, refused
        listing = running.api(studio.token).get("/api/v1/conversations")
        assert listing.status_code == 503 and listing.headers["Retry-After"].isdigit()
        assert webhook() == 503
        assert running.api(None).get("/readyz").status_code == 503

        standby.promote()
        after = running.send(make_mail(message_id=new_id()), studio.address)
        assert after.code == 250, after
        assert running.api(studio.token).get("/api/v1/conversations").status_code == 200
        assert webhook() == 200
        assert running.api(None).get("/readyz").status_code == 200
        with read_tx(running.engine) as conn:
            stored = {row.id for row in conn.execute(select(INBOUND.c.id))}
        assert {before.inbound_id, after.inbound_id} <= stored
    finally:
        running.stop()


def test_backup_on_the_multi_host_url(pair: tuple[PgCluster, PgCluster], tmp_path: Path) -> None:
    """pg_dump gets the pair in libpq's own spelling (db1:5432,db2:5432): given SQLAlchemy's
    `?host=db1:5432&host=db2:5432`, libpq looked up "db1:5432" as a host name."""
    primary, standby = pair
    settings = make_settings(tmp_path, multi_host_url(primary, standby, db="gateway"))
    running = start_gateway(settings)
    try:
        running.add_studio("inkwell")
    finally:
        running.stop()
    archive = take_backup(settings, tmp_path / "backup.tar").path
    assert archive.stat().st_size > 0


def test_the_password_is_not_on_the_client_programs_command_line() -> None:
    """It goes in PGPASSWORD: a command line is readable by every local user (`ps`)."""
    for url in ("postgresql://gateway:s3cret@db1:5432/gateway",
                "postgresql://gateway:s3cret@/gateway?host=db1:5432&host=db2:5432&target_session_attrs=read-write"):
        conninfo, env = pg_client.target(url)
        assert "s3cret" not in conninfo and env["PGPASSWORD"] == "s3cret"
    assert pg_client.target("postgresql://gateway:s3cret@/gateway?host=db1:5432&host=db2:5433")[0] \
        == "postgresql://gateway@db1:5432,db2:5433/gateway"
