"""Whether a studio may use paid features: the one check every feature calls.

The rules are the studio promises: paid features while the subscription is active or trialing
(a yearly plan cancelled at period end stays active until that end), while payments are
paused by a lockdown, and for a grace period while a payment is late (`past_due`). Anything
else, and every studio without a subscription, is on the free plan.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.store.tables import SUBSCRIPTION, PAYMENT_PAUSE

PAID_PLANS = frozenset({"monthly", "yearly"})
ACTIVE_PAUSE_STATES = ("pausing", "paused")


def has_paid_features(conn: Connection, studio_id: int, settings: Settings, now: datetime | None = None) -> bool:
    """True while the studio's subscription grants paid features (see the module's rules)."""
    now = now or utcnow()
    row = conn.execute(select(SUBSCRIPTION).where(SUBSCRIPTION.c.studio_id == studio_id)).first()
    paused = conn.execute(select(PAYMENT_PAUSE.c.id).where(
        PAYMENT_PAUSE.c.studio_id == studio_id, PAYMENT_PAUSE.c.state.in_(ACTIVE_PAUSE_STATES)).limit(1)).first() is not None
    return entitled(row, paused, now, timedelta(days=settings.billing_past_due_grace_days))


def entitled(row: Any, paused_by_lockdown: bool, now: datetime, grace: timedelta) -> bool:
    """The rule itself, on a subscription row (or None) already read."""
    if row is None or row.plan not in PAID_PLANS:
        return False
    if row.status in ("canceled", "incomplete_expired", "unpaid", "none"):
        return False
    if row.cancel_at_period_end and row.current_period_end is not None and now >= row.current_period_end:
        return False  # the paid period of a cancelled plan is over, even before Stripe says so
    if paused_by_lockdown:
        return True   # a lockdown suspends payments, never the service
    if row.status in ("active", "trialing"):
        return True
    if row.status == "past_due":
        return row.past_due_since is None or now < row.past_due_since + grace
    return False
