"""What a studio owner does with the plan: see it, subscribe (Stripe Checkout), cancel.

Cancelling keeps the product's promise to the letter:
- monthly: cancelled at once, and no further payment is ever taken (no final invoice, no
  proration); paid features end now;
- yearly: the remaining months are not refunded, so the studio keeps full use until the end
  of the paid period and nothing is charged again (cancel at period end).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import stripe
from sqlalchemy import Connection, Engine, select

from gateway.billing.entitlements import ACTIVE_PAUSE_STATES, PAID_PLANS, entitled
from gateway.store.tables import LOCKDOWN, PAYMENT_PAUSE
from gateway.billing.state import apply_subscription, read_subscription, subscription_row
from gateway.billing.stripe_api import BillingNotConfigured, StripeApi
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.store.tables import STUDIO

LIVE = ("active", "trialing", "past_due", "unpaid", "incomplete")


class BillingConflict(ValueError):
    """The request does not fit the current plan (answered 409 with this message)."""


@dataclass(frozen=True)
class PauseInfo:
    lockdown: str
    started_at: datetime
    ended_at: datetime | None
    state: str


@dataclass(frozen=True)
class BillingSummary:
    plan: str
    status: str
    paid_features: bool
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ends_at: datetime | None          # when paid features end, if they do
    payments_paused: bool
    paused_by: str | None             # the lockdown suspending payments now
    pauses: list[PauseInfo] = field(default_factory=list)


@dataclass(frozen=True)
class Cancellation:
    mode: str                  # immediately | at_period_end
    features_until: datetime   # paid features end then (now, for monthly)
    plan: str


def summary(conn: Connection, studio_id: int, settings: Settings, now: datetime | None = None) -> BillingSummary:
    now = now or utcnow()
    row = subscription_row(conn, studio_id)
    pauses = conn.execute(select(PAYMENT_PAUSE.c.state, PAYMENT_PAUSE.c.started_at, PAYMENT_PAUSE.c.ended_at, LOCKDOWN.c.name).join(
        LOCKDOWN, LOCKDOWN.c.id == PAYMENT_PAUSE.c.lockdown_id).where(PAYMENT_PAUSE.c.studio_id == studio_id)
        .order_by(PAYMENT_PAUSE.c.started_at, PAYMENT_PAUSE.c.id)).all()
    current = [p for p in pauses if p.state in ACTIVE_PAUSE_STATES]
    grace = timedelta(days=settings.billing_past_due_grace_days)
    plan = row.plan if row is not None else "free"
    status = row.status if row is not None else "none"
    ends_at = None
    if row is not None and plan in PAID_PLANS:
        if status == "canceled":
            ends_at = row.ended_at
        elif row.cancel_at_period_end:
            ends_at = row.current_period_end
        elif status == "past_due" and row.past_due_since is not None and not current:
            ends_at = row.past_due_since + grace
    return BillingSummary(
        plan=plan if status != "canceled" else "free", status=status,
        paid_features=entitled(row, bool(current), now, grace),
        current_period_end=row.current_period_end if row is not None else None,
        cancel_at_period_end=bool(row.cancel_at_period_end) if row is not None else False,
        ends_at=ends_at,
        payments_paused=bool(current) or bool(row is not None and row.collection_paused and status != "canceled"),
        paused_by=current[0].name if current else None,
        pauses=[PauseInfo(lockdown=p.name, started_at=p.started_at, ended_at=p.ended_at, state=p.state)
                for p in pauses])


def start_checkout(engine: Engine, api: StripeApi | None, settings: Settings, studio_id: int, plan: str) -> str:
    """A Stripe Checkout session for the plan; returns the URL the owner opens to pay."""
    price = {"monthly": settings.stripe_price_monthly, "yearly": settings.stripe_price_yearly}.get(plan)
    if price is None:
        raise BillingConflict("plan must be monthly or yearly")
    if api is None or not price:
        raise BillingNotConfigured("billing is not configured on this gateway")
    with read_tx(engine) as conn:
        studio = conn.execute(select(STUDIO.c.owner_email).where(STUDIO.c.id == studio_id)).one()
        row = subscription_row(conn, studio_id)
    if row is not None and row.plan in PAID_PLANS and row.status in LIVE:
        if row.cancel_at_period_end and row.current_period_end is not None:
            # A second subscription now would charge for months the cancelled one still covers.
            raise BillingConflict(f"the cancelled {row.plan} plan runs until {row.current_period_end:%Y-%m-%d}; "
                                  "subscribe again once it has ended")
        raise BillingConflict(f"the studio already has the {row.plan} plan ({row.status}); cancel it first")
    session = api.create_checkout(
        studio_id=studio_id, plan=plan, price_id=price, customer_id=row.stripe_customer_id if row else None,
        owner_email=studio.owner_email, return_url=settings.billing_return_url,
        idempotency_key=f"gw-checkout-{studio_id}-{uuid.uuid4().hex}")  # one key: tenacity's retries reuse it
    return session.url


def cancel(engine: Engine, api: StripeApi | None, settings: Settings, studio_id: int,
           now: datetime | None = None) -> Cancellation:
    """Cancel as the plan promises; repeating it answers the same."""
    now = now or utcnow()
    with read_tx(engine) as conn:
        row = subscription_row(conn, studio_id)
    if row is None or row.plan not in PAID_PLANS or row.stripe_subscription_id is None or row.status == "canceled":
        raise BillingConflict("the studio has no paid plan to cancel")
    if api is None:
        raise BillingNotConfigured("billing is not configured on this gateway")
    sub_id = row.stripe_subscription_id
    if row.plan == "monthly":
        answer = api.cancel_now(sub_id, idempotency_key=f"gw-cancel-now-{sub_id}")
    elif row.cancel_at_period_end:
        answer = None  # asked already: the same answer again, no second call
    else:
        answer = api.cancel_at_period_end(sub_id, idempotency_key=f"gw-cancel-at-period-end-{sub_id}")
    if answer is not None:
        with write_tx(engine) as conn:
            apply_subscription(conn, studio_id, read_subscription(answer, settings), as_of=None, now=now)
        with read_tx(engine) as conn:
            row = subscription_row(conn, studio_id)
    if row.plan == "monthly":
        return Cancellation(mode="immediately", features_until=row.ended_at or now, plan="monthly")
    return Cancellation(mode="at_period_end", features_until=row.current_period_end or now, plan="yearly")


def cancel_for_deletion(engine: Engine, api: StripeApi | None, settings: Settings, studio_id: int) -> None:
    """An account being deleted: end any live subscription at once, whatever the plan, so no
    further payment is taken from a studio that no longer exists. Idempotent: a retried
    confirmation calls it again, also after Stripe's idempotency keys expired (a day)."""
    with read_tx(engine) as conn:
        row = subscription_row(conn, studio_id)
    if row is None or row.stripe_subscription_id is None or row.status in ("canceled", "incomplete_expired"):
        return
    if api is None:
        raise BillingNotConfigured("the studio has a Stripe subscription but billing is not configured")
    sub_id = row.stripe_subscription_id
    try:
        answer = api.cancel_now(sub_id, idempotency_key=f"gw-cancel-now-{sub_id}")
    except stripe.InvalidRequestError:
        answer = api.subscription(sub_id)   # cancelled already (or gone): fine if Stripe says it is over
        if answer.get("status") not in ("canceled", "incomplete_expired"):
            raise
    with write_tx(engine) as conn:
        apply_subscription(conn, studio_id, read_subscription(answer, settings), as_of=None)
