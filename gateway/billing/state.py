"""A studio's subscription as stored: read from Stripe's subscription objects, never moved back.

Stripe delivers events late, twice and out of order, and its answers to our own calls race
with them. Three rules keep the stored state right:
- `stripe_as_of` is the creation time of the newest event applied; state from an older event
  is ignored (events/re-reads of the same second are settled by re-reading, see events.py);
- `canceled` is final for a subscription id (Stripe never revives one), so a late "active"
  cannot resurrect a cancelled plan;
- a different subscription id replaces the stored one only when that one is over or the news
  is newer (a new checkout after a cancellation).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, select, update

from gateway.store.db import insert_ignore
from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.store.tables import STUDIO, SUBSCRIPTION

FINAL_STATUSES = frozenset({"canceled", "incomplete_expired"})


@dataclass(frozen=True)
class SubscriptionFacts:
    """What the gateway keeps of a Stripe subscription object."""

    subscription_id: str
    customer_id: str | None
    plan: str
    status: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ended_at: datetime | None
    collection_paused: bool
    studio_hint: int | None   # metadata.studio_id, set by our checkout


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), timezone.utc) if value else None


def stripe_id(value: Any) -> str | None:
    """An id whether Stripe sent it bare or expanded into its object."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def read_subscription(obj: dict[str, Any], settings: Settings) -> SubscriptionFacts:
    items = (obj.get("items") or {}).get("data") or []
    first = items[0] if items else {}
    price = first.get("price") or {}
    price_id = price.get("id")
    if price_id and price_id == settings.stripe_price_monthly:
        plan = "monthly"
    elif price_id and price_id == settings.stripe_price_yearly:
        plan = "yearly"
    else:  # a price made in the dashboard: go by its interval
        interval = (price.get("recurring") or {}).get("interval")
        plan = {"month": "monthly", "year": "yearly"}.get(interval or "", (obj.get("metadata") or {}).get("plan", "monthly"))
        if plan not in ("monthly", "yearly"):
            plan = "monthly"
    # Since API version 2025-03-31 the period lives on the items; older versions had it on top.
    period_end = obj.get("current_period_end") or first.get("current_period_end")
    cancel_at = obj.get("cancel_at")
    hint = (obj.get("metadata") or {}).get("studio_id")
    return SubscriptionFacts(
        subscription_id=obj["id"],
        customer_id=stripe_id(obj.get("customer")),
        plan=plan,
        status=str(obj.get("status") or "incomplete"),
        current_period_end=_ts(period_end),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")) or (
            cancel_at is not None and period_end is not None and int(cancel_at) >= int(period_end)),
        ended_at=_ts(obj.get("ended_at")),
        collection_paused=bool(obj.get("pause_collection")),
        studio_hint=int(hint) if hint and str(hint).isdigit() else None,
    )


def studio_for(conn: Connection, facts: SubscriptionFacts) -> int | None:
    """Which studio a subscription belongs to: our checkout's metadata, else what we stored."""
    if facts.studio_hint is not None:
        if conn.execute(select(STUDIO.c.id).where(STUDIO.c.id == facts.studio_hint)).first():
            return facts.studio_hint
    row = conn.execute(select(SUBSCRIPTION.c.studio_id).where(
        SUBSCRIPTION.c.stripe_subscription_id == facts.subscription_id)).first()
    if row is None and facts.customer_id:
        row = conn.execute(select(SUBSCRIPTION.c.studio_id).where(
            SUBSCRIPTION.c.stripe_customer_id == facts.customer_id)).first()
    return row.studio_id if row else None


def locked_row(conn: Connection, studio_id: int) -> Any:
    """The studio's subscription row, locked for this transaction on PostgreSQL (concurrent
    events for one studio apply one after the other); created as `free` if missing."""
    query = select(SUBSCRIPTION).where(SUBSCRIPTION.c.studio_id == studio_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        conn.execute(insert_ignore(conn, SUBSCRIPTION).values(studio_id=studio_id, updated_at=utcnow()))
        row = conn.execute(query).first()
    return row


def apply_subscription(conn: Connection, studio_id: int, facts: SubscriptionFacts, as_of: int | None,
                       now: datetime | None = None) -> bool:
    """Store the subscription's state unless it is older than what is stored; True if applied.

    `as_of` is the creation time of the event the state came from; None for the answer to
    our own call, which is applied but does not advance the clock of events.
    """
    now = now or utcnow()
    row = locked_row(conn, studio_id)
    same = row.stripe_subscription_id == facts.subscription_id
    if same and row.status in FINAL_STATUSES and facts.status not in FINAL_STATUSES:
        return False
    if as_of is not None and as_of < row.stripe_as_of:
        return False
    if not same and row.stripe_subscription_id is not None and row.status not in FINAL_STATUSES | {"none"}:
        # Another subscription replaces an ongoing one only with newer news that it is live.
        if as_of is None or facts.status in FINAL_STATUSES:
            return False
    past_due_since = None
    if facts.status == "past_due":
        past_due_since = row.past_due_since if (same and row.past_due_since) else now
    conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.studio_id == studio_id).values(
        plan=facts.plan, status=facts.status, stripe_subscription_id=facts.subscription_id,
        stripe_customer_id=facts.customer_id or row.stripe_customer_id,
        current_period_end=facts.current_period_end, cancel_at_period_end=facts.cancel_at_period_end,
        ended_at=facts.ended_at, collection_paused=facts.collection_paused, past_due_since=past_due_since,
        stripe_as_of=max(row.stripe_as_of, as_of or 0), updated_at=now))
    return True


def link_customer(conn: Connection, studio_id: int, customer_id: str | None) -> None:
    """Remember the studio's Stripe customer (from a completed checkout) for the next checkout."""
    if customer_id:
        locked_row(conn, studio_id)
        conn.execute(update(SUBSCRIPTION).where(SUBSCRIPTION.c.studio_id == studio_id).values(
            stripe_customer_id=customer_id, updated_at=utcnow()))


def subscription_row(conn: Connection, studio_id: int) -> Any:
    return conn.execute(select(SUBSCRIPTION).where(SUBSCRIPTION.c.studio_id == studio_id)).first()

