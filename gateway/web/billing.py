"""/app/billing: the plan and its period, checkout, cancelling, lockdown pauses; the owner's alone.

Through the billing domain, as /api/v1/billing: `summary`, `start_checkout`, `cancel`
(gateway/billing/subscriptions.py). Checkout answers a page that forwards to the URL Stripe
Checkout gave (a meta refresh, with the link to click): the pages' CSP has `form-action 'self'`,
which Chrome also applies to a POST's redirect, so a 303 to Stripe's origin would be blocked.
Cancelling shows the plan's rule first (monthly ends now; yearly runs to the period's end,
without refund) and only the confirming POST cancels.
"""
from __future__ import annotations

import asyncio
from typing import Any

import stripe
from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from gateway.access.web_sessions import SessionCaller
from gateway.billing.stripe_api import BillingNotConfigured, BillingUnavailable
from gateway.billing.subscriptions import (
    BillingConflict,
    BillingSummary,
    cancel,
    start_checkout,
    summary,
)
from gateway.store.db import read_tx
from gateway.web.login import page
from gateway.web.session import to_login
from gateway.web.signed_forms import signed_form
from gateway.web.studio_pages import (
    owner_signed,
    read_studio,
    studio_context,
)

REFUSED = (BillingConflict, BillingNotConfigured, BillingUnavailable, stripe.StripeError)


def _refused(exc: Exception) -> HTTPException:
    """The error page's status and code for what the billing domain refused."""
    if isinstance(exc, BillingConflict):
        return HTTPException(str(exc), status_code=409, extra={"code": "billing_conflict"})
    if isinstance(exc, (BillingNotConfigured, BillingUnavailable)):
        return HTTPException(str(exc), status_code=503, extra={"code": "billing_unavailable"})
    return HTTPException("Stripe refused the request", status_code=502, extra={"code": "billing_unavailable"})


async def _billing_page(request: Request[Any, Any, Any], signed: SessionCaller, template: str) -> Response[str]:
    state = request.app.state

    def read() -> tuple[Any, BillingSummary]:
        with read_tx(state.engine) as conn:
            found = summary(conn, signed.caller.studio_id, state.settings)
        return read_studio(state.engine, signed), found

    studio, billing = await asyncio.to_thread(read)
    return page(request, template, studio=studio, billing=billing,
                cancelled=request.query_params.get("cancelled") == "1", **studio_context(request, signed))


@get("/app/billing", name="web-billing")
async def billing_page(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    return await _billing_page(request, signed, "studio_billing.html")


@post("/app/billing/checkout", name="web-billing-checkout", status_code=200)
async def checkout(request: Request[Any, Any, Any]) -> Response[Any]:
    signed, form = await signed_form(request, owner=True)
    state = request.app.state
    try:
        url = await asyncio.to_thread(start_checkout, state.engine, state.stripe_api, state.settings,
                                      signed.caller.studio_id, str(form.get("plan", "")))
    except REFUSED as exc:
        raise _refused(exc) from None
    return page(request, "studio_checkout.html", url=url, **studio_context(request, signed),
                studio=await asyncio.to_thread(read_studio, state.engine, signed))


@get("/app/billing/cancel", name="web-billing-cancel-rule")
async def cancel_rule(request: Request[Any, Any, Any]) -> Response[Any]:
    """What cancelling this plan means, before the button that does it."""
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    return await _billing_page(request, signed, "studio_cancel.html")


@post("/app/billing/cancel", name="web-billing-cancel", status_code=303)
async def cancel_plan(request: Request[Any, Any, Any]) -> Response[Any]:
    signed, _ = await signed_form(request, owner=True)
    state = request.app.state
    try:
        await asyncio.to_thread(cancel, state.engine, state.stripe_api, state.settings, signed.caller.studio_id)
    except REFUSED as exc:
        raise _refused(exc) from None
    return Redirect("/app/billing?cancelled=1", status_code=303)


BILLING_ROUTES = [billing_page, checkout, cancel_rule, cancel_plan]
