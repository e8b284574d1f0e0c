"""Applying Stripe webhook events: each once, none moving the state backwards.

The event id is stored in the same transaction as the change it makes (`stripe_event`), so a
redelivery, or two deliveries racing on two web processes, change the state once: the second
insert finds the id (PostgreSQL makes it wait for the first to commit) and nothing is applied.

Ordering: a subscription event carries the subscription as it was when the event was
created. State from an event older than the newest one applied is ignored; for an event of
the same second we cannot tell which is newer, so the subscription is re-read from Stripe.
Invoice events carry no subscription state at all: they always re-read it (a failed payment
turns it `past_due`, a paid invoice back to `active`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import stripe
from sqlalchemy import Engine, select

from gateway.billing.lockdowns import reconcile, record_pauses
from gateway.billing.state import (SubscriptionFacts, apply_subscription, link_customer, read_subscription, stripe_id, studio_for, subscription_row)
from gateway.billing.stripe_api import StripeApi
from gateway.store.db import insert_ignore, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.settings import Settings
from gateway.store.tables import STUDIO, STRIPE_EVENT

log = logging.getLogger(__name__)
SUBSCRIPTION_EVENTS = frozenset({
    "customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted",
    "customer.subscription.paused", "customer.subscription.resumed"})
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
HANDLED = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | {"checkout.session.completed"}


class BadEvent(ValueError):
    """A signed payload that is not a Stripe event we can read (answered 400)."""


@dataclass(frozen=True)
class Outcome:
    result: str             # applied | duplicate | stale | ignored | unknown-studio
    studio_id: int | None = None


def handle_event(engine: Engine, settings: Settings, api: StripeApi | None, event: dict[str, Any],
                 now: datetime | None = None) -> Outcome:
    try:
        event_id, kind, created = str(event["id"]), str(event["type"]), int(event["created"])
        obj = event["data"]["object"]
        if not isinstance(obj, dict):
            raise TypeError("data.object is not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise BadEvent(f"not a Stripe event: {exc}") from None
    with read_tx(engine) as conn:
        if conn.execute(select(STRIPE_EVENT.c.id).where(STRIPE_EVENT.c.id == event_id)).first():
            return Outcome("duplicate")
    if kind not in HANDLED:
        return _record(engine, event_id, kind, created, None, lambda conn, studio_id: "ignored")

    try:
        facts, as_of, customer, hint = _facts(engine, settings, api, kind, obj, created)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadEvent(f"the {kind} event's object cannot be read: {type(exc).__name__}") from None
    except stripe.InvalidRequestError as exc:
        # The subscription it names is unknown to Stripe (deleted test data, another account):
        # recorded and acknowledged, or Stripe would redeliver it for days.
        log.warning("billing: Stripe event %s (%s) names what Stripe cannot find: %s", event_id, kind,
                    exc.user_message or exc.code)
        return _record(engine, event_id, kind, created, None, lambda conn, studio_id: "ignored")
    country = None
    if kind == "checkout.session.completed":
        details = obj.get("customer_details") or {}
        country = ((details.get("address") or {}).get("country") or "").upper() or None

    paused: list[int] = []   # pauses recorded by this event, for their Stripe side after the commit

    def change(conn: Any, studio_id: int | None) -> str:
        if studio_id is None:
            return "unknown-studio"
        link_customer(conn, studio_id, customer)
        if country and len(country) == 2:
            conn.execute(STUDIO.update().where(STUDIO.c.id == studio_id, STUDIO.c.country.is_(None))
                         .values(country=country))
        applied = facts is not None and apply_subscription(conn, studio_id, facts, as_of, now)
        if applied and record_pauses(conn, studio_id=studio_id, now=now):  # subscribed during a lockdown
            paused.append(studio_id)
        return "applied" if applied or facts is None else "stale"

    def studio_of(conn: Any) -> int | None:
        if hint is not None and conn.execute(select(STUDIO.c.id).where(STUDIO.c.id == hint)).first():
            return hint
        return studio_for(conn, facts) if facts is not None else None

    outcome = _record(engine, event_id, kind, created, studio_of, change)
    if paused and api is not None:
        try:  # paused at once: the Stripe side of the pause recorded just now; the worker retries if this fails
            reconcile(engine, api, studio_id=outcome.studio_id, now=now)
        except Exception as exc:  # noqa: BLE001 - the event is applied; reconciling is best effort here
            log.warning("billing: pausing studio %s for a lockdown failed, the worker retries: %s",
                        outcome.studio_id, exc)
    return outcome


def _facts(engine: Engine, settings: Settings, api: StripeApi | None, kind: str, obj: dict[str, Any],
           created: int) -> tuple[SubscriptionFacts | None, int, str | None, int | None]:
    """The subscription state an event stands for, re-read from Stripe where the payload
    cannot be trusted to be the newest; (facts, as_of, customer id, studio id hint)."""
    customer = stripe_id(obj.get("customer"))
    if kind == "checkout.session.completed":
        ref = obj.get("client_reference_id") or (obj.get("metadata") or {}).get("studio_id")
        hint = int(ref) if ref and str(ref).isdigit() else None
        sub_id = stripe_id(obj.get("subscription"))
        if sub_id is None or api is None:
            return None, created, customer, hint
        return read_subscription(api.subscription(sub_id), settings), created, customer, hint
    if kind in INVOICE_EVENTS:
        sub_id = _invoice_subscription(obj)
        if sub_id is None or api is None:
            return None, created, customer, None
        return read_subscription(api.subscription(sub_id), settings), created, customer, None
    facts = read_subscription(obj, settings)
    if api is not None:
        with read_tx(engine) as conn:
            studio_id = studio_for(conn, facts)
            row = subscription_row(conn, studio_id) if studio_id is not None else None
        if row is not None and row.stripe_as_of == created:
            facts = read_subscription(api.subscription(facts.subscription_id), settings)
    return facts, created, customer, None


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    # Since API version 2025-03-31 the subscription sits under parent.subscription_details.
    parent = (invoice.get("parent") or {}).get("subscription_details") or {}
    return stripe_id(invoice.get("subscription")) or stripe_id(parent.get("subscription"))


def _record(engine: Engine, event_id: str, kind: str, created: int, studio_of: Any, change: Any) -> Outcome:
    with write_tx(engine) as conn:
        studio_id = studio_of(conn) if studio_of else None
        # RETURNING, not rowcount: psycopg reports -1 for SQLAlchemy's ON CONFLICT inserts.
        inserted = conn.execute(insert_ignore(conn, STRIPE_EVENT).values(
            id=event_id, type=kind, created=created, studio_id=studio_id, received_at=utcnow())
            .returning(STRIPE_EVENT.c.id)).first() is not None
        if not inserted:
            return Outcome("duplicate", studio_id)
        result = change(conn, studio_id)
    if result == "unknown-studio":
        log.warning("billing: Stripe event %s (%s) names no studio of ours; recorded and ignored", event_id, kind)
    return Outcome(result, studio_id)
