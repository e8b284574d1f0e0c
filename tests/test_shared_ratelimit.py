"""The brakes on guessing tokens and deletion codes are shared through the database: several
web processes on one database give a guesser one budget between them, not one each.

Two real gateways (web role) on one database over real HTTP, and the limiter itself on two
engines; SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select

from gateway.access.ratelimit import SharedFailureLimiter, count_both
from gateway.settings import Settings
from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.tables import RATE_LIMIT
from tests.conftest import RunningGateway, start_gateway

CONVERSATIONS = "/api/v1/conversations"


@pytest.fixture
def two_webs(settings: Settings) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    first = start_gateway(settings, roles=("web",))
    second = start_gateway(settings, roles=("web",))
    try:
        yield first, second
    finally:
        second.stop()
        first.stop()


def test_two_web_processes_share_one_budget_of_failed_tokens(two_webs: tuple[RunningGateway, RunningGateway]) -> None:
    """Before: each process counted its own 5 failures of the 10 and nobody was blocked."""
    first, second = two_webs
    studio = first.add_studio("inkwell")
    for attempt in range(10):  # another prefix each time: the address alone is counted
        assert (first, second)[attempt % 2].api(f"gw_{attempt:02d}guess").get(CONVERSATIONS).status_code == 401
    for web in (first, second):
        blocked = web.api("gw_10guess").get(CONVERSATIONS)
        assert blocked.status_code == 429 and 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert web.api(studio.token).get(CONVERSATIONS).status_code == 200   # never the valid token


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engines(settings: Settings) -> Iterator[tuple[Engine, Engine]]:
    pair = (make_engine(settings.resolved_database_url, busy_timeout=10.0),
            make_engine(settings.resolved_database_url, busy_timeout=10.0))
    yield pair
    for engine in pair:
        engine.dispose()


def test_counts_from_two_engines_add_up_exactly_and_the_block_ends_on_time(engines: tuple[Engine, Engine]) -> None:
    clock = Clock()
    limiters = [SharedFailureLimiter(engine, "auth", max_failures=4 * 25, window=60.0, clock=clock)
                for engine in engines]

    def fail(limiter: SharedFailureLimiter) -> None:
        for _ in range(25):
            limiter.failure("192.0.2.1")

    threads = [threading.Thread(target=fail, args=(limiters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [limiter.retry_after("192.0.2.1") for limiter in limiters] == [60, 60]   # one lost: still open
    assert limiters[0].retry_after("192.0.2.2") is None
    other_scope = SharedFailureLimiter(engines[1], "deletion_code", clock=clock)
    assert other_scope.retry_after("192.0.2.1") is None   # a budget of its own

    clock.now += timedelta(seconds=59.5)
    assert limiters[1].retry_after("192.0.2.1") == 1
    clock.now += timedelta(seconds=0.5)
    assert limiters[0].retry_after("192.0.2.1") is None


def test_failures_outside_the_window_start_a_new_count_and_old_rows_go(engines: tuple[Engine, Engine]) -> None:
    clock = Clock()
    limiter = SharedFailureLimiter(engines[0], "auth", max_failures=3, window=60.0, clock=clock)
    limiter.failure("192.0.2.1")
    limiter.failure("192.0.2.1")
    clock.now += timedelta(seconds=61)
    limiter.failure("192.0.2.1")
    limiter.failure("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") is None   # 2 in this window
    limiter.failure("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 60
    clock.now += timedelta(seconds=61)
    limiter.failure("198.51.100.9")                   # any write drops what says nothing any more
    with read_tx(engines[0]) as conn:
        assert list(conn.execute(select(RATE_LIMIT.c.key)).scalars()) == ["198.51.100.9"]
        assert conn.execute(select(func.count()).select_from(RATE_LIMIT)).scalar_one() == 1


def test_two_budgets_counted_in_one_statement_keep_their_own_windows_and_blocks(engines: tuple[Engine, Engine]) -> None:
    """count_both (the inquiry form's client address and guest address in one upsert) counts,
    restarts a passed window and blocks each row by its own limiter, as two counts would."""
    clock = Clock()
    short = SharedFailureLimiter(engines[0], "form_ip", max_failures=3, window=60.0, clock=clock)
    long = SharedFailureLimiter(engines[0], "form_address", max_failures=2, window=3600.0, clock=clock)

    def count() -> None:
        with write_tx(engines[0]) as conn:
            count_both(conn, (short, "192.0.2.1"), (long, "1:guest@example.org"))

    count()
    clock.now += timedelta(seconds=61)     # the short window has passed, the long one has not
    count()
    assert short.retry_after("192.0.2.1") is None                  # 1 in its new window
    assert long.retry_after("1:guest@example.org") == 3600         # its 2nd in its window: blocked
    count()
    count()
    assert short.retry_after("192.0.2.1") == 60                     # its 3rd in its window
    with write_tx(engines[0]) as conn:   # one key in both places: counted twice, not refused
        count_both(conn, (short, "192.0.2.9"), (short, "192.0.2.9"))
    with read_tx(engines[0]) as conn:
        assert conn.execute(select(RATE_LIMIT.c.failures).where(RATE_LIMIT.c.key == "192.0.2.9")).scalar_one() == 2
