"""The API's contract for errors (issue 14), over real HTTP on SQLite and PostgreSQL.

One body for every error (`status_code`, a stable `code`, `detail`, and `errors` for validation
failures only); ids outside what a row can have are `404` like any unknown id and malformed
ones `400`, on every route with an id; JSON bodies are JSON (`415`) and strictly typed; every
answer has an `X-Request-Id`, and a `500` is logged with it; `OPTIONS` lists every method.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from gateway.store.db import is_sqlite, write_tx
from tests.conftest import RunningGateway
from tests.mail import make_mail

ERROR_KEYS = {"status_code", "code", "detail"}

# Every route with an id in its path: (method, path, what it takes).
ID_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v1/conversations/{id}", {}),
    ("GET", "/api/v1/conversations/{id}/messages", {}),
    ("DELETE", "/api/v1/conversations/{id}", {}),
    ("POST", "/api/v1/conversations/{id}/read", {}),
    ("POST", "/api/v1/conversations/{id}/replies", {"json": {"text": "Gern!"}}),
    ("POST", "/api/v1/conversations/{id}/replies/upload", {"data": {"text": "Gern!"},
                                                          "files": {"files": ("a.txt", b"a", "text/plain")}}),
    ("POST", "/api/v1/conversations/{id}/close", {}),
    ("POST", "/api/v1/conversations/{id}/reopen", {}),
    ("POST", "/api/v1/conversations/{id}/restore", {}),
    ("POST", "/api/v1/held/{id}/accept", {}),
    ("POST", "/api/v1/held/{id}/reject", {}),
    ("GET", "/api/v1/attachments/{id}", {}),
    ("GET", "/api/v1/messages/{id}", {}),
    ("DELETE", "/api/v1/messages/{id}", {}),
    ("POST", "/api/v1/messages/{id}/restore", {}),
    ("DELETE", "/api/v1/tokens/{id}", {}),
    ("DELETE", "/api/v1/profiles/{id}", {}),
    ("DELETE", "/api/v1/support-grants/{id}", {}),
    ("GET", "/api/v1/guests/{id}", {}),
    ("POST", "/api/v1/guests/{id}/erase", {}),
    ("DELETE", "/api/v1/webhook-endpoints/{id}", {}),
    ("POST", "/api/v1/webhook-endpoints/{id}/rotate-secret", {}),
    ("GET", "/api/v1/webhook-endpoints/{id}/deliveries", {}),
]
UNKNOWN_ID = "999999"
NO_SUCH_IDS = ["0", "-1", "2147483648", str(2**63), str(2**64), "9" * 60, "007777777"]
MALFORMED_IDS = ["abc", "1.5", "1e3", "%20", "0x10", "12abc"]


def _call(api: httpx.Client, method: str, path: str, ident: str, body: dict[str, Any]) -> httpx.Response:
    return api.request(method, path.replace("{id}", ident), **body)


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error body, with this status and code; `errors` only for validation errors."""
    body = answer.json()
    assert answer.status_code == status, (answer.status_code, body)
    assert set(body) - {"errors"} == ERROR_KEYS, body
    assert body["status_code"] == status and body["code"] == code and body["detail"], body
    if code == "validation_failed" or "errors" in body:
        assert isinstance(body["errors"], list) and body["errors"], body
        assert all(set(e) == {"field", "message"} for e in body["errors"]), body
    assert answer.headers["X-Request-Id"]
    return dict(body)


def test_ids_out_of_range_are_unknown_and_malformed_ones_are_bad_requests_on_every_route(
        gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    paths = api.get("/schema/openapi.json").json()["paths"]
    documented = {(method.upper(), re.sub(r"\{\w+\}", "{id}", path))
                  for path, item in paths.items() if "{" in path for method in item}
    # Declared the one way (gateway/api/ids.py): an integer of the range rows have.
    for path, item in paths.items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert parameter["schema"] == {"type": "integer", "format": "int32", "minimum": 1,
                                                   "maximum": 2**31 - 1}, (path, parameter)
    assert documented == {(method, path) for method, path, _ in ID_ROUTES}, "ID_ROUTES is not every id route"
    for method, path, body in ID_ROUTES:
        unknown = _call(api, method, path, UNKNOWN_ID, body)
        assert_error(unknown, 404, "not_found")
        for ident in NO_SUCH_IDS:
            answer = _call(api, method, path, ident, body)
            assert answer.status_code == 404, (method, path, ident, answer.text)
            assert answer.json() == unknown.json(), (method, path, ident)
        for ident in MALFORMED_IDS:
            errors = assert_error(_call(api, method, path, ident, body), 400, "validation_failed")["errors"]
            assert len(errors) == 1 and errors[0]["field"].endswith("_id"), (method, path, ident, errors)
    # Without a token it is 401 first, as for any id: the id is looked at only for a caller.
    assert_error(gw.api(None).get(f"/api/v1/conversations/{2**63}"), 401, "unauthorized")


def test_every_error_has_one_shape_and_a_stable_code(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    anonymous = gw.api(None)
    assert_error(anonymous.get("/api/v1/conversations"), 401, "unauthorized")
    assert anonymous.get("/api/v1/conversations").headers["WWW-Authenticate"] == "Bearer"
    assert_error(gw.api("gw_wrong").get("/api/v1/conversations"), 401, "unauthorized")
    assert "errors" not in assert_error(api.get("/api/v1/no-such-route"), 404, "not_found")
    assert_error(api.put("/api/v1/studio", json={}), 405, "method_not_allowed")
    limit = assert_error(api.get("/api/v1/conversations", params={"limit": 0}), 400, "validation_failed")
    assert [e["field"] for e in limit["errors"]] == ["limit"]
    zone = assert_error(api.patch("/api/v1/studio", json={"time_zone": "Mars/Olympus"}), 400, "validation_failed")
    assert [e["field"] for e in zone["errors"]] == ["time_zone"]
    # 402 on the free plan, with its own code.
    assert gw.send(make_mail(subject="Rose"), studio.address).code == 250
    [result] = gw.process()
    conversation = result.outcomes[0].conversation_id
    assert api.delete(f"/api/v1/conversations/{conversation}").status_code == 200
    assert_error(api.post(f"/api/v1/conversations/{conversation}/restore"), 402, "paid_plan_required")


def test_reply_validation_errors_are_in_errors_with_their_code(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    assert gw.send(make_mail(subject="Rose"), studio.address).code == 250
    [result] = gw.process()
    path = f"/api/v1/conversations/{result.outcomes[0].conversation_id}/replies"
    for text_, code in (("", "reply_text_empty"), ("  \n ", "reply_text_empty"), ("a\x00b", "reply_text_nul")):
        body = assert_error(api.post(path, json={"text": text_}), 400, code)
        assert [e["field"] for e in body["errors"]] == ["text"], body
    missing = assert_error(api.post(path, json={"txt": "hi"}), 400, "validation_failed")
    assert [e["field"] for e in missing["errors"]] == ["text"]
    wrong_type = assert_error(api.post(path, json={"text": 5}), 400, "validation_failed")
    assert [e["field"] for e in wrong_type["errors"]] == ["text"]
    assert_error(api.post(path, content=b'{"text": "unterminated'), 400, "malformed_json")
    assert_error(api.post(path, content=b'{"text": "hi"}', headers={"Content-Type": "text/plain"}),
                 415, "unsupported_media_type")
    # JSON as before, declared or not.
    assert api.post(path, content=b'{"text": "ohne Typ"}').status_code == 202
    assert api.post(path, json={"text": "Gern!"}).status_code == 202


def test_json_bodies_are_json_and_strictly_typed(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    for value in (0, 1, "true", "false", "yes", [True], {"on": True}):
        answer = api.patch("/api/v1/studio", json={"acknowledge_inquiries": value})
        body = assert_error(answer, 400, "validation_failed")
        assert [e["field"] for e in body["errors"]] == ["acknowledge_inquiries"], (value, body)
    assert api.get("/api/v1/studio").json()["acknowledge_inquiries"] is False  # nothing was switched on
    assert_error(api.patch("/api/v1/studio", json={"time_zone": 5}), 400, "validation_failed")
    assert_error(api.patch("/api/v1/studio", content=b"acknowledge_inquiries=true",
                           headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(api.post("/api/v1/support-grants", json={"hours": "5"}), 400, "validation_failed")
    assert_error(api.post("/api/v1/support-grants", json={"hours": 5.5}), 400, "validation_failed")
    assert_error(api.post("/api/v1/profiles", content=b'{"email": "a@b.example"',
                          headers={"Content-Type": "application/json"}), 400, "malformed_json")
    turned_on = api.patch("/api/v1/studio", json={"acknowledge_inquiries": True},
                          headers={"Content-Type": "application/json; charset=utf-8"})
    assert turned_on.status_code == 200 and turned_on.json()["acknowledge_inquiries"] is True
    # JSON Schema (the OpenAPI document's language) counts 3.0 as the integer 3: so do we.
    assert api.post("/api/v1/support-grants", json={"days": 3.0}).status_code == 201


def test_every_answer_has_a_request_id_and_a_sane_one_sent_is_kept(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    ids = {api.get("/api/v1/studio").headers["X-Request-Id"] for _ in range(3)}
    assert len(ids) == 3  # one per request
    assert gw.api(None).get("/healthz").headers["X-Request-Id"]
    assert gw.api(None).get("/api/v1/nothing-here").headers["X-Request-Id"]
    kept = api.get("/api/v1/studio", headers={"X-Request-Id": "app-4711.retry:2"})
    assert kept.headers["X-Request-Id"] == "app-4711.retry:2"
    for insane in ("x" * 500, "two words", "a\tb"):
        answer = api.get("/api/v1/studio", headers={"X-Request-Id": insane})
        assert answer.headers["X-Request-Id"] not in (insane, "") and " " not in answer.headers["X-Request-Id"]


def test_a_500_is_logged_with_its_request_id_which_the_answer_carries(
        gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    # A database that holds what the code cannot read: a bug's stand-in on either back end.
    with write_tx(gw.engine) as conn:
        if is_sqlite(gw.engine):
            conn.execute(text("UPDATE studio SET created_at = 'not a date' WHERE id = :id"), {"id": studio.id})
        else:
            conn.execute(text("ALTER TABLE studio RENAME COLUMN time_zone TO tz_gone"))
    caplog.set_level(logging.ERROR, logger="gateway.api.errors")
    answer = api.get("/api/v1/studio", headers={"X-Request-Id": "bug-report-1"})
    body = assert_error(answer, 500, "internal_error")
    assert answer.headers["X-Request-Id"] == "bug-report-1" and "bug-report-1" in body["detail"]
    [record] = [r for r in caplog.records if r.name == "gateway.api.errors"]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "bug-report-1" in record.getMessage() and "/api/v1/studio" in record.getMessage()
    anonymous = api.get("/api/v1/studio")
    assert anonymous.headers["X-Request-Id"] in anonymous.json()["detail"]


def test_options_allows_every_method_the_path_has(gw: RunningGateway) -> None:
    api = gw.api(None)
    document = api.get("/schema/openapi.json").json()["paths"]
    assert len(document) > 20
    for path, item in document.items():
        concrete = path.replace("{", "").replace("}", "")
        for name in ("conversation_id", "message_id", "attachment_id", "token_id", "profile_id", "grant_id",
                     "guest_id"):
            concrete = concrete.replace(name, "1")
        answer = api.options(concrete)
        assert answer.status_code == 204, (path, answer.status_code)
        allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
        documented = {m.upper() for m in item if m.upper() in {"GET", "POST", "PUT", "PATCH", "DELETE"}}
        assert documented | {"OPTIONS"} <= allowed, (path, documented, allowed)
    conversation = {m.strip() for m in api.options("/api/v1/conversations/1").headers["Allow"].split(",")}
    assert conversation == {"GET", "DELETE", "OPTIONS"}
    message = {m.strip() for m in api.options("/api/v1/messages/1/restore").headers["Allow"].split(",")}
    assert message == {"POST", "OPTIONS"}


def test_malformed_json_that_starts_like_a_wrong_type_is_400_not_500(gw: RunningGateway) -> None:
    """`9 t…`: typed decoding stops at the number (a wrong type) before the bad bytes; the
    second, lenient-number look must still call it malformed JSON (schemathesis found a 500)."""
    studio = gw.add_studio("inkwell")
    answer = gw.api(studio.token).post("/api/v1/account/deletion", content=b"9 t\xef",
                                       headers={"Content-Type": "application/json"})
    assert_error(answer, 400, "malformed_json")


def test_an_upload_without_content_type_and_with_an_idempotency_key_is_refused_not_500(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    answer = gw.api(studio.token).post("/api/v1/conversations/1/replies/upload",
                                       headers={"Idempotency-Key": "k-1"})
    assert 400 <= answer.status_code < 500 and answer.json()["code"], answer.text
