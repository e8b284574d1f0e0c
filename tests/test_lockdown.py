"""Lockdown payment pauses against the Stripe emulator: every paid studio in scope paused with
`pause_collection[behavior]=void` and recorded once, free studios untouched, resumed at the
end, and every run repeatable and able to repair a run that crashed half-way."""
from __future__ import annotations

import json
import os
import subprocess

from sqlalchemy import select

from gateway.billing.entitlements import has_paid_features
from gateway.store.tables import PAYMENT_PAUSE
from gateway.billing.lockdowns import LockdownError, end_lockdown, lockdown_status, reconcile, start_lockdown
from gateway.billing.stripe_api import StripeApi
from gateway.store.db import read_tx
from tests.billing_support import Billing, billing  # noqa: F401 - the fixture
from tests.conftest import StudioInfo, gateway_subprocess_env
from tests.test_serve import gateway_command

import pytest


def _three(b: Billing) -> tuple[StudioInfo, StudioInfo, StudioInfo, dict[str, str]]:
    free = b.gw.add_studio("freehand", country="DE")
    monthly = b.gw.add_studio("monthly-ink", country="DE")
    yearly = b.gw.add_studio("yearly-ink", country="DE")
    subs = {"monthly": b.subscribe(monthly.id, "monthly")["id"], "yearly": b.subscribe(yearly.id, "yearly")["id"]}
    return free, monthly, yearly, subs


def _pauses(b: Billing) -> list[tuple[int, str]]:
    with read_tx(b.gw.engine) as conn:
        return sorted((r.studio_id, r.state) for r in conn.execute(select(PAYMENT_PAUSE.c.studio_id, PAYMENT_PAUSE.c.state)))


def _pause_calls(b: Billing) -> list[tuple[str, object, str | None]]:
    return [(c.path.rsplit("/", 1)[1], c.params.get("pause_collection"), c.idempotency_key)
            for c in b.stripe.calls("POST", "/v1/subscriptions/") if "pause_collection" in c.params]


def test_lockdown_pauses_paid_studios_leaves_free_ones_and_resumes_at_the_end(billing: Billing) -> None:
    free, monthly, yearly, subs = _three(billing)
    api = StripeApi(billing.settings)
    report = start_lockdown(billing.gw.engine, api, "Lockdown Winter 2026", ["de"])
    assert sorted(report.paused) == ["monthly-ink", "yearly-ink"] and not report.failed
    assert sorted((sub, params) for sub, params, _ in _pause_calls(billing)) == \
        sorted([(subs["monthly"], {"behavior": "void"}), (subs["yearly"], {"behavior": "void"})])
    assert _pauses(billing) == [(monthly.id, "paused"), (yearly.id, "paused")]
    for sub in subs.values():
        assert billing.stripe.bill(sub)["status"] == "void"    # invoices of the lockdown are never charged

    shown = billing.gw.api(monthly.token).get("/api/v1/billing").json()
    assert shown["payments_paused"] is True and shown["paused_by"] == "Lockdown Winter 2026"
    assert shown["paid_features"] is True
    assert billing.gw.api(monthly.token).get("/api/v1/conversations").status_code == 200   # fully usable
    free_view = billing.gw.api(free.token).get("/api/v1/billing").json()
    assert free_view["payments_paused"] is False and free_view["pauses"] == []

    calls = len(billing.stripe.requests)
    again = start_lockdown(billing.gw.engine, api, "Lockdown Winter 2026", ["DE"])
    assert again.paused == [] and again.unchanged == 2
    assert len(billing.stripe.requests) == calls        # nothing asked of Stripe twice
    assert len(_pauses(billing)) == 2                    # one pause record per studio

    ended = end_lockdown(billing.gw.engine, api, "Lockdown Winter 2026")
    assert sorted(ended.resumed) == ["monthly-ink", "yearly-ink"]
    assert sorted(p for _, p, _ in _pause_calls(billing)[2:]) == ["", ""]   # pause_collection unset
    assert _pauses(billing) == [(monthly.id, "resumed"), (yearly.id, "resumed")]
    assert billing.stripe.bill(subs["monthly"])["status"] == "paid"
    history = billing.gw.api(yearly.token).get("/api/v1/billing").json()
    assert history["payments_paused"] is False and history["paused_by"] is None
    assert [(p["lockdown"], p["state"]) for p in history["pauses"]] == [("Lockdown Winter 2026", "resumed")]
    assert history["pauses"][0]["ended_at"] is not None

    calls = len(billing.stripe.requests)
    assert end_lockdown(billing.gw.engine, api, "Lockdown Winter 2026").resumed == []
    assert len(billing.stripe.requests) == calls
    with pytest.raises(LockdownError, match="ended"):
        start_lockdown(billing.gw.engine, api, "Lockdown Winter 2026", ["DE"])


def test_a_run_that_failed_after_the_first_studio_is_repaired_by_running_it_again(billing: Billing) -> None:
    _, monthly, yearly, subs = _three(billing)
    api = StripeApi(billing.settings)
    # Stripe fails every try for the second studio: the run records it and carries on.
    billing.stripe.fail(subs["yearly"], times=3, status=500)
    first = start_lockdown(billing.gw.engine, api, "Lockdown", [])
    assert first.paused == ["monthly-ink"] and len(first.failed) == 1 and "yearly-ink" in first.failed[0]
    assert _pauses(billing) == [(monthly.id, "paused"), (yearly.id, "pausing")]

    second = start_lockdown(billing.gw.engine, api, "Lockdown", [])
    assert second.paused == ["yearly-ink"] and not second.failed
    assert _pauses(billing) == [(monthly.id, "paused"), (yearly.id, "paused")]
    assert billing.stripe.subscriptions[subs["yearly"]]["pause_collection"] == {"behavior": "void", "resumes_at": None}


def test_a_crash_after_stripe_paused_is_finished_with_the_same_idempotency_key(billing: Billing) -> None:
    _, monthly, _, subs = _three(billing)
    api = StripeApi(billing.settings.model_copy(update={"stripe_max_retries": 0}))
    # Stripe applies the pause but the answer never reaches us (the process dies, the line drops).
    billing.stripe.fail(subs["monthly"], times=1, status=500, after_apply=True)
    first = start_lockdown(billing.gw.engine, api, "Lockdown", ["DE"])
    assert len(first.failed) == 1
    assert billing.stripe.subscriptions[subs["monthly"]]["pause_collection"] is not None   # Stripe did it
    assert (monthly.id, "pausing") in _pauses(billing)

    start_lockdown(billing.gw.engine, api, "Lockdown", ["DE"])
    monthly_calls = [key for sub, _, key in _pause_calls(billing) if sub == subs["monthly"]]
    assert len(monthly_calls) == 2 and monthly_calls[0] == monthly_calls[1]   # replayed, not applied twice
    assert (monthly.id, "paused") in _pauses(billing) and len(_pauses(billing)) == 2


def test_a_studio_subscribing_during_a_lockdown_is_paused_at_once(billing: Billing) -> None:
    api = StripeApi(billing.settings)
    start_lockdown(billing.gw.engine, api, "Lockdown", ["DE"])
    assert _pauses(billing) == []
    late = billing.gw.add_studio("late-ink", country="DE")
    sub = billing.subscribe(late.id, "monthly")
    assert _pauses(billing) == [(late.id, "paused")]
    [(paused_sub, params, key)] = _pause_calls(billing)
    assert (paused_sub, params) == (sub["id"], {"behavior": "void"})
    assert key is not None and key.startswith("gw-lockdown-") and key.endswith(f"-pause-{late.id}-{sub['id']}")
    shown = billing.gw.api(late.token).get("/api/v1/billing").json()
    assert shown["paused_by"] == "Lockdown" and shown["paid_features"] is True


def test_scope_overlap_and_the_worker_reconciliation(billing: Billing) -> None:
    de = billing.gw.add_studio("berlin-ink", country="DE")
    at = billing.gw.add_studio("wien-ink", country="AT")
    subs = {s.slug: billing.subscribe(s.id)["id"] for s in (de, at)}
    api = StripeApi(billing.settings)
    assert start_lockdown(billing.gw.engine, api, "Austria", ["AT"]).paused == ["wien-ink"]
    assert start_lockdown(billing.gw.engine, api, "Everywhere", []).paused == ["berlin-ink", "wien-ink"]
    # Ending one lockdown leaves a studio that another still covers paused.
    assert end_lockdown(billing.gw.engine, api, "Austria").resumed == ["wien-ink"]
    assert billing.stripe.subscriptions[subs["wien-ink"]]["pause_collection"] is not None
    with read_tx(billing.gw.engine) as conn:
        assert has_paid_features(conn, at.id, billing.settings)
    assert reconcile(billing.gw.engine, api).failed == []   # the worker's round: nothing left to do
    assert end_lockdown(billing.gw.engine, api, "Everywhere").resumed == ["berlin-ink", "wien-ink"]
    assert all(billing.stripe.subscriptions[s]["pause_collection"] is None for s in subs.values())
    assert [(i.name, i.ended_at is not None, i.pauses) for i in lockdown_status(billing.gw.engine)] == [
        ("Austria", True, {"resumed": 1}), ("Everywhere", True, {"resumed": 2})]


def test_lockdown_commands(billing: Billing) -> None:
    _, _, _, subs = _three(billing)
    s = billing.settings
    env = gateway_subprocess_env()
    env.update(GATEWAY_DATABASE_URL=s.resolved_database_url, GATEWAY_DATA_DIR=str(s.data_dir),
               GATEWAY_SECRET_KEY=s.secret_key, GATEWAY_MAIL_DOMAIN=s.mail_domain,
               GATEWAY_STRIPE_SECRET_KEY=s.stripe_secret_key.get_secret_value(),  # type: ignore[union-attr]
               GATEWAY_STRIPE_API_BASE=s.stripe_api_base, GATEWAY_STRIPE_PRICE_MONTHLY=s.stripe_price_monthly,
               GATEWAY_STRIPE_PRICE_YEARLY=s.stripe_price_yearly, GATEWAY_STRIPE_RETRY_WAIT="0")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(gateway_command() + ["lockdown", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    started = run("start", "--name", "Lockdown", "--country", "DE", "--json")
    assert started.returncode == 0, started.stderr
    assert sorted(json.loads(started.stdout)["paused"]) == ["monthly-ink", "yearly-ink"]
    status = json.loads(run("status", "--json").stdout)
    assert [(x["name"], x["countries"], x["ended_at"], x["pauses"]) for x in status] == [
        ("Lockdown", ["DE"], None, {"paused": 2})]
    conflict = run("start", "--name", "Lockdown", "--country", "AT")
    assert conflict.returncode == 1 and "another lockdown" in conflict.stderr
    ended = run("end", "--name", "Lockdown")
    assert ended.returncode == 0 and "2 resumed" in ended.stdout
    assert all(billing.stripe.subscriptions[sub]["pause_collection"] is None for sub in subs.values())
    assert run("end", "--name", "nope").returncode == 1


def test_the_worker_finishes_a_pause_that_stripe_refused_during_the_command(billing: Billing) -> None:
    from tests.conftest import start_gateway

    _, monthly, _, subs = _three(billing)
    billing.stripe.fail(subs["monthly"], times=3, status=503)
    report = start_lockdown(billing.gw.engine, StripeApi(billing.settings), "Lockdown", ["DE"])
    assert len(report.failed) == 1 and (monthly.id, "pausing") in _pauses(billing)

    worker = start_gateway(billing.settings, roles=("worker",))   # reconciles at start, then every 10 min
    try:
        assert worker.gateway.lockdowns is not None and worker.gateway.lockdowns.wait_rounds(1, timeout=60)
    finally:
        worker.stop()
    assert (monthly.id, "paused") in _pauses(billing)
    assert billing.stripe.subscriptions[subs["monthly"]]["pause_collection"] == {"behavior": "void", "resumes_at": None}
