"""Webhooks to the studio's own systems (issue 16), against a real local HTTPS server whose
certificate the gateway is told to trust, on SQLite and PostgreSQL.

Events are made by real mail over SMTP through the pipeline; the worker's delivery rounds are
run here with a clock the test moves (WebhookSender, as gateway/runtime.py runs it), so the
retry schedule and the lease are shown without waiting for them. One test runs the real worker.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import multiprocessing
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select

from gateway.lifecycle.webhook_notice import owner_notice
from gateway.outbound.webhooks import WebhookSender
from gateway.settings import Settings
from gateway.lifecycle.erasure import erase_studio
from gateway.store.db import make_engine, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import MESSAGE, OUTBOUND_JOB, WEBHOOK_ATTEMPT, WEBHOOK_DELIVERY, WEBHOOK_ENDPOINT
from tests.conftest import RunningGateway, StudioInfo, make_settings, start_gateway
from tests.https_receiver import Receiver
from tests.mail import make_mail

ENDPOINTS = "/api/v1/webhook-endpoints"


def verify(body: bytes, header: str, secret: str, tolerance: int = 300) -> bool:
    """The README's verification, word for word."""
    items = [part.split("=", 1) for part in header.split(",")]
    timestamp = next(value for key, value in items if key == "t")
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, value) for key, value in items if key == "v1")


class Clock:
    """The sender's clock: now, or later when the test says so."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    (tmp_path / "tls").mkdir()
    running = Receiver(tmp_path / "tls").start()
    yield running
    running.stop()


def hook_settings(tmp_path: Path, database_url: str, receiver: Receiver, **more: object) -> Settings:
    return make_settings(tmp_path, database_url, webhook_allow_loopback=True, webhook_ca_file=receiver.ca_file,
                         **more)


@pytest.fixture
def hooked(tmp_path: Path, database_url: str, receiver: Receiver) -> Iterator[RunningGateway]:
    running = start_gateway(hook_settings(tmp_path, database_url, receiver))
    yield running
    running.stop()


def register(gw: RunningGateway, studio: StudioInfo, url: str,
             types: tuple[str, ...] = ("message.created",)) -> tuple[int, str]:
    answer = gw.api(studio.token).post(ENDPOINTS, json={"url": url, "event_types": list(types)})
    assert answer.status_code == 201, answer.text
    return answer.json()["endpoint"]["id"], answer.json()["secret"]


def guest_writes(gw: RunningGateway, studio: StudioInfo, subject: str = "Termin?") -> None:
    assert gw.send(make_mail(subject=subject), studio.address).code == 250
    gw.process()


def deliveries(gw: RunningGateway, studio: StudioInfo, endpoint_id: int) -> list[dict]:  # type: ignore[type-arg]
    answer = gw.api(studio.token).get(f"{ENDPOINTS}/{endpoint_id}/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def test_a_post_is_the_event_signed_with_the_endpoint_secret(hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    endpoint_id, secret = register(hooked, studio, receiver.url())
    assert secret.startswith("whsec_")
    guest_writes(hooked, studio)
    assert WebhookSender(hooked.engine, hooked.settings).run_round() == 1
    [post] = receiver.wait_for(1)
    assert post.path == "/hooks/gateway" and post.headers["content-type"] == "application/json"
    assert verify(post.body, post.headers["gateway-signature"], secret)
    assert not verify(post.body, post.headers["gateway-signature"], "whsec_someone-else")
    assert not verify(post.body + b" ", post.headers["gateway-signature"], secret)
    event = json.loads(post.body)
    assert event["type"] == "message.created" and event["studio"] == "atelier" and event["direction"] == "inbound"
    assert post.headers["gateway-event-id"] == f"evt_{studio.id}_{event['id']}"
    # The same object as on the SSE stream: the envelope and the ids of what changed.
    assert set(event) == {"id", "type", "studio", "created_at", "conversation_id", "message_id", "direction"}
    [delivery] = deliveries(hooked, studio, endpoint_id)
    assert delivery["status"] == "delivered" and delivery["event_id"] == event["id"]
    assert [(a["status_code"], a["answer"]) for a in delivery["attempts"]] == [(200, '{"received": true}')]
    # Stored encrypted, never as it was shown.
    with read_tx(hooked.engine) as conn:
        stored = conn.execute(select(WEBHOOK_ENDPOINT.c.secret_enc)).scalar_one()
    assert secret not in stored and secret[6:] not in stored


def test_only_the_chosen_event_types_are_posted(hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    register(hooked, studio, receiver.url(), ("held.created",))
    guest_writes(hooked, studio)   # a new inquiry: message.created, not held
    assert WebhookSender(hooked.engine, hooked.settings).run_round() == 0
    assert receiver.posts == []


def test_a_500_is_retried_later_and_delivered_once(hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    endpoint_id, _ = register(hooked, studio, receiver.url())
    receiver.answers = [500]
    guest_writes(hooked, studio)
    clock = Clock()
    sender = WebhookSender(hooked.engine, hooked.settings, clock=clock)
    assert sender.run_round() == 1
    [delivery] = deliveries(hooked, studio, endpoint_id)
    assert delivery["status"] == "pending" and [a["status_code"] for a in delivery["attempts"]] == [500]
    assert delivery["attempts"][0]["answer"] == "receiver trouble"
    assert sender.run_round() == 0        # not due yet: the backoff is stored, not slept
    clock.offset = timedelta(minutes=2)   # the first retry comes after 30 s and up to 15 s of jitter
    assert sender.run_round() == 1
    clock.offset = timedelta(days=1)
    assert sender.run_round() == 0        # delivered: never posted again
    first, second = receiver.wait_for(2)
    assert len(receiver.posts) == 2
    assert first.body == second.body
    assert first.headers["gateway-event-id"] == second.headers["gateway-event-id"]
    [delivery] = deliveries(hooked, studio, endpoint_id)
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    clock.offset = timedelta(days=31)     # done deliveries are listed for 30 days, then forgotten
    assert WebhookSender(hooked.engine, hooked.settings, clock=clock).run_round() == 0
    assert deliveries(hooked, studio, endpoint_id) == []


def test_in_order_per_conversation_a_later_event_waits_for_a_failing_one(
        hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    register(hooked, studio, receiver.url(), ("message.created", "conversation.updated"))
    receiver.answers = [503]
    guest_writes(hooked, studio)
    conversation_id = hooked.api(studio.token).get("/api/v1/conversations").json()["items"][0]["id"]
    assert hooked.api(studio.token).post(f"/api/v1/conversations/{conversation_id}/read").status_code == 200
    clock = Clock()
    sender = WebhookSender(hooked.engine, hooked.settings, clock=clock)
    assert sender.run_round() == 1        # the message fails; its conversation's next event waits
    clock.offset = timedelta(minutes=2)
    assert sender.run_round() == 2
    types = [json.loads(p.body)["type"] for p in receiver.wait_for(3)]
    assert types == ["message.created", "message.created", "conversation.updated"]


def _worker_round(settings: Settings) -> None:
    """A worker process's delivery round (killed by the test while it posts)."""
    engine = make_engine(settings.resolved_database_url, busy_timeout=2.0)
    WebhookSender(engine, settings).run_round()


def test_a_worker_killed_while_posting_is_taken_over_with_the_same_event_id(
        hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    endpoint_id, secret = register(hooked, studio, receiver.url())
    guest_writes(hooked, studio)
    receiver.hold_first = threading.Event()
    child = multiprocessing.get_context("spawn").Process(target=_worker_round, args=(hooked.settings,))
    child.start()
    try:
        receiver.wait_for(1, timeout=60)      # its post arrived and waits for an answer
        child.kill()                          # SIGKILL: no answer recorded, the claim left behind
        child.join(30)
    finally:
        receiver.hold_first.set()
    assert child.exitcode == -signal.SIGKILL
    clock = Clock()
    other = WebhookSender(hooked.engine, hooked.settings, clock=clock)
    assert other.run_round() == 0         # the claim is a lease: held until it runs out
    [delivery] = deliveries(hooked, studio, endpoint_id)
    assert delivery["status"] == "sending" and delivery["attempts"] == []
    clock.offset = timedelta(seconds=hooked.settings.outbound_lease + 1)
    assert other.run_round() == 1
    first, second = receiver.wait_for(2)
    assert first.headers["gateway-event-id"] == second.headers["gateway-event-id"]
    assert first.body == second.body and verify(second.body, second.headers["gateway-signature"], secret)
    [delivery] = deliveries(hooked, studio, endpoint_id)
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["attempts"]] == [200]


@pytest.mark.parametrize("url, reason", [
    ("https://10.0.0.7/hook", "10.0.0.7 is a private address"),
    ("https://192.168.1.1/hook", "192.168.1.1 is a private address"),
    ("https://169.254.169.254/latest/meta-data", "169.254.169.254 is a link-local address"),
    ("https://100.64.0.1/hook", "100.64.0.1 is a shared (carrier-grade NAT) address"),
    ("https://0.0.0.0/hook", "0.0.0.0 is the unspecified address"),
    ("https://224.0.0.1/hook", "224.0.0.1 is a multicast address"),
    ("https://[::ffff:10.0.0.7]/hook", "10.0.0.7 is a private address"),
    ("https://[fd00::1]/hook", "fd00::1 is a private address"),
    ("https://[fe80::1]/hook", "fe80::1 is a link-local address"),
    ("http://1.1.1.1/hook", "only https URLs are allowed"),
    ("https://user:pw@1.1.1.1/hook", "credentials in the URL are not allowed"),
])
def test_a_url_on_a_private_address_is_refused_with_the_reason(gw: RunningGateway, url: str, reason: str) -> None:
    studio = gw.add_studio("atelier")
    answer = gw.api(studio.token).post(ENDPOINTS, json={"url": url, "event_types": ["message.created"]})
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["code"] == "webhook_endpoint_refused"
    [error] = body["errors"]
    assert error["field"] == "url" and error["message"].startswith(reason)
    assert gw.api(studio.token).get(ENDPOINTS).json()["items"] == []


def test_loopback_is_refused_without_the_development_setting(gw: RunningGateway) -> None:
    studio = gw.add_studio("atelier")
    for url in ("https://127.0.0.1/hook", "https://localhost/hook", "https://[::1]/hook",
                "https://[::ffff:127.0.0.1]/hook"):
        answer = gw.api(studio.token).post(ENDPOINTS, json={"url": url, "event_types": ["message.created"]})
        assert answer.status_code == 422 and "loopback" in answer.json()["errors"][0]["message"], (url, answer.text)


def test_the_address_is_checked_again_at_every_delivery(
        tmp_path: Path, hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    endpoint_id, _ = register(hooked, studio, receiver.url())
    guest_writes(hooked, studio)
    strict = make_settings(tmp_path, hooked.settings.resolved_database_url, webhook_ca_file=receiver.ca_file)
    assert WebhookSender(hooked.engine, strict).run_round() == 1
    assert receiver.posts == []
    [delivery] = deliveries(hooked, studio, endpoint_id)
    [attempt] = delivery["attempts"]
    assert attempt["status_code"] is None and "loopback" in attempt["answer"]


def test_unknown_event_types_are_refused_naming_the_type(gw: RunningGateway) -> None:
    studio = gw.add_studio("atelier")
    answer = gw.api(studio.token).post(ENDPOINTS, json={"url": "https://1.1.1.1/hook",
                                                        "event_types": ["message.created", "message.exploded"]})
    assert answer.status_code == 422
    [error] = answer.json()["errors"]
    assert error["field"] == "event_types" and "message.exploded" in error["message"]


def test_rotation_signs_with_both_secrets_for_a_day(hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    endpoint_id, old = register(hooked, studio, receiver.url())
    rotated = hooked.api(studio.token).post(f"{ENDPOINTS}/{endpoint_id}/rotate-secret")
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["endpoint"]["previous_secret_valid_until"] is not None
    guest_writes(hooked, studio)
    clock = Clock()
    sender = WebhookSender(hooked.engine, hooked.settings, clock=clock)
    assert sender.run_round() == 1
    [post] = receiver.wait_for(1)
    header = post.headers["gateway-signature"]
    assert header.count("v1=") == 2
    assert verify(post.body, header, old) and verify(post.body, header, new)
    clock.offset = timedelta(hours=25)    # the old secret signs no more
    guest_writes(hooked, studio, subject="Noch eine Frage")
    assert sender.run_round() == 1
    later = receiver.wait_for(2)[1]
    assert later.headers["gateway-signature"].count("v1=") == 1
    assert verify(later.body, later.headers["gateway-signature"], new)
    assert not verify(later.body, later.headers["gateway-signature"], old)


def test_an_endpoint_failing_for_three_days_is_disabled_and_the_owner_told_by_mail(
        tmp_path: Path, database_url: str, receiver: Receiver) -> None:
    gw = start_gateway(hook_settings(tmp_path, database_url, receiver, helpdesk_address="help@mail.test"))
    try:
        studio = gw.add_studio("atelier", owner="inhaberin@atelier.example")
        endpoint_id, _ = register(gw, studio, receiver.url())
        receiver.answers = [500] * 100
        guest_writes(gw, studio)
        clock = Clock()
        # Wired as gateway/runtime.py wires the worker's sender.
        sender = WebhookSender(gw.engine, gw.settings, clock=clock, on_disabled=owner_notice(gw.settings))
        posts = 0
        while clock.offset < timedelta(days=4):
            posts += sender.run_round()
            clock.offset += timedelta(hours=2)
        [endpoint] = gw.api(studio.token).get(ENDPOINTS).json()["items"]
        assert endpoint["disabled_at"] is not None
        assert 10 < posts < 60     # backed off over the days, not hammered
        [delivery] = deliveries(gw, studio, endpoint_id)
        assert delivery["status"] in ("pending", "failed")
        with read_tx(gw.engine) as conn:
            told = conn.execute(select(MESSAGE.c.subject, MESSAGE.c.auto_kind).join(
                OUTBOUND_JOB, OUTBOUND_JOB.c.message_id == MESSAGE.c.id)
                .where(MESSAGE.c.auto_kind == "webhook_disabled")).all()
        assert [(r.subject, r.auto_kind) for r in told] == [(f"Webhook deaktiviert: {receiver.url()}", "webhook_disabled")]
        guest_writes(gw, studio, subject="Hallo?")
        assert sender.run_round() == 0    # disabled: nothing more is posted
    finally:
        gw.stop()


def test_endpoints_are_the_owner_s_and_deleting_one_stops_its_posts(
        hooked: RunningGateway, receiver: Receiver) -> None:
    studio, other = hooked.add_studio("atelier"), hooked.add_studio("nachbar")
    endpoint_id, _ = register(hooked, studio, receiver.url())
    listed = hooked.api(studio.token).get(ENDPOINTS).json()["items"]
    assert [(e["id"], e["url"], e["event_types"]) for e in listed] == [(endpoint_id, receiver.url(), ["message.created"])]
    assert "secret" not in listed[0]
    assert hooked.api(other.token).get(f"{ENDPOINTS}/{endpoint_id}/deliveries").status_code == 404
    assert hooked.api(other.token).delete(f"{ENDPOINTS}/{endpoint_id}").status_code == 404
    assert hooked.api(studio.token).delete(f"{ENDPOINTS}/{endpoint_id}").status_code == 204
    guest_writes(hooked, studio)
    assert WebhookSender(hooked.engine, hooked.settings).run_round() == 0


def test_two_workers_at_once_post_each_event_once(hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    register(hooked, studio, receiver.url())
    for n in range(12):   # twelve guests, twelve conversations: nothing orders them
        assert hooked.send(make_mail(subject=f"Anfrage {n}", from_=f"Gast {n} <gast{n}@example.org>"),
                           studio.address, mail_from=f"gast{n}@example.org").code == 250
    hooked.process()
    workers = [WebhookSender(hooked.engine, hooked.settings) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        posted = list(pool.map(lambda w: w.run_round(), workers))
    assert sum(posted) == 12
    ids = [p.headers["gateway-event-id"] for p in receiver.wait_for(12)]
    assert len(ids) == len(set(ids)) == 12


def test_erasing_the_studio_erases_its_endpoints_deliveries_and_attempts(
        hooked: RunningGateway, receiver: Receiver) -> None:
    studio = hooked.add_studio("atelier")
    register(hooked, studio, receiver.url())
    receiver.answers = [500]
    guest_writes(hooked, studio)
    assert WebhookSender(hooked.engine, hooked.settings).run_round() == 1
    with write_tx(hooked.engine) as conn:
        assert erase_studio(conn, studio.id, hooked.settings.mail_domain)
    with read_tx(hooked.engine) as conn:
        for table in (WEBHOOK_ENDPOINT, WEBHOOK_DELIVERY, WEBHOOK_ATTEMPT):
            assert conn.execute(select(func.count()).select_from(table)).scalar_one() == 0, table.name


def test_the_worker_posts_on_its_own(tmp_path: Path, database_url: str, receiver: Receiver) -> None:
    gw = start_gateway(hook_settings(tmp_path, database_url, receiver, webhook_interval=0.1),
                       roles=("smtp", "web", "worker"))
    try:
        studio = gw.add_studio("atelier")
        _, secret = register(gw, studio, receiver.url())
        assert gw.send(make_mail(subject="Termin?"), studio.address).code == 250
        [post] = receiver.wait_for(1)
        assert json.loads(post.body)["type"] == "message.created"
        assert verify(post.body, post.headers["gateway-signature"], secret)
    finally:
        gw.stop()
