"""Lockdowns: while one lasts, every payment of the studios in its scope is suspended.

The promise is absolute ("alle Zahlungen ausnahmslos ausgesetzt"), and an operator may run
`gateway lockdown start` twice, or again after it crashed half-way, so the work is a
reconciliation, not a sequence of steps: the database records the intent first (one
`payment_pause` row per lockdown and studio, state `pausing`), then Stripe is asked with an
idempotency key naming exactly that change, then the row is marked `paused`. Whatever was
interrupted is picked up by the next run, or by the worker, which reconciles periodically.
Ending works the same way backwards (`resuming` → `resumed`), and a studio still covered by
another active lockdown stays paused.

Stripe's `pause_collection` with behavior `void` keeps the service running and voids every
invoice of the paused period, so nothing is charged later either.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import stripe
from sqlalchemy import Connection, Engine, and_, or_, select, update

from gateway.store.tables import SUBSCRIPTION
from gateway.billing.state import apply_subscription, read_subscription
from gateway.billing.stripe_api import StripeApi
from gateway.store.db import insert_ignore, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import STUDIO, LOCKDOWN, PAYMENT_PAUSE

log = logging.getLogger(__name__)
# Subscriptions that still take payments: these are the ones a lockdown pauses.
COLLECTING = ("active", "trialing", "past_due", "unpaid", "incomplete")


class LockdownError(ValueError):
    """A refusal the operator can act on; the message says what to do."""


@dataclass
class Report:
    lockdown: str
    paused: list[str] = field(default_factory=list)     # studio slugs paused by this run
    resumed: list[str] = field(default_factory=list)
    unchanged: int = 0                                   # pauses already in their right state
    failed: list[str] = field(default_factory=list)      # "slug: reason", to be retried by a rerun


@dataclass(frozen=True)
class LockdownInfo:
    id: int
    name: str
    countries: list[str]
    started_at: datetime
    ended_at: datetime | None
    pauses: dict[str, int]   # state -> count


def parse_countries(values: list[str] | None) -> list[str]:
    countries = sorted({v.strip().upper() for v in values or [] for v in v.split(",") if v.strip()})
    for country in countries:
        if len(country) != 2 or not country.isalpha() or not country.isascii():
            raise LockdownError(f"{country!r} is not a two-letter ISO 3166 country code such as DE")
    return countries


def start_lockdown(engine: Engine, api: StripeApi, name: str, countries: list[str],
                   now: datetime | None = None) -> Report:
    """Record the lockdown (once) and pause every paid subscription in its scope."""
    name = name.strip()
    if not name or len(name) > 200 or any(c in name for c in "\r\n\0"):
        raise LockdownError("the lockdown name must be one line of at most 200 characters")
    wanted = ",".join(parse_countries(countries))
    with write_tx(engine) as conn:
        conn.execute(insert_ignore(conn, LOCKDOWN).values(name=name, countries=wanted, started_at=now or utcnow()))
        row = conn.execute(select(LOCKDOWN).where(LOCKDOWN.c.name == name)).one()
    if row.ended_at is not None:
        raise LockdownError(f"lockdown {name!r} ended on {row.ended_at:%Y-%m-%d}; start a new one with another name")
    if row.countries != wanted:
        raise LockdownError(f"lockdown {name!r} is running for {row.countries or 'all countries'}; "
                            f"start another lockdown for other countries")
    return reconcile(engine, api, lockdown_id=row.id, now=now)


def end_lockdown(engine: Engine, api: StripeApi, name: str, now: datetime | None = None) -> Report:
    """Mark the lockdown ended (once) and resume the payments it paused."""
    with write_tx(engine) as conn:
        row = conn.execute(select(LOCKDOWN).where(LOCKDOWN.c.name == name.strip())).first()
        if row is None:
            raise LockdownError(f"there is no lockdown named {name!r} (see `gateway lockdown status`)")
        conn.execute(update(LOCKDOWN).where(LOCKDOWN.c.id == row.id, LOCKDOWN.c.ended_at.is_(None))
                     .values(ended_at=now or utcnow()))
    return reconcile(engine, api, lockdown_id=row.id, now=now)


def lockdown_status(engine: Engine) -> list[LockdownInfo]:
    with read_tx(engine) as conn:
        lockdowns = conn.execute(select(LOCKDOWN).order_by(LOCKDOWN.c.started_at, LOCKDOWN.c.id)).all()
        counts: dict[int, dict[str, int]] = {}
        for pause in conn.execute(select(PAYMENT_PAUSE.c.lockdown_id, PAYMENT_PAUSE.c.state)):
            per = counts.setdefault(pause.lockdown_id, {})
            per[pause.state] = per.get(pause.state, 0) + 1
    return [LockdownInfo(id=r.id, name=r.name, countries=[c for c in r.countries.split(",") if c],
                         started_at=r.started_at, ended_at=r.ended_at, pauses=counts.get(r.id, {})) for r in lockdowns]


def in_scope(countries: str) -> Any:
    """The studios a lockdown covers: its countries, or every studio when it names none."""
    codes = [c for c in countries.split(",") if c]
    return STUDIO.c.country.in_(codes) if codes else STUDIO.c.id.is_not(None)


def record_pauses(conn: Connection, lockdown_id: int | None = None, studio_id: int | None = None,
                  now: datetime | None = None) -> int:
    """Intent first: a `pausing` row for every collecting paid subscription an active lockdown
    covers and that has none yet. Returns how many were recorded. Called by `start` and by
    the Stripe webhook when a studio subscribes during a lockdown."""
    query = select(LOCKDOWN).where(LOCKDOWN.c.ended_at.is_(None))
    if lockdown_id is not None:
        query = query.where(LOCKDOWN.c.id == lockdown_id)
    recorded = 0
    # In id order, lockdowns and studios: pauses are settled (and reported) in the order their
    # rows were made, which PostgreSQL's join would otherwise pick afresh for each plan.
    for lockdown in conn.execute(query.order_by(LOCKDOWN.c.id)).all():
        subs = select(SUBSCRIPTION.c.studio_id, SUBSCRIPTION.c.stripe_subscription_id).join(
            STUDIO, STUDIO.c.id == SUBSCRIPTION.c.studio_id).where(
            in_scope(lockdown.countries), SUBSCRIPTION.c.plan.in_(("monthly", "yearly")),
            SUBSCRIPTION.c.status.in_(COLLECTING), SUBSCRIPTION.c.stripe_subscription_id.is_not(None))
        if studio_id is not None:
            subs = subs.where(SUBSCRIPTION.c.studio_id == studio_id)
        for sub in conn.execute(subs.order_by(SUBSCRIPTION.c.studio_id)).all():
            recorded += conn.execute(insert_ignore(conn, PAYMENT_PAUSE).values(
                lockdown_id=lockdown.id, studio_id=sub.studio_id, stripe_subscription_id=sub.stripe_subscription_id,
                state="pausing", started_at=now or utcnow()).returning(PAYMENT_PAUSE.c.id)).first() is not None
    return recorded


def reconcile(engine: Engine, api: StripeApi, lockdown_id: int | None = None, studio_id: int | None = None,
              now: datetime | None = None) -> Report:
    """Bring Stripe and the pause records in line with the lockdowns: record missing pauses,
    finish interrupted pauses and resumes. Safe to run any number of times, concurrently too."""
    with write_tx(engine) as conn:
        record_pauses(conn, lockdown_id, studio_id, now)
        name = "all" if lockdown_id is None else conn.execute(
            select(LOCKDOWN.c.name).where(LOCKDOWN.c.id == lockdown_id)).scalar_one()
    report = Report(lockdown=name)
    for pause in _pending(engine, lockdown_id, studio_id):
        _settle(engine, api, pause, report, now)
    with read_tx(engine) as conn:
        settled = select(PAYMENT_PAUSE.c.id).where(PAYMENT_PAUSE.c.state.in_(("paused", "resumed")))
        if lockdown_id is not None:
            settled = settled.where(PAYMENT_PAUSE.c.lockdown_id == lockdown_id)
        if studio_id is not None:
            settled = settled.where(PAYMENT_PAUSE.c.studio_id == studio_id)
        report.unchanged = len(conn.execute(settled).all()) - len(report.paused) - len(report.resumed)
    return report


def _pending(engine: Engine, lockdown_id: int | None, studio_id: int | None) -> list[Any]:
    """Pauses whose Stripe side is not done: to pause (lockdown active) or to resume (ended)."""
    with read_tx(engine) as conn:
        query = select(PAYMENT_PAUSE.c.id, PAYMENT_PAUSE.c.studio_id, PAYMENT_PAUSE.c.lockdown_id, PAYMENT_PAUSE.c.state,
                       PAYMENT_PAUSE.c.stripe_subscription_id, STUDIO.c.slug, LOCKDOWN.c.ended_at).join(
            LOCKDOWN, LOCKDOWN.c.id == PAYMENT_PAUSE.c.lockdown_id).join(STUDIO, STUDIO.c.id == PAYMENT_PAUSE.c.studio_id).where(or_(
                and_(LOCKDOWN.c.ended_at.is_(None), PAYMENT_PAUSE.c.state == "pausing"),
                and_(LOCKDOWN.c.ended_at.is_not(None), PAYMENT_PAUSE.c.state.in_(("pausing", "paused", "resuming")))))
        if lockdown_id is not None:
            query = query.where(PAYMENT_PAUSE.c.lockdown_id == lockdown_id)
        if studio_id is not None:
            query = query.where(PAYMENT_PAUSE.c.studio_id == studio_id)
        return list(conn.execute(query.order_by(PAYMENT_PAUSE.c.id)).all())


def _settle(engine: Engine, api: StripeApi, pause: Any, report: Report, now: datetime | None) -> None:
    resuming = pause.ended_at is not None
    target, expected = ("resumed", ("pausing", "paused", "resuming")) if resuming else ("paused", ("pausing",))
    key = f"gw-lockdown-{pause.lockdown_id}-{'resume' if resuming else 'pause'}-{pause.studio_id}-" \
          f"{pause.stripe_subscription_id}"

    def needs_stripe(conn: Connection) -> bool:
        if resuming and _still_covered(conn, pause):
            return False  # another lockdown still suspends this studio's payments
        sub = conn.execute(select(SUBSCRIPTION.c.status, SUBSCRIPTION.c.stripe_subscription_id).where(
            SUBSCRIPTION.c.studio_id == pause.studio_id)).first()
        # A subscription that is over has nothing to pause or resume.
        return sub is not None and sub.stripe_subscription_id == pause.stripe_subscription_id \
            and sub.status != "canceled"

    def ask_stripe() -> dict[str, Any]:
        call: Callable[[str, str], dict[str, Any]] = api.resume_collection if resuming else api.pause_collection
        try:
            return call(pause.stripe_subscription_id, key)
        except stripe.InvalidRequestError as exc:
            # Cancelled or deleted at Stripe meanwhile: record what Stripe says and move on.
            log.warning("lockdown: Stripe refused to %s %s: %s", "resume" if resuming else "pause",
                        pause.slug, exc.user_message or exc.code)
            return api.subscription(pause.stripe_subscription_id)

    def record(conn: Connection, answer: dict[str, Any] | None) -> None:
        if answer is not None:
            apply_subscription(conn, pause.studio_id, read_subscription(answer, api.settings), as_of=None)
        _mark(conn, pause.id, expected, target, now)

    try:
        if engine.dialect.name == "postgresql":
            # Claim the row: a concurrent run skips it instead of asking Stripe twice.
            with write_tx(engine) as conn:
                claimed = conn.execute(select(PAYMENT_PAUSE.c.id).where(PAYMENT_PAUSE.c.id == pause.id, PAYMENT_PAUSE.c.state.in_(expected))
                                       .with_for_update(skip_locked=True)).first()
                if claimed is None:
                    return
                record(conn, ask_stripe() if needs_stripe(conn) else None)
        else:
            # SQLite: never hold its single write lock across a network call; the idempotency
            # key makes a concurrent duplicate call harmless and _mark checks the state.
            with read_tx(engine) as conn:
                needed = needs_stripe(conn)
            answer = ask_stripe() if needed else None
            with write_tx(engine) as conn:
                record(conn, answer)
    except Exception as exc:  # noqa: BLE001 - reported per studio; the next run retries
        log.warning("lockdown: %s of %s failed: %s", target, pause.slug, exc)
        report.failed.append(f"{pause.slug}: {exc}")
        return
    (report.resumed if resuming else report.paused).append(pause.slug)


def _mark(conn: Connection, pause_id: int, expected: tuple[str, ...], target: str, now: datetime | None) -> None:
    values: dict[str, Any] = {"state": target}
    if target == "resumed":
        values["ended_at"] = now or utcnow()
    conn.execute(update(PAYMENT_PAUSE).where(PAYMENT_PAUSE.c.id == pause_id, PAYMENT_PAUSE.c.state.in_(expected)).values(**values))


def _still_covered(conn: Connection, pause: Any) -> bool:
    return conn.execute(select(PAYMENT_PAUSE.c.id).join(LOCKDOWN, LOCKDOWN.c.id == PAYMENT_PAUSE.c.lockdown_id).where(
        PAYMENT_PAUSE.c.studio_id == pause.studio_id, PAYMENT_PAUSE.c.id != pause.id, LOCKDOWN.c.ended_at.is_(None),
        PAYMENT_PAUSE.c.state.in_(("pausing", "paused")))).first() is not None
