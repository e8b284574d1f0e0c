"""A worker process that dies holding claimed mail: `gateway serve` puts that mail back at once
(processor.release_claims_of), without waiting out the five-minute lease, and only that mail."""
from __future__ import annotations

from sqlalchemy import Engine, select, update

from gateway.access.studios import add_studio
from gateway.inbound.intake import Envelope, store_batch
from gateway.inbound.processor import claim, claimer, process_pending, release_claims_of
from gateway.runtime import REACTIONS
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import INBOUND
from tests.mail import make_mail


def _store(engine: Engine, settings: Settings, count: int) -> list[int]:
    with write_tx(engine) as conn:
        add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        ids = store_batch(conn, [(make_mail(subject=f"Anfrage {i}", from_=f"g{i}@example.org"),
                                  Envelope(f"g{i}@example.org", ["inkwell@mail.test"])) for i in range(count)],
                          settings, settings.secret())
    return [int(i) for i in ids]  # type: ignore[arg-type]


def _rows(engine: Engine) -> dict[int, tuple[str, int, str | None]]:
    with read_tx(engine) as conn:
        return {r.id: (r.status, r.attempts, r.claimed_by) for r in
                conn.execute(select(INBOUND.c.id, INBOUND.c.status, INBOUND.c.attempts, INBOUND.c.claimed_by))}


def test_a_claim_names_its_process_and_a_dead_holder_s_claims_come_back(settings: Settings, engine: Engine) -> None:
    ids = _store(engine, settings, 3)
    claimed = claim(engine, settings, 3)
    assert [c.id for c in claimed] == ids
    assert {row[2] for row in _rows(engine).values()} == {claimer()}
    with write_tx(engine) as conn:      # another process on another host holds the last one
        conn.execute(update(INBOUND).where(INBOUND.c.id == ids[2]).values(claimed_by="elsewhere:4242"))

    assert release_claims_of(engine, claimer()) == 2
    rows = _rows(engine)
    assert [rows[i] for i in ids] == [("pending", 1, None), ("pending", 1, None), ("processing", 1, "elsewhere:4242")]
    assert release_claims_of(engine, claimer()) == 0     # nothing twice

    done = process_pending(engine, settings, REACTIONS, limit=10)
    assert [d.inbound_id for d in done] == ids[:2] and {d.status for d in done} == {"done"}


def test_mail_that_kills_its_worker_every_time_is_still_set_aside(settings: Settings, engine: Engine) -> None:
    """Freed claims keep their attempt: a poison message stops after process_max_attempts deaths."""
    (inbound_id,) = _store(engine, settings, 1)
    for _ in range(settings.process_max_attempts):
        assert [c.id for c in claim(engine, settings, 1)] == [inbound_id]
        assert release_claims_of(engine, claimer()) == 1        # the worker died with it
    assert claim(engine, settings, 1) == []
    status, attempts, _ = _rows(engine)[inbound_id]
    assert (status, attempts) == ("quarantined", settings.process_max_attempts)
