"""The acceptor's promise at shutdown: whatever was handed over is stored and answered."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.store.db import make_engine, migrate, read_tx, write_tx
from gateway.store.tables import INBOUND
from gateway.inbound.acceptor import Acceptor, TemporaryFailure
from gateway.inbound.intake import Envelope
from gateway.settings import Settings
from gateway.access.studios import add_studio
from tests.conftest import make_settings
from tests.mail import make_mail


def test_stop_writes_and_answers_everything_queued_then_refuses(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")

    async def scenario() -> tuple[list[object], BaseException | None]:
        acceptor = Acceptor(engine, settings)
        await acceptor.start()
        envelope = Envelope("guest@example.org", ["inkwell@mail.test"])
        tasks = [asyncio.create_task(acceptor.accept(make_mail(subject=f"Anfrage {i}", from_=f"g{i}@example.org"),
                                                     envelope))
                 for i in range(25)]
        await asyncio.sleep(0)  # one loop turn: every task has handed its message over
        await acceptor.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await acceptor.accept(make_mail(), envelope)
        except TemporaryFailure as exc:
            return results, exc
        return results, None

    results, late = asyncio.run(scenario())
    assert [r for r in results if not isinstance(r, int)] == []
    assert isinstance(late, TemporaryFailure)
    with read_tx(engine) as conn:
        assert conn.execute(select(func.count()).select_from(INBOUND)).scalar_one() == 25


def test_acceptor_refuses_use_before_start(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError):
        asyncio.run(Acceptor(engine, settings).accept(b"x", Envelope("", [])))


def test_flood_guard_counts_the_messages_of_one_group_commit_too(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    from gateway.inbound.intake import FloodLimited, store_batch

    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        items = [(make_mail(subject=f"Anfrage {i}"), Envelope("guest@example.org", ["inkwell@mail.test"]))
                 for i in range(settings.flood_max_new_per_hour + 5)]
        results = store_batch(conn, items, settings, settings.secret())
    assert [type(r).__name__ for r in results] == (
        ["int"] * settings.flood_max_new_per_hour + ["FloodLimited"] * 5)
    assert all(isinstance(r, FloodLimited) for r in results[-5:])


def test_one_time_tokens_are_refused_on_reuse_within_and_across_group_commits(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    from gateway.inbound.intake import Replayed

    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")

    def envelope(token: str, source: str = "mailgun") -> Envelope:
        return Envelope("guest@example.org", ["inkwell@mail.test"], source=source, nonce=token)

    async def scenario() -> tuple[list[object], list[object]]:
        acceptor = Acceptor(engine, settings)
        await acceptor.start()
        try:
            # one group commit: two innocent messages around a token used twice
            first = await asyncio.gather(*(acceptor.accept(make_mail(subject=f"A {i}"), envelope(token))
                                           for i, token in enumerate(["t1", "t2", "t2", "t3"])),
                                         return_exceptions=True)
            # later commits: a known token among new ones, and the same token from another provider
            later = await asyncio.gather(*(acceptor.accept(make_mail(subject=f"B {i}"), envelope(token, source))
                                           for i, (token, source) in enumerate([("t4", "mailgun"), ("t1", "mailgun"),
                                                                                ("t1", "sendgrid")])),
                                         return_exceptions=True)
        finally:
            await acceptor.stop()
        return first, later

    first, later = asyncio.run(scenario())
    assert [type(r).__name__ for r in first] == ["int", "int", "Replayed", "int"]
    assert [type(r).__name__ for r in later] == ["int", "Replayed", "int"]
    assert isinstance(later[1], Replayed)
    with read_tx(engine) as conn:
        assert conn.execute(select(func.count()).select_from(INBOUND)).scalar_one() == 5


def test_each_id_of_a_group_commit_names_its_own_message(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    """store_batch writes a batch in one multi-row insert per table and hands the ids back in
    the batch's order (each sender's 250 names its own row); the same bytes twice are one blob."""
    import hashlib

    from gateway.inbound.intake import store_batch

    raws = [make_mail(subject=f"Anfrage {i}", from_=f"g{i}@example.org") for i in range(30)]
    raws[7] = raws[3]  # a retried delivery in the same batch: the same bytes, another envelope
    items = [(raw, Envelope(f"sender{i}@example.org", ["inkwell@mail.test"])) for i, raw in enumerate(raws)]
    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        ids = store_batch(conn, items, settings, settings.secret())
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(items)
    with read_tx(engine) as conn:
        rows = {r.id: r for r in conn.execute(select(INBOUND.c.id, INBOUND.c.mail_from, INBOUND.c.raw_sha256))}
    assert [(rows[i].mail_from, rows[i].raw_sha256) for i in ids] == [
        (f"sender{n}@example.org", hashlib.sha256(raw).hexdigest()) for n, raw in enumerate(raws)]


def test_a_kept_connection_that_died_costs_no_sender_a_retry(tmp_path: Path, pg_database_url: str) -> None:
    """PostgreSQL: the group commits' connection is kept without a pre-ping. Killed between two
    of them (a server restart, a failover, pg_terminate_backend), the next batch is written on
    a fresh connection and answered 250; with the database unreachable as well, 451."""
    from sqlalchemy import text

    settings = make_settings(tmp_path, pg_database_url)
    migrate(pg_database_url)
    engine = make_engine(pg_database_url)
    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
    envelope = Envelope("guest@example.org", ["inkwell@mail.test"])

    def terminate_others() -> int:
        with engine.connect() as conn:  # every session of this database but this one: the kept one too
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all())

    async def scenario() -> tuple[int, int, int, BaseException | None]:
        acceptor = Acceptor(engine, settings)
        await acceptor.start()
        kept_engine = acceptor._write_engine
        try:
            first = await acceptor.accept(make_mail(subject="Eins", from_="a@example.org"), envelope)
            assert await asyncio.to_thread(terminate_others) >= 1
            second = await acceptor.accept(make_mail(subject="Zwei", from_="b@example.org"), envelope)
            third = await acceptor.accept(make_mail(subject="Drei", from_="c@example.org"), envelope)
            # Now no fresh connection can be had either: the batch is refused, never answered 250.
            kept_engine = acceptor._write_engine
            acceptor._write_engine = make_engine(  # nothing listens on port 1
                kept_engine.url.set(port=1).render_as_string(hide_password=False), pre_ping=False)
            await asyncio.to_thread(terminate_others)
            try:
                await acceptor.accept(make_mail(subject="Vier", from_="d@example.org"), envelope)
            except TemporaryFailure as exc:
                return first, second, third, exc
            return first, second, third, None
        finally:
            await acceptor.stop()
            kept_engine.dispose()

    try:
        first, second, third, refused = asyncio.run(scenario())
        assert len({first, second, third}) == 3
        assert isinstance(refused, TemporaryFailure)
        with read_tx(engine) as conn:
            stored = conn.execute(select(INBOUND.c.id).order_by(INBOUND.c.id)).scalars().all()
        assert stored == [first, second, third]
    finally:
        engine.dispose()
