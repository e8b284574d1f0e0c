"""POST /webhooks/stripe with payloads signed exactly as Stripe signs them: verification, each
event applied once (also when delivered concurrently), and no state moving backwards."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

from sqlalchemy import func, select

from gateway.billing.entitlements import has_paid_features
from gateway.store.tables import SUBSCRIPTION
from gateway.store.db import read_tx
from gateway.store.models import utcnow
from gateway.store.tables import STRIPE_EVENT
from tests.billing_support import OLD_WEBHOOK_SECRET, Billing, billing  # noqa: F401 - the fixture
from tests.stripe_emulator import event, sign


def _events(b: Billing) -> int:
    with read_tx(b.gw.engine) as conn:
        return int(conn.execute(select(func.count()).select_from(STRIPE_EVENT)).scalar_one())


def _status(b: Billing, studio_id: int) -> str:
    with read_tx(b.gw.engine) as conn:
        return str(conn.execute(select(SUBSCRIPTION.c.status).where(SUBSCRIPTION.c.studio_id == studio_id)).scalar_one())


def test_a_duplicate_event_is_applied_once(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    late = dict(sub, status="past_due")
    evt = event("customer.subscription.updated", late, created=sub["created"] + 5)
    first, second = billing.post_event(evt), billing.post_event(evt)
    assert (first.status_code, first.json()["result"]) == (200, "applied")
    assert (second.status_code, second.json()["result"]) == (200, "duplicate")
    assert _events(billing) == 2   # the checkout and this one
    assert _status(billing, studio.id) == "past_due"


def test_concurrent_deliveries_of_one_event_change_state_once(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    evt = event("customer.subscription.updated", dict(sub, status="past_due"), created=sub["created"] + 5)
    results: list[str] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        start.wait(timeout=30)
        answer = billing.post_event(evt)
        assert answer.status_code == 200, answer.text
        results.append(answer.json()["result"])

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == ["applied"] + ["duplicate"] * 7, results
    assert _events(billing) == 2


def test_out_of_order_updates_keep_the_newest_state(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    gets = len(billing.stripe.calls("GET"))   # the checkout read the new subscription
    t = sub["created"] + 100
    newer = event("customer.subscription.updated", dict(sub, status="past_due"), created=t + 10)
    older = event("customer.subscription.updated", dict(sub, status="active"), created=t)
    assert billing.post_event(newer).json()["result"] == "applied"
    assert billing.post_event(older).json()["result"] == "stale"
    assert _status(billing, studio.id) == "past_due"
    assert len(billing.stripe.calls("GET")) == gets   # older state is simply ignored: Stripe is not asked


def test_events_of_the_same_second_are_settled_by_reading_stripe(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    gets = len(billing.stripe.calls("GET"))
    t = sub["created"] + 100
    billing.stripe.subscriptions[sub["id"]]["status"] = "past_due"        # what Stripe holds now
    assert billing.post_event(event("customer.subscription.updated", dict(sub, status="past_due"),
                                    created=t)).json()["result"] == "applied"
    # Same second, older content: we cannot tell from the timestamp, so Stripe is asked.
    answer = billing.post_event(event("customer.subscription.updated", dict(sub, status="active"), created=t))
    assert answer.status_code == 200
    assert len(billing.stripe.calls("GET", f"/v1/subscriptions/{sub['id']}")) == gets + 1
    assert _status(billing, studio.id) == "past_due"


def test_invoice_events_reread_the_subscription_and_past_due_keeps_features_for_the_grace_period(
        billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    invoice = {"id": "in_failed", "object": "invoice", "status": "open",
               "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub["id"]}}}
    billing.stripe.subscriptions[sub["id"]]["status"] = "past_due"
    answer = billing.post_event(event("invoice.payment_failed", invoice, created=sub["created"] + 50))
    assert answer.json()["result"] == "applied" and _status(billing, studio.id) == "past_due"
    grace = timedelta(days=billing.settings.billing_past_due_grace_days)
    with read_tx(billing.gw.engine) as conn:
        assert has_paid_features(conn, studio.id, billing.settings, utcnow())
        assert not has_paid_features(conn, studio.id, billing.settings, utcnow() + grace + timedelta(minutes=1))
    shown = billing.gw.api(studio.token).get("/api/v1/billing").json()
    assert shown["status"] == "past_due" and shown["ends_at"] is not None

    billing.stripe.subscriptions[sub["id"]]["status"] = "active"
    paid = billing.post_event(event("invoice.paid", dict(invoice, id="in_paid", status="paid"),
                                    created=sub["created"] + 60))
    assert paid.json()["result"] == "applied" and _status(billing, studio.id) == "active"


def test_tampered_payload_is_refused_and_changes_nothing(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    evt = event("customer.subscription.deleted", dict(sub, status="canceled"), created=sub["created"] + 5)
    signed = json.dumps(evt).encode()
    tampered = signed.replace(b'"canceled"', b'"active"  ')
    header = sign(signed, "whsec_current_0123456789abcdef")
    answer = billing.gw.api(None).post("/webhooks/stripe", content=tampered,
                                       headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    assert answer.status_code == 400 and "signature" in answer.json()["detail"]
    assert _events(billing) == 1 and _status(billing, studio.id) == "active"


def test_stale_timestamp_wrong_secret_and_missing_header_are_refused(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id)
    evt = event("customer.subscription.deleted", dict(sub, status="canceled"), created=sub["created"] + 5)
    stale = billing.post_event(evt, timestamp=int(time.time()) - 301)
    assert stale.status_code == 400 and "tolerance" in stale.json()["detail"].lower()
    assert billing.post_event(evt, secret="whsec_somebody_else_0123456789").status_code == 400
    bare = billing.gw.api(None).post("/webhooks/stripe", content=json.dumps(evt).encode())
    assert bare.status_code == 400
    assert _events(billing) == 1 and _status(billing, studio.id) == "active"
    # During a secret rotation the previous secret still verifies.
    assert billing.post_event(evt, secret=OLD_WEBHOOK_SECRET).json()["result"] == "applied"
    assert _status(billing, studio.id) == "canceled"


def test_other_event_types_and_unknown_subscriptions_are_acknowledged_and_recorded(billing: Billing) -> None:
    billing.gw.add_studio("inkwell")
    other = billing.post_event(event("customer.created", {"id": "cus_x", "object": "customer"}))
    assert other.status_code == 200 and other.json()["result"] == "ignored"
    stranger = billing.stripe.add_subscription(studio_id=9999)   # made in the dashboard for no studio of ours
    stranger["metadata"] = {}
    answer = billing.post_event(event("customer.subscription.created", stranger))
    assert answer.status_code == 200 and answer.json()["result"] == "unknown-studio"
    assert _events(billing) == 2
    malformed = billing.post_event({"id": "evt_broken", "type": "invoice.paid"})
    assert malformed.status_code == 400


def test_events_naming_what_stripe_cannot_find_or_without_an_object_id(billing: Billing) -> None:
    billing.gw.add_studio("inkwell")
    invoice = {"id": "in_orphan", "object": "invoice",
               "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_gone"}}}
    orphan = billing.post_event(event("invoice.paid", invoice))
    assert orphan.status_code == 200 and orphan.json()["result"] == "ignored"   # not redelivered for days
    assert billing.post_event(event("customer.subscription.updated", {"object": "subscription"})).status_code == 400
