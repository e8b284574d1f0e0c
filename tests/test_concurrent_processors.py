"""Several worker processes on one database: each stored message is threaded exactly once."""
from __future__ import annotations

import threading

from sqlalchemy import func, select

from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.tables import INBOUND, MESSAGE
from gateway.inbound.intake import Envelope, store_batch
from gateway.inbound.processor import Processed, process_pending
from gateway.runtime import REACTIONS
from gateway.settings import Settings
from gateway.access.studios import add_studio
from tests.mail import make_mail


def test_two_processors_share_the_queue_without_doing_anything_twice(settings: Settings) -> None:
    setup = make_engine(settings.resolved_database_url)
    with write_tx(setup) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        mails = [(make_mail(subject=f"Anfrage {i}", from_=f"g{i % 40}@example.org"),
                  Envelope("guest@example.org", ["inkwell@mail.test"])) for i in range(200)]
        results = store_batch(conn, mails, settings, settings.secret())
    assert all(isinstance(r, int) for r in results)

    done: list[list[Processed]] = [[], []]
    barrier = threading.Barrier(2)

    def worker(slot: int) -> None:
        engine = make_engine(settings.resolved_database_url, busy_timeout=30)  # its own pool, like a process
        barrier.wait()
        while batch := process_pending(engine, settings, REACTIONS, limit=7):
            done[slot].extend(batch)
        engine.dispose()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    processed = [r.inbound_id for r in done[0] + done[1]]
    assert sorted(processed) == sorted(r for r in results if isinstance(r, int))  # each once
    assert {r.status for r in done[0] + done[1]} == {"done"}
    assert done[0] and done[1], "both processors should have taken a share"
    with read_tx(setup) as conn:
        assert conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one() == 200
        assert conn.execute(select(func.count()).select_from(INBOUND).where(INBOUND.c.status != "done")).scalar_one() == 0
    setup.dispose()


def test_threading_waits_while_mail_streams_in_but_never_longer_than_the_limit(settings: Settings) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from gateway.store.models import utcnow
    from gateway.inbound.processor import should_defer

    engine = make_engine(settings.resolved_database_url)
    assert settings.process_max_defer == 15
    assert not should_defer(engine, settings)  # nothing waiting
    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        [first, _] = store_batch(conn, [(make_mail(), Envelope("g@example.org", ["inkwell@mail.test"]))] * 2,
                                      settings, settings.secret())
    now = utcnow()
    assert should_defer(engine, settings, now)  # the newest arrived just now
    assert not should_defer(engine, settings, now + timedelta(seconds=1))  # the stream has paused
    with write_tx(engine) as conn:  # the oldest has waited past the limit while mail keeps coming
        conn.execute(update(INBOUND).where(INBOUND.c.id == first).values(received_at=now - timedelta(seconds=16)))
    assert not should_defer(engine, settings, now)
    assert not should_defer(engine, settings.model_copy(update={"process_max_defer": 0}), now)
    engine.dispose()
