"""A gateway wired to the local Stripe emulator, and helpers to post signed Stripe events."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from gateway.settings import Settings
from tests.conftest import RunningGateway, make_settings, start_gateway
from tests.stripe_emulator import MONTHLY_PRICE, YEARLY_PRICE, StripeEmulator, event, sign

WEBHOOK_SECRET = "whsec_current_0123456789abcdef"
OLD_WEBHOOK_SECRET = "whsec_previous_0123456789abcdef"


@dataclass
class Billing:
    gw: RunningGateway
    stripe: StripeEmulator

    @property
    def settings(self) -> Settings:
        return self.gw.settings

    def post_event(self, evt: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None,
                   body: bytes | None = None) -> httpx.Response:
        payload = json.dumps(evt).encode()
        header = sign(payload, secret, timestamp)
        return self.gw.api(None).post("/webhooks/stripe", content=body if body is not None else payload,
                                      headers={"Stripe-Signature": header, "Content-Type": "application/json"})

    def subscribe(self, studio_id: int, plan: str = "monthly", **options: Any) -> dict[str, Any]:
        """A subscription at Stripe and the checkout.session.completed that tells us of it."""
        sub = self.stripe.add_subscription(studio_id=studio_id, plan=plan, **options)
        session = {"id": "cs_test_done", "object": "checkout.session", "mode": "subscription",
                   "client_reference_id": str(studio_id), "customer": sub["customer"], "subscription": sub["id"],
                   "metadata": {"studio_id": str(studio_id)}, "status": "complete", "payment_status": "paid",
                   "customer_details": {"address": {"country": "DE"}}}
        answer = self.post_event(event("checkout.session.completed", session))
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == "applied"
        return sub


def billing_settings(tmp_path: Path, database_url: str, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        stripe_secret_key="sk_test_emulated_0123456789", stripe_api_base=base_url,
        stripe_webhook_secrets=f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
        stripe_price_monthly=MONTHLY_PRICE, stripe_price_yearly=YEARLY_PRICE,
        stripe_max_retries=2, stripe_retry_wait=0.0)
    values.update(overrides)
    return make_settings(tmp_path, database_url, **values)


@pytest.fixture
def billing(tmp_path: Path, database_url: str) -> Iterator[Billing]:
    emulator = StripeEmulator()
    base = emulator.start()
    gw = start_gateway(billing_settings(tmp_path, database_url, base), roles=("web",))
    try:
        yield Billing(gw, emulator)
    finally:
        gw.stop()
        emulator.stop()
