"""POST /webhooks/stripe: subscription news from Stripe, verified, each event applied once.

The signature is checked by the official library (`Stripe-Signature`, HMAC-SHA256 over
timestamp and raw body, 300 s tolerance) against every configured signing secret, so an
endpoint secret can be rotated without a window in which events bounce. A bad signature is
400 and changes nothing. Trouble on our side (database, Stripe unreachable while re-reading)
is 503: Stripe retries for three days. The endpoint is off (404) until a secret is set.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import stripe
from litestar import Request, Response, post
from litestar.params import RawBody
from sqlalchemy.exc import OperationalError

from gateway.billing.events import BadEvent, handle_event
from gateway.billing.stripe_api import BillingUnavailable
from gateway.metrics import WEBHOOKS
from webhooks.base import RETRY_AFTER, error

log = logging.getLogger("webhooks")
TOLERANCE = 300
MAX_BODY = 1024 * 1024  # Stripe events are a few kB; a megabyte leaves room for big line-item lists


def verify(body: bytes, header: str | None, secrets: list[str]) -> dict[str, Any]:
    """The event if any secret's signature matches; raises SignatureVerificationError."""
    if not header:
        raise stripe.SignatureVerificationError("no Stripe-Signature header", header, body)
    payload = body.decode("utf-8")
    errors: list[stripe.SignatureVerificationError] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=TOLERANCE)
            break
        except stripe.SignatureVerificationError as exc:
            errors.append(exc)
    else:
        # A signature that matched one secret but is too old says more than "no match" for the rest.
        raise next((e for e in errors if "tolerance" in str(e.user_message).lower()), errors[0])
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise ValueError("the event is not a JSON object")
    return event


@post("/webhooks/stripe", sync_to_thread=True, request_max_body_size=MAX_BODY, status_code=200,
      include_in_schema=False)  # Stripe calls it, not API clients: docs/api.md describes it
def stripe_webhook(request: Request[Any, Any, Any], body: RawBody) -> Response[dict[str, Any]]:
    response = _receive(request, body)
    WEBHOOKS.labels("stripe", str(response.status_code)).inc()  # billing events, not mail: no gateway_mail
    return response


def _receive(request: Request[Any, Any, Any], body: RawBody) -> Response[dict[str, Any]]:
    settings = request.app.state.settings
    secrets = settings.stripe_webhook_secret_list
    if not secrets:
        return error(404, "the Stripe webhook is not configured on this gateway")
    try:
        event = verify(body, request.headers.get("stripe-signature"), secrets)
    except stripe.SignatureVerificationError as exc:
        # The library's messages name no secret; they say what did not match (or the timestamp).
        return error(400, f"invalid Stripe signature: {exc.user_message or 'no matching signature'}")
    except (UnicodeDecodeError, ValueError):
        return error(400, "the payload is not a JSON Stripe event")
    try:
        outcome = handle_event(request.app.state.engine, settings, request.app.state.stripe_api, event)
    except BadEvent as exc:
        return error(400, str(exc))
    except (OperationalError, BillingUnavailable):
        log.warning("stripe webhook: temporary failure for event %s, answering 503", event.get("id"), exc_info=True)
        return error(503, "temporary problem, please retry", {"Retry-After": RETRY_AFTER})
    return Response({"received": True, "result": outcome.result}, status_code=200)
