"""Storage trouble answers 451 4.3.0 (the sender retries), stores nothing half, and recovers."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from sqlalchemy import select

from gateway.store.db import read_tx
from gateway.store.tables import INBOUND
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.mail import make_mail, new_id
from tests.tcp_proxy import TcpProxy


def _assert_451_then_recovers(running: RunningGateway, down: Callable[[], None], up: Callable[[], None], *,
                              unreachable: bool) -> None:
    studio = running.add_studio("inkwell")
    raw = make_mail(message_id=new_id())
    down()
    refused = running.send(raw, studio.address)
    assert refused.code == 451 and refused.text == "4.3.0 Temporary local problem, please try again later"
    if unreachable:  # a locked SQLite file is still readable, so only then is /readyz 503
        assert running.api(None).get("/readyz").status_code == 503
    up()
    accepted = running.send(raw, studio.address)
    assert accepted.code == 250
    assert running.api(None).get("/readyz").status_code == 200
    with read_tx(running.engine) as conn:
        assert [r.id for r in conn.execute(select(INBOUND.c.id))] == [accepted.inbound_id]
    assert [r.status for r in running.process()] == ["done"]


def test_sqlite_locked_by_another_process_answers_451_then_recovers(tmp_path: Path, sqlite_template: Path) -> None:
    import shutil

    path = tmp_path / "gateway.db"
    shutil.copyfile(sqlite_template, path)
    running = start_gateway(make_settings(tmp_path, f"sqlite:///{path}"))
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        def down() -> None:
            blocker.execute("BEGIN EXCLUSIVE")  # what a stuck writer or a backup tool can do

        def up() -> None:
            blocker.execute("ROLLBACK")

        _assert_451_then_recovers(running, down, up, unreachable=False)
    finally:
        blocker.close()
        running.stop()


def test_postgres_going_away_answers_451_then_recovers(tmp_path: Path, pg_database_url: str) -> None:
    database_url = pg_database_url
    url = urlparse(database_url)
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 5432) as proxy:
        proxied = database_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{proxy.port}")
        running = start_gateway(make_settings(tmp_path, proxied))
        try:
            _assert_451_then_recovers(running, proxy.block, proxy.unblock, unreachable=True)
        finally:
            running.stop()
