"""Plans over HTTP against the Stripe emulator: what a studio sees, checkout, and the two
cancellation promises (monthly: at once, nothing charged again; yearly: no refund, full use
until the period ends, nothing charged again)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gateway.billing.entitlements import has_paid_features
from gateway.store.db import read_tx
from tests.billing_support import Billing, billing  # noqa: F401 - the fixture
from tests.stripe_emulator import MONTHLY_PRICE, event
from tests.test_api_tokens import add_member

BILLING = "/api/v1/billing"


def _paid(b: Billing, studio_id: int, now: datetime | None = None) -> bool:
    with read_tx(b.gw.engine) as conn:
        return has_paid_features(conn, studio_id, b.settings, now)


def test_a_new_studio_is_on_the_free_plan(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    answer = billing.gw.api(studio.token).get(BILLING)
    assert answer.status_code == 200
    assert answer.json() == {"plan": "free", "status": "none", "paid_features": False, "current_period_end": None,
                             "cancel_at_period_end": False, "ends_at": None, "payments_paused": False,
                             "paused_by": None, "pauses": []}
    assert not _paid(billing, studio.id)


def test_checkout_asks_stripe_for_a_subscription_session_for_the_owner_only(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    answer = billing.gw.api(studio.token).post(f"{BILLING}/checkout", json={"plan": "monthly"})
    assert answer.status_code == 201, answer.text
    [call] = billing.stripe.calls("POST", "/v1/checkout/sessions")
    assert answer.json()["url"] == billing.stripe.sessions[next(iter(billing.stripe.sessions))]["url"]
    assert answer.headers["location"] == answer.json()["url"]  # the created session's page
    assert call.params["mode"] == "subscription"
    assert call.params["line_items"] == [{"price": MONTHLY_PRICE, "quantity": "1"}]
    assert call.params["client_reference_id"] == str(studio.id)
    assert call.params["subscription_data"]["metadata"]["studio_id"] == str(studio.id)
    assert call.params["customer_email"] == "owner@inkwell.example"
    assert call.idempotency_key and call.idempotency_key.startswith(f"gw-checkout-{studio.id}-")

    _, member_token = add_member(billing.gw, studio)
    refused = billing.gw.api(member_token).post(f"{BILLING}/checkout", json={"plan": "yearly"})
    assert refused.status_code == 403 and "owner" in refused.json()["detail"]
    assert billing.gw.api(studio.token).post(f"{BILLING}/checkout", json={"plan": "weekly"}).status_code == 400
    assert len(billing.stripe.calls("POST", "/v1/checkout/sessions")) == 1
    assert billing.gw.api(member_token).get(BILLING).status_code == 200  # members may see the plan


def test_completed_checkout_turns_on_paid_features_and_a_second_checkout_is_refused(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id, "yearly")
    shown = billing.gw.api(studio.token).get(BILLING).json()
    period_end = datetime.fromtimestamp(sub["items"]["data"][0]["current_period_end"], timezone.utc)
    assert (shown["plan"], shown["status"], shown["paid_features"]) == ("yearly", "active", True)
    assert datetime.fromisoformat(shown["current_period_end"]) == period_end
    assert _paid(billing, studio.id)
    again = billing.gw.api(studio.token).post(f"{BILLING}/checkout", json={"plan": "monthly"})
    assert again.status_code == 409 and "already" in again.json()["detail"]


def test_monthly_cancel_ends_at_once_and_no_later_invoice_is_paid(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id, "monthly")
    assert billing.stripe.bill(sub["id"])["status"] == "paid"   # the plan was being paid

    answer = billing.gw.api(studio.token).post(f"{BILLING}/cancel")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["cancelled"], body["plan"], body["further_payments"], body["refund"]) == \
        ("immediately", "monthly", False, False)
    assert datetime.fromisoformat(body["features_until"]) <= datetime.now(timezone.utc)
    [call] = billing.stripe.calls("DELETE", f"/v1/subscriptions/{sub['id']}")
    assert call.params == {"prorate": "false", "invoice_now": "false"}  # no final invoice, no credit
    assert billing.stripe.bill(sub["id"]) is None                      # nothing is ever charged again
    assert not _paid(billing, studio.id)
    shown = billing.gw.api(studio.token).get(BILLING).json()
    assert (shown["plan"], shown["status"], shown["paid_features"]) == ("free", "canceled", False)

    # A late event from before the cancellation cannot revive the plan.
    late = billing.post_event(event("customer.subscription.updated", sub, created=sub["created"] - 60))
    assert late.status_code == 200 and late.json()["result"] == "stale"
    assert not _paid(billing, studio.id)
    assert billing.gw.api(studio.token).post(f"{BILLING}/cancel").status_code == 409  # nothing left to cancel


def test_yearly_cancel_keeps_features_until_period_end_without_refund(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id, "yearly")
    period_end = datetime.fromtimestamp(sub["items"]["data"][0]["current_period_end"], timezone.utc)

    answer = billing.gw.api(studio.token).post(f"{BILLING}/cancel")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["cancelled"], body["further_payments"], body["refund"]) == ("at_period_end", False, False)
    assert datetime.fromisoformat(body["features_until"]) == period_end
    [call] = billing.stripe.calls("POST", f"/v1/subscriptions/{sub['id']}")
    assert call.params == {"cancel_at_period_end": "true", "proration_behavior": "none"}
    assert not billing.stripe.calls("DELETE")
    assert not [r for r in billing.stripe.requests if r.path.startswith(("/v1/refunds", "/v1/credit_notes"))]
    assert billing.stripe.bill(sub["id"]) is None   # no renewal invoice

    assert _paid(billing, studio.id)
    assert _paid(billing, studio.id, period_end - timedelta(seconds=1))
    assert not _paid(billing, studio.id, period_end)   # over when the paid year is, even before Stripe says so
    shown = billing.gw.api(studio.token).get(BILLING).json()
    assert shown["cancel_at_period_end"] is True and datetime.fromisoformat(shown["ends_at"]) == period_end

    again = billing.gw.api(studio.token).post(f"{BILLING}/cancel")
    assert again.status_code == 200 and again.json()["features_until"] == body["features_until"]
    # Subscribing again before the paid year ends would charge twice for the same months.
    twice = billing.gw.api(studio.token).post(f"{BILLING}/checkout", json={"plan": "monthly"})
    assert twice.status_code == 409 and "runs until" in twice.json()["detail"]
    assert len(billing.stripe.calls("POST", "/v1/subscriptions/")) == 1   # asked once

    ended = billing.stripe.subscriptions[sub["id"]]   # the year is over: Stripe ends it and says so
    ended.update(status="canceled", ended_at=int(period_end.timestamp()))
    assert billing.post_event(event("customer.subscription.deleted", ended)).json()["result"] == "applied"
    assert not _paid(billing, studio.id)


def test_cancel_is_for_the_owner_and_needs_a_paid_plan(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    assert billing.gw.api(studio.token).post(f"{BILLING}/cancel").status_code == 409
    billing.subscribe(studio.id, "monthly")
    _, member_token = add_member(billing.gw, studio)
    assert billing.gw.api(member_token).post(f"{BILLING}/cancel").status_code == 403
    assert billing.gw.api(None).post(f"{BILLING}/cancel").status_code == 401
    assert not billing.stripe.calls("DELETE")


def test_stripe_outage_is_503_and_changes_nothing(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id, "monthly")
    billing.stripe.fail(r"/v1/subscriptions/", times=3, status=503)   # every try of the retry budget
    answer = billing.gw.api(studio.token).post(f"{BILLING}/cancel")
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert len(billing.stripe.calls("DELETE")) == 3                      # the first try and two retries
    assert len({c.idempotency_key for c in billing.stripe.calls("DELETE")}) == 1
    assert _paid(billing, studio.id)
    assert billing.stripe.subscriptions[sub["id"]]["status"] == "active"


def test_deleting_the_account_ends_the_subscription_at_once_whatever_the_plan(billing: Billing) -> None:
    studio = billing.gw.add_studio("inkwell")
    sub = billing.subscribe(studio.id, "yearly")
    hook = billing.gw.gateway.app.state.cancel_subscription_for_deletion  # what account deletion calls
    hook(studio.id)
    [call] = billing.stripe.calls("DELETE", f"/v1/subscriptions/{sub['id']}")
    assert call.params == {"prorate": "false", "invoice_now": "false"}
    assert billing.stripe.subscriptions[sub["id"]]["status"] == "canceled"
    assert not _paid(billing, studio.id)
    hook(studio.id)                                   # a retried confirmation: nothing more to do
    assert len(billing.stripe.calls("DELETE")) == 1
    free, asked = billing.gw.add_studio("freehand"), len(billing.stripe.requests)
    hook(free.id)                                     # no subscription: nothing asked of Stripe
    assert len(billing.stripe.requests) == asked
