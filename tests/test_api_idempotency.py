"""Idempotency-Key over real HTTP: a retried reply sends one mail (real relay sink), a reused
key with another body is 422, a key still in progress is 409, a replayed token creation has no
secret, failures are not kept, and expired answers are purged."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from gateway.access.idempotency import TAKEOVER_AFTER, TTL
from gateway.lifecycle.erasure import erase_conversation
from gateway.lifecycle.purge import purge
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import IDEMPOTENCY_KEY, OUTBOUND_JOB
from tests.billing_support import Billing, billing  # noqa: F401 - the fixture
from tests.conftest import RunningGateway
from tests.relay_sink import RelaySink
from tests.test_outbound import inquiry, outbound_gateway, send_due, sink  # noqa: F401 - the fixture

KEY = "Idempotency-Key"


@pytest.fixture
def mailing(tmp_path: Path, database_url: str, sink: RelaySink) -> Iterator[RunningGateway]:
    running = outbound_gateway(tmp_path, database_url, sink.url)
    try:
        yield running
    finally:
        running.stop()


def _comparable(answer: httpx.Response) -> tuple[int, bytes, dict[str, str]]:
    # Each request keeps its own X-Request-Id (a replay is a new request to trace), all else is the same.
    headers = {k: v for k, v in answer.headers.items()
               if k not in ("date", "idempotent-replayed", "content-length", "x-request-id")}
    return answer.status_code, answer.content, headers


def _jobs(running: RunningGateway) -> int:
    with read_tx(running.engine) as conn:
        return len(conn.execute(select(OUTBOUND_JOB.c.id)).all())


def test_a_reply_posted_three_times_with_one_key_sends_one_mail(mailing: RunningGateway, sink: RelaySink) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    url = f"/api/v1/conversations/{conversation['id']}/replies"
    answers = [api.post(url, json={"text": "Freitag um 14 Uhr passt."}, headers={KEY: "reply-7f3a"})
               for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202]
    assert "idempotent-replayed" not in answers[0].headers
    assert [a.headers["idempotent-replayed"] for a in answers[1:]] == ["true", "true"]
    assert _comparable(answers[1]) == _comparable(answers[0]) == _comparable(answers[2])
    assert send_due(mailing) == 1
    assert len(sink.received) == 1 and send_due(mailing) == 0
    # JSON is compared parsed: spacing and key order are the same request.
    again = api.post(url, content=b'{ "text" :  "Freitag um 14 Uhr passt." }', headers={KEY: "reply-7f3a"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    # Without a key, or with another one, a reply is a new reply.
    assert api.post(url, json={"text": "Freitag um 14 Uhr passt."}).status_code == 202
    assert api.post(url, json={"text": "Freitag um 14 Uhr passt."}, headers={KEY: "reply-8"}).status_code == 202
    assert send_due(mailing) == 2 and len(sink.received) == 3


def test_a_multipart_reply_retried_with_a_new_boundary_is_recognised(mailing: RunningGateway) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    url = f"/api/v1/conversations/{conversation['id']}/replies"
    files = {"files": ("sketch.pdf", b"%PDF-1.4 sketch", "application/pdf")}
    first = api.post(url, data={"text": "Anbei die Skizze."}, files=files, headers={KEY: "upload-1"})
    second = api.post(url, data={"text": "Anbei die Skizze."}, files=files, headers={KEY: "upload-1"})  # new boundary
    assert first.status_code == 202 and second.status_code == 202, second.text
    assert second.headers["idempotent-replayed"] == "true" and second.content == first.content
    assert _jobs(mailing) == 1
    uploads = [api.post(f"{url}/upload", data={"text": "Anbei die Skizze."}, files=files, headers={KEY: "upload-2"})
               for _ in range(2)]
    assert [u.status_code for u in uploads] == [202, 202] and uploads[1].content == uploads[0].content
    assert uploads[1].headers["idempotent-replayed"] == "true" and _jobs(mailing) == 2


def test_the_same_key_with_another_body_or_route_is_422(mailing: RunningGateway) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    url = f"/api/v1/conversations/{conversation['id']}/replies"
    assert api.post(url, json={"text": "Freitag passt."}, headers={KEY: "k-1"}).status_code == 202
    for answer in (api.post(url, json={"text": "Samstag passt."}, headers={KEY: "k-1"}),
                   api.post("/api/v1/tokens", headers={KEY: "k-1"})):
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == "idempotency_key_reused"
    assert _jobs(mailing) == 1
    # Keys are per studio: another studio's identical key is its own.
    other = mailing.add_studio("blackrose")
    assert mailing.api(other.token).post("/api/v1/tokens", headers={KEY: "k-1"}).status_code == 201


@pytest.mark.parametrize("key", ["", "x" * 256, "two words", "tab\there", "ümlaut"])
def test_a_malformed_key_is_400(mailing: RunningGateway, key: str) -> None:
    studio = mailing.add_studio("inkwell")
    answer = mailing.api(studio.token).post("/api/v1/tokens", headers={KEY: key.encode()})
    assert answer.status_code == 400, answer.text
    with read_tx(mailing.engine) as conn:
        assert conn.execute(select(IDEMPOTENCY_KEY)).all() == []


def test_a_key_still_in_progress_is_409_and_an_abandoned_one_is_taken_over(mailing: RunningGateway) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    url = f"/api/v1/conversations/{conversation['id']}/replies"
    body = {"text": "Freitag passt."}
    assert api.post(url, json=body, headers={KEY: "slow-1"}).status_code == 202
    # The row as a first request still running leaves it: claimed, no answer yet.
    running = {"status_code": None, "headers": None, "body": None}
    with write_tx(mailing.engine) as conn:
        conn.execute(update(IDEMPOTENCY_KEY).values(started_at=utcnow(), **running))
    busy = api.post(url, json=body, headers={KEY: "slow-1"})
    assert busy.status_code == 409 and busy.json()["code"] == "idempotency_in_progress"
    assert busy.headers["retry-after"] == "1" and _jobs(mailing) == 1
    # A claim whose process died (no answer for TAKEOVER_AFTER) is taken over by the next retry.
    with write_tx(mailing.engine) as conn:
        conn.execute(update(IDEMPOTENCY_KEY).values(started_at=utcnow() - TAKEOVER_AFTER - timedelta(seconds=1)))
    taken = api.post(url, json=body, headers={KEY: "slow-1"})
    assert taken.status_code == 202 and "idempotent-replayed" not in taken.headers
    assert _jobs(mailing) == 2
    assert api.post(url, json=body, headers={KEY: "slow-1"}).headers["idempotent-replayed"] == "true"


def test_concurrent_requests_with_one_key_send_one_mail_and_answer_202_or_409(
        mailing: RunningGateway, sink: RelaySink) -> None:
    studio, _, conversation = inquiry(mailing)
    url = f"{mailing.base_url}/api/v1/conversations/{conversation['id']}/replies"
    rounds, statuses = 8, Counter[int]()

    def post(key: str, barrier: threading.Barrier, answers: list[httpx.Response]) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {studio.token}"}, timeout=30) as client:
            barrier.wait()  # the three leave together
            answers.append(client.post(url, json={"text": "Freitag passt."}, headers={KEY: key}))

    for number in range(rounds):
        barrier, answers = threading.Barrier(3), list[httpx.Response]()
        threads = [threading.Thread(target=post, args=(f"race-{number}", barrier, answers)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        statuses.update(a.status_code for a in answers)
        created = [a for a in answers if a.status_code == 202]
        assert created and len({a.content for a in created}) == 1
    assert set(statuses) <= {202, 409}, statuses
    assert _jobs(mailing) == rounds and send_due(mailing) == rounds and len(sink.received) == rounds


def test_a_failed_first_request_is_not_kept_and_a_retry_runs(mailing: RunningGateway) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    missing = api.post("/api/v1/conversations/999999/replies", json={"text": "Hallo"}, headers={KEY: "f-1"})
    assert missing.status_code == 404
    empty = api.post(f"/api/v1/conversations/{conversation['id']}/replies", json={"text": " "},
                     headers={KEY: "f-2"})
    assert empty.status_code == 400
    with read_tx(mailing.engine) as conn:
        assert conn.execute(select(IDEMPOTENCY_KEY)).all() == []
    again = api.post("/api/v1/conversations/999999/replies", json={"text": "Hallo"}, headers={KEY: "f-1"})
    assert again.status_code == 404 and "idempotent-replayed" not in again.headers


def test_a_replayed_token_creation_has_no_secret(mailing: RunningGateway) -> None:
    studio = mailing.add_studio("inkwell")
    api = mailing.api(studio.token)
    first = api.post("/api/v1/tokens", headers={KEY: "token-1"})
    replay = api.post("/api/v1/tokens", headers={KEY: "token-1"})
    assert first.status_code == replay.status_code == 201
    secret = first.json()["token"]
    assert secret.startswith(first.json()["prefix"])
    assert replay.json() == {**first.json(), "token": None}
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["idempotent-secret-withheld"] == "token"
    assert replay.headers["cache-control"] == "no-store"
    assert len(api.get("/api/v1/tokens").json()["items"]) == 2  # one token created, not two
    with read_tx(mailing.engine) as conn:
        stored = conn.execute(select(IDEMPOTENCY_KEY.c.body, IDEMPOTENCY_KEY.c.headers)).all()
    assert stored and all(secret.encode() not in body and secret not in headers for body, headers in stored)


def test_a_replayed_member_connection_has_no_first_token(mailing: RunningGateway) -> None:
    studio = mailing.add_studio("inkwell")
    api = mailing.api(studio.token)
    body = {"email": "artist@inkwell.example", "name": "Artist"}
    first = api.post("/api/v1/profiles", json=body, headers={KEY: "member-1"})
    replay = api.post("/api/v1/profiles", json=body, headers={KEY: "member-1"})
    assert first.status_code == replay.status_code == 201, replay.text
    assert first.json()["token"]["token"]
    expected: dict[str, Any] = {**first.json(), "token": {**first.json()["token"], "token": None}}
    assert replay.json() == expected and replay.headers["idempotent-secret-withheld"] == "token.token"


def test_a_support_grant_is_created_once(mailing: RunningGateway) -> None:
    studio = mailing.add_studio("inkwell")
    api = mailing.api(studio.token)
    first = api.post("/api/v1/support-grants", json={"hours": 2}, headers={KEY: "grant-1"})
    replay = api.post("/api/v1/support-grants", json={"hours": 2}, headers={KEY: "grant-1"})
    assert first.status_code == replay.status_code == 201 and replay.json() == first.json()
    assert len(api.get("/api/v1/support-grants").json()["items"]) == 1


def test_a_checkout_is_started_once(billing: Billing) -> None:  # noqa: F811 - the fixture
    studio = billing.gw.add_studio("inkwell")
    api = billing.gw.api(studio.token)
    first = api.post("/api/v1/billing/checkout", json={"plan": "monthly"}, headers={KEY: "pay-1"})
    replay = api.post("/api/v1/billing/checkout", json={"plan": "monthly"}, headers={KEY: "pay-1"})
    assert first.status_code == replay.status_code == 201 and replay.json() == first.json()
    assert len(billing.stripe.calls("POST", "/v1/checkout/sessions")) == 1


def test_answers_are_kept_for_a_day_then_purged(mailing: RunningGateway) -> None:
    studio = mailing.add_studio("inkwell")
    api = mailing.api(studio.token)
    assert api.post("/api/v1/tokens", headers={KEY: "old"}).status_code == 201
    assert purge(mailing.engine, mailing.settings, utcnow()).idempotency_keys == 0
    assert purge(mailing.engine, mailing.settings, utcnow() + TTL + timedelta(seconds=1)).idempotency_keys == 1
    fresh = api.post("/api/v1/tokens", headers={KEY: "old"})  # forgotten: a new token
    assert fresh.status_code == 201 and fresh.json()["token"] and "idempotent-replayed" not in fresh.headers
    # An expired answer that the purge has not reached yet counts as absent too.
    with write_tx(mailing.engine) as conn:
        conn.execute(update(IDEMPOTENCY_KEY).values(expires_at=utcnow() - timedelta(seconds=1)))
    again = api.post("/api/v1/tokens", headers={KEY: "old"})
    assert again.status_code == 201 and again.json()["token"] and "idempotent-replayed" not in again.headers
    assert len(api.get("/api/v1/tokens").json()["items"]) == 4


def test_erasing_a_conversation_forgets_the_answers_holding_its_replies(mailing: RunningGateway) -> None:
    studio, _, conversation = inquiry(mailing)
    api = mailing.api(studio.token)
    text = "Geheimer Termin: Freitag 14 Uhr"
    url = f"/api/v1/conversations/{conversation['id']}/replies"
    assert api.post(url, json={"text": text}, headers={KEY: "erase-1"}).status_code == 202
    assert api.post("/api/v1/tokens", headers={KEY: "erase-2"}).status_code == 201
    with write_tx(mailing.engine) as conn:
        assert erase_conversation(conn, studio.id, conversation["id"])
    with read_tx(mailing.engine) as conn:
        kept = conn.execute(select(IDEMPOTENCY_KEY.c.key, IDEMPOTENCY_KEY.c.body)).all()
    assert [k for k, _ in kept] == ["erase-2"] and all(text.encode() not in body for _, body in kept)
    assert api.post(url, json={"text": text}, headers={KEY: "erase-1"}).status_code == 404


def test_a_first_request_refused_by_validation_leaves_no_claim(mailing: RunningGateway) -> None:
    studio = mailing.add_studio("inkwell")
    api = mailing.api(studio.token)
    refused = api.post("/api/v1/support-grants", json={"hours": 0}, headers={KEY: "grant-bad"})
    assert refused.status_code == 400
    with read_tx(mailing.engine) as conn:
        assert conn.execute(select(IDEMPOTENCY_KEY)).all() == []
    assert api.post("/api/v1/support-grants", json={"hours": 0}, headers={KEY: "grant-bad"}).status_code == 400


def test_the_openapi_document_offers_the_header_on_each_creating_post(mailing: RunningGateway) -> None:
    document = httpx.get(f"{mailing.base_url}/schema/openapi.json").json()
    creating = [("/api/v1/conversations/{conversation_id}/replies", "post"),
                ("/api/v1/conversations/{conversation_id}/replies/upload", "post"),
                ("/api/v1/profiles", "post"), ("/api/v1/support-grants", "post"),
                ("/api/v1/tokens", "post"), ("/api/v1/billing/checkout", "post")]
    for path, method in creating:
        [header] = [p for p in document["paths"][path][method].get("parameters", []) if p["name"] == KEY]
        assert header["in"] == "header" and header["required"] is False, (path, header)
        assert header["schema"]["maxLength"] == 255
