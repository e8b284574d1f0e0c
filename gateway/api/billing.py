"""The studio's plan: everyone of the studio may see it; subscribing and cancelling are the owner's.

Thin handlers over gateway/billing/subscriptions.py. Stripe trouble is 503 with Retry-After
(nothing changed; try again), a request that does not fit the plan 409, a Stripe refusal 502.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec
import stripe
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, PermissionDeniedException, ServiceUnavailableException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_409_CONFLICT, HTTP_502_BAD_GATEWAY

from gateway.api.created import LOCATION, created
from gateway.api.idempotency import Idempotent
from gateway.billing.stripe_api import BillingNotConfigured, BillingUnavailable
from gateway.billing.subscriptions import BillingConflict, cancel, start_checkout, summary
from gateway.store.db import read_tx
from gateway.access.studios import Caller


class PauseOut(msgspec.Struct):
    lockdown: str
    started_at: datetime
    ended_at: datetime | None
    state: str               # pausing | paused | resuming | resumed


class BillingOut(msgspec.Struct):
    plan: str                # free | monthly | yearly
    status: str              # Stripe's subscription status; none when never subscribed
    paid_features: bool      # restore of deleted data and the other paid features
    current_period_end: datetime | None
    cancel_at_period_end: bool
    ends_at: datetime | None  # when paid features end, if they do
    payments_paused: bool
    paused_by: str | None    # the lockdown suspending payments now
    pauses: list[PauseOut]


class CheckoutIn(msgspec.Struct):
    plan: Literal["monthly", "yearly"]


class CheckoutOut(msgspec.Struct):
    url: str                 # Stripe Checkout: open it to pay


class CancelOut(msgspec.Struct):
    cancelled: Literal["immediately", "at_period_end"]
    plan: str
    features_until: datetime
    further_payments: bool   # always false: nothing is charged after a cancellation
    refund: bool             # always false: a yearly plan's remaining months are used, not refunded
    message: str


class ConflictException(HTTPException):
    status_code = HTTP_409_CONFLICT


class BadGatewayException(HTTPException):
    status_code = HTTP_502_BAD_GATEWAY


def _owner(caller: Caller) -> None:
    if caller.role != "owner":
        raise PermissionDeniedException("only the studio's owner can manage billing")


def _stripe_errors(exc: Exception) -> HTTPException:
    if isinstance(exc, BillingConflict):
        return ConflictException(str(exc))
    if isinstance(exc, BillingNotConfigured):
        return ServiceUnavailableException("billing is not configured on this gateway")
    if isinstance(exc, BillingUnavailable):
        return ServiceUnavailableException(str(exc), headers={"Retry-After": "30"})
    if isinstance(exc, stripe.StripeError):
        return BadGatewayException(f"Stripe refused the request: {exc.user_message or exc.code or 'error'}")
    raise exc


class BillingController(Controller):
    path = "/api/v1/billing"
    tags = ["billing"]

    @get("/", sync_to_thread=True)
    def show(self, state: State, caller: NamedDependency[Caller]) -> BillingOut:
        """Plan, status, period, whether payments are paused and by which lockdown, past pauses."""
        with read_tx(state.engine) as conn:
            s = summary(conn, caller.studio_id, state.settings)
        return BillingOut(plan=s.plan, status=s.status, paid_features=s.paid_features,
                          current_period_end=s.current_period_end, cancel_at_period_end=s.cancel_at_period_end,
                          ends_at=s.ends_at, payments_paused=s.payments_paused, paused_by=s.paused_by,
                          pauses=[PauseOut(lockdown=p.lockdown, started_at=p.started_at, ended_at=p.ended_at,
                                           state=p.state) for p in s.pauses])

    @post("/checkout", sync_to_thread=True, status_code=201, response_headers=[LOCATION])
    def checkout(self, state: State, caller: NamedDependency[Caller], data: JSONBody[CheckoutIn],
                 idempotent: Idempotent) -> Response[CheckoutOut]:
        """Owner only: a Stripe Checkout session for the monthly or yearly plan; its page is
        the `url` and the `Location`."""
        _owner(caller)
        try:
            url = start_checkout(state.engine, state.stripe_api, state.settings, caller.studio_id, data.plan)
        except (BillingConflict, BillingNotConfigured, BillingUnavailable, stripe.StripeError) as exc:
            raise _stripe_errors(exc) from None
        return created(CheckoutOut(url=url), url)

    @post("/cancel", sync_to_thread=True, status_code=200)
    def cancel(self, state: State, caller: NamedDependency[Caller]) -> CancelOut:
        """Owner only. Monthly: ends now, nothing charged again. Yearly: no refund, full use
        until the end of the paid period, nothing charged again."""
        _owner(caller)
        try:
            done = cancel(state.engine, state.stripe_api, state.settings, caller.studio_id)
        except (BillingConflict, BillingNotConfigured, BillingUnavailable, stripe.StripeError) as exc:
            raise _stripe_errors(exc) from None
        if done.mode == "immediately":
            message = "The monthly plan is cancelled as of now; no further payment will be taken."
        else:
            message = (f"The yearly plan ends on {done.features_until:%Y-%m-%d}: the studio keeps every feature "
                       "until then; the remaining months are not refunded and nothing is charged again.")
        return CancelOut(cancelled=done.mode, plan=done.plan,  # type: ignore[arg-type]
                         features_until=done.features_until, further_payments=False, refund=False, message=message)
