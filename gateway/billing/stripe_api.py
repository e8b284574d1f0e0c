"""The few Stripe calls the gateway makes, through the official library, retried with tenacity.

Only this module talks to Stripe. The library's own retries are off so that one policy
(tenacity: network trouble, 409 lock conflicts, 429 and 5xx, exponential backoff) governs
every call, and every write carries an idempotency key derived from what it does, so a retry,
or a rerun of `gateway lockdown start` after a crash, can never apply a change twice. The API
base comes from settings: tests point it at a local emulator of these endpoints.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import stripe
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from gateway.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class BillingUnavailable(RuntimeError):
    """Stripe could not be reached or refused for a temporary reason, after every retry."""


class BillingNotConfigured(RuntimeError):
    """GATEWAY_STRIPE_SECRET_KEY (or a plan's price id) is not set."""


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


def _temporary(exc: BaseException) -> bool:
    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    if isinstance(exc, stripe.StripeError):
        status = exc.http_status or 0
        return status >= 500 or status == 409  # 409: a concurrent request holds the object's lock
    return False


class StripeApi:
    """A thin, typed wrapper; answers are plain dicts (Stripe's JSON) for the state code."""

    def __init__(self, settings: Settings, client: stripe.StripeClient | None = None) -> None:
        if settings.stripe_secret_key is None:
            raise BillingNotConfigured("billing is off: set GATEWAY_STRIPE_SECRET_KEY")
        self.settings = settings
        self.client = client or stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base},
            max_network_retries=0,  # tenacity below is the one retry policy
            http_client=stripe.new_default_http_client(timeout=30),
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_temporary),
            stop=stop_after_attempt(self.settings.stripe_max_retries + 1),
            wait=wait_exponential(multiplier=self.settings.stripe_retry_wait, max=30),
            reraise=True,
        )
        try:
            return retrying(fn)
        except stripe.StripeError as exc:
            if _temporary(exc):
                log.warning("Stripe %s failed after retries: %s", what, exc.user_message or type(exc).__name__)
                raise BillingUnavailable(f"Stripe is unavailable ({what}); try again later") from exc
            raise

    # --- reads ------------------------------------------------------------------------------

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        return self._call("retrieve subscription", lambda: self.client.v1.subscriptions.retrieve(
            subscription_id)).to_dict()

    # --- writes -----------------------------------------------------------------------------

    def create_checkout(self, *, studio_id: int, plan: str, price_id: str, customer_id: str | None,
                        owner_email: str, return_url: str, idempotency_key: str) -> CheckoutSession:
        params: dict[str, Any] = {
            "mode": "subscription",
            "line_items": [{"price": price_id, "quantity": 1}],
            "client_reference_id": str(studio_id),
            "metadata": {"studio_id": str(studio_id), "plan": plan},
            "subscription_data": {"metadata": {"studio_id": str(studio_id), "plan": plan}},
            "success_url": return_url,
            "cancel_url": return_url,
        }
        if customer_id:
            params["customer"] = customer_id
        else:
            params["customer_email"] = owner_email
        session = self._call("create checkout session", lambda: self.client.v1.checkout.sessions.create(
            params, {"idempotency_key": idempotency_key}))  # type: ignore[arg-type]
        return CheckoutSession(id=session.id, url=session.url or "")

    def cancel_now(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        """End the subscription at once: no proration credit, no final invoice, no further charge."""
        return self._call("cancel subscription", lambda: self.client.v1.subscriptions.cancel(
            subscription_id, {"prorate": False, "invoice_now": False},
            {"idempotency_key": idempotency_key})).to_dict()

    def cancel_at_period_end(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        """Stop renewal; the paid period runs out and nothing is refunded or charged again."""
        return self._call("cancel at period end", lambda: self.client.v1.subscriptions.update(
            subscription_id, {"cancel_at_period_end": True, "proration_behavior": "none"},
            {"idempotency_key": idempotency_key})).to_dict()

    def pause_collection(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        """Invoices during the pause are voided: never charged, not even later."""
        return self._call("pause collection", lambda: self.client.v1.subscriptions.update(
            subscription_id, {"pause_collection": {"behavior": "void"}},
            {"idempotency_key": idempotency_key})).to_dict()

    def resume_collection(self, subscription_id: str, idempotency_key: str) -> dict[str, Any]:
        # An empty string unsets a field in Stripe's form encoding.
        return self._call("resume collection", lambda: self.client.v1.subscriptions.update(
            subscription_id, {"pause_collection": ""},  # type: ignore[typeddict-item]
            {"idempotency_key": idempotency_key})).to_dict()


def stripe_api(settings: Settings) -> StripeApi | None:
    """The Stripe API when billing is configured, else None (every studio is on free)."""
    return StripeApi(settings) if settings.stripe_secret_key is not None else None
