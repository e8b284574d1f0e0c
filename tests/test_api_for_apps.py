"""What a messenger app builds on, over real HTTP: ETag and 304, updated_since, Location on
201/202, and CORS for the configured origins only."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from pydantic import ValidationError

from gateway.store.db import write_tx
from gateway.store.models import utcnow
from gateway.store.tables import SUBSCRIPTION
from tests.access import held_message, open_conversation
from tests.conftest import RunningGateway, StudioInfo, make_settings, start_gateway
from tests.mail import make_mail
from tests.test_outbound import send_due

LIST = "/api/v1/conversations"


def _paid(gw: RunningGateway, studio: StudioInfo) -> None:
    with write_tx(gw.engine) as conn:  # restoring from the trash is a paid feature
        conn.execute(SUBSCRIPTION.insert().values(studio_id=studio.id, plan="monthly", status="active",
                                                  updated_at=utcnow()))


def _etag(api: httpx.Client, path: str) -> str:
    answer = api.get(path)
    assert answer.status_code == 200 and answer.headers["etag"].startswith('"')
    return answer.headers["etag"]


def _not_modified(api: httpx.Client, path: str, if_none_match: str) -> bool:
    answer = api.get(path, headers={"If-None-Match": if_none_match})
    if answer.status_code == 304:
        assert answer.content == b"" and answer.headers["etag"] in if_none_match
        return True
    assert answer.status_code == 200 and answer.headers["etag"] not in if_none_match and answer.json()
    return False


def test_an_unchanged_list_and_detail_are_304_and_every_change_gives_a_new_etag(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    api = gw.api(studio.token)
    detail = f"{LIST}/{mail.conversation_id}"
    tags = {path: _etag(api, path) for path in (LIST, detail)}
    for path, tag in tags.items():
        assert _not_modified(api, path, tag)
        assert _not_modified(api, path, f'W/{tag}, "something-else"')  # weak form, in a list
        assert not _not_modified(api, path, '"stale"')

    def changed(action: Any, *paths: str) -> None:
        action()
        for path in paths:
            assert not _not_modified(api, path, tags[path]), path
            tags[path] = _etag(api, path)
            assert _not_modified(api, path, tags[path])

    changed(lambda: api.post(f"{detail}/read").raise_for_status(), LIST, detail)
    changed(lambda: api.post(f"{detail}/close").raise_for_status(), LIST, detail)
    changed(lambda: api.post(f"{detail}/reopen").raise_for_status(), LIST, detail)
    changed(lambda: api.post(f"{detail}/replies", json={"text": "Gern, Freitag?"}).raise_for_status(), LIST, detail)
    changed(lambda: held_message(gw, studio, mail.guest_message_id), detail)  # its held_count
    changed(lambda: gw.send(make_mail(subject="Re: Tattoo Anfrage", in_reply_to=mail.guest_message_id),
                            studio.address) and gw.process(), LIST, detail)
    changed(lambda: api.delete(detail).raise_for_status(), LIST)
    assert api.get(detail, headers={"If-None-Match": tags[detail]}).status_code == 404  # gone, not 304


def _since(api: httpx.Client, since: datetime | str, **params: Any) -> list[tuple[int, bool]]:
    value = since.isoformat() if isinstance(since, datetime) else since
    answer = api.get(LIST, params={"updated_since": value, **params})
    assert answer.status_code == 200, answer.text
    return sorted((item["id"], item["deleted"]) for item in answer.json()["items"])


def test_updated_since_lists_what_changed_at_or_after_it_deletions_included(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _paid(gw, studio)
    first = open_conversation(gw, studio, subject="Erste")
    second = open_conversation(gw, studio, subject="Zweite")
    api = gw.api(studio.token)
    a, b = first.conversation_id, second.conversation_id
    newest = max(datetime.fromisoformat(i["updated_at"]) for i in api.get(LIST).json()["items"])
    assert _since(api, newest) == [(b, False)]  # at or after: the newest itself comes again

    def after(action: Any) -> datetime:
        mark = datetime.now(timezone.utc)
        action()
        return mark

    mark = after(lambda: api.post(f"{LIST}/{a}/read").raise_for_status())
    assert _since(api, mark) == [(a, False)]
    assert _since(api, mark.replace(tzinfo=None).isoformat()) == [(a, False)]  # no offset: UTC
    mark = after(lambda: api.post(f"{LIST}/{b}/close").raise_for_status())
    assert _since(api, mark) == [(b, False)]
    mark = after(lambda: api.post(f"{LIST}/{b}/reopen").raise_for_status())
    assert _since(api, mark) == [(b, False)]
    mark = after(lambda: api.post(f"{LIST}/{a}/replies", json={"text": "Passt!"}).raise_for_status())
    assert _since(api, mark) == [(a, False)]
    mark = after(lambda: send_due(gw))  # the reply's delivery: an app sees it went out
    assert _since(api, mark) == [(a, False)]
    assert api.get(f"{LIST}/{a}").json()["messages"][-1]["delivery"] == "sent"
    mark = after(lambda: gw.send(make_mail(subject="Re: Zweite", in_reply_to=second.guest_message_id),
                                 studio.address) and gw.process())
    assert _since(api, mark) == [(b, False)]
    held = held_message(gw, studio, first.guest_message_id)
    mark = after(lambda: api.post(f"/api/v1/held/{held}/accept").raise_for_status())
    assert _since(api, mark) == [(a, False)]

    mark = after(lambda: api.delete(f"{LIST}/{a}").raise_for_status())
    assert _since(api, mark) == [(a, True)]  # the app learns to drop it
    assert a not in [i["id"] for i in api.get(LIST).json()["items"]]  # the plain list leaves it out
    mark = after(lambda: api.post(f"{LIST}/{a}/restore").raise_for_status())
    assert _since(api, mark) == [(a, False)]
    message = api.get(f"{LIST}/{a}").json()["messages"][0]["id"]
    mark = after(lambda: api.delete(f"/api/v1/messages/{message}").raise_for_status())
    assert _since(api, mark) == [(a, False)]

    assert _since(api, mark, status="closed") == []  # the other filters still apply
    assert _since(api, datetime(2000, 1, 1, tzinfo=timezone.utc)) == [(a, False), (b, False)]
    for rfc3339 in ("2000-01-01t00:00:00z", "2000-12-31T23:59:60Z", "2000-01-01T00:00:00.123456789+01:00"):
        assert _since(api, rfc3339) == [(a, False), (b, False)], rfc3339
    for bad in ("gestern", "1", "2026-13-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        assert api.get(LIST, params={"updated_since": bad}).status_code == 400, bad
    # Another studio's changes are never listed.
    assert _since(gw.api(gw.add_studio("blackrose").token), datetime(2000, 1, 1, tzinfo=timezone.utc)) == []


def test_every_201_and_202_says_where_the_new_thing_is(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    api = gw.api(studio.token)

    reply = api.post(f"{LIST}/{mail.conversation_id}/replies", json={"text": "Gern!"})
    assert reply.status_code == 202 and reply.headers["location"] == f"/api/v1/messages/{reply.json()['id']}"
    followed = api.get(reply.headers["location"])
    assert followed.status_code == 200 and followed.json()["id"] == reply.json()["id"]
    assert followed.json()["delivery"] == "queued" and followed.json()["text"] == "Gern!"
    upload = api.post(f"{LIST}/{mail.conversation_id}/replies/upload", data={"text": "Mit Bild"},
                      files={"files": ("a.png", b"\x89PNG\r\n\x1a\nx", "image/png")})
    assert upload.status_code == 202 and upload.headers["location"] == f"/api/v1/messages/{upload.json()['id']}"

    token = api.post("/api/v1/tokens")
    assert token.status_code == 201 and token.headers["location"] == f"/api/v1/tokens/{token.json()['id']}"
    assert token.headers["cache-control"] == "no-store"  # still: the token is shown once
    profile = api.post("/api/v1/profiles", json={"email": "artist@inkwell.example", "name": "Artist"})
    assert profile.status_code == 201
    assert profile.headers["location"] == f"/api/v1/profiles/{profile.json()['profile']['id']}"
    grant = api.post("/api/v1/support-grants", json={"hours": 2})
    assert grant.status_code == 201 and grant.headers["location"] == f"/api/v1/support-grants/{grant.json()['id']}"
    # An account deletion's 202 (it needs a helpdesk): tests/test_account_deletion.py.

    # A message of another studio, or one not shown, is not found there.
    assert gw.api(gw.add_studio("blackrose").token).get(reply.headers["location"]).status_code == 404
    held = held_message(gw, studio, mail.guest_message_id)
    assert api.get(f"/api/v1/messages/{held}").status_code == 404


APP = "https://app.example.com"


@pytest.fixture
def cors_gw(tmp_path: Path, database_url: str) -> Iterator[RunningGateway]:
    running = start_gateway(make_settings(tmp_path, database_url,
                                          cors_origins=f"{APP}, http://localhost:5173"))
    yield running
    running.stop()


def _cors(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


def test_cors_headers_only_for_configured_origins(cors_gw: RunningGateway) -> None:
    gw = cors_gw
    studio = gw.add_studio("inkwell")
    api = gw.api(studio.token)
    allowed = api.get(LIST, headers={"Origin": APP})
    assert allowed.status_code == 200
    assert _cors(allowed) == {"access-control-allow-origin": APP,
                              "access-control-expose-headers": "ETag, Location, X-Request-Id, Retry-After, "
                                                               "Idempotent-Replayed, Idempotent-Secret-Withheld"}
    assert "Origin" in allowed.headers["vary"]
    assert _cors(api.get(LIST, headers={"Origin": "http://localhost:5173"}))["access-control-allow-origin"] == \
        "http://localhost:5173"
    for other in ("https://evil.example", "https://app.example.com.evil.example", "http://app.example.com", "null"):
        refused = api.get(LIST, headers={"Origin": other})
        assert refused.status_code == 200 and _cors(refused) == {}, other
    assert _cors(api.get(LIST)) == {}
    # A browser app must be able to read a refusal too (401 for an expired token, say).
    unauthenticated = gw.api(None).get(LIST, headers={"Origin": APP})
    assert unauthenticated.status_code == 401 and _cors(unauthenticated)["access-control-allow-origin"] == APP
    # The pages and probes are nobody's cross-origin business.
    assert _cors(gw.api(None).get("/healthz", headers={"Origin": APP})) == {}


def test_cors_preflight_allows_the_apis_methods_and_headers(cors_gw: RunningGateway) -> None:
    gw = cors_gw
    client = gw.api(None)
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, idempotency-key, if-none-match"}
    for path in (LIST, f"{LIST}/1/replies", "/api/v1/studio", "/api/v1/tokens/1"):
        answer = client.options(path, headers=preflight)
        assert 200 <= answer.status_code < 300, (path, answer.status_code)
        headers = _cors(answer)
        assert headers["access-control-allow-origin"] == APP
        assert {m.strip() for m in headers["access-control-allow-methods"].split(",")} >= {
            "GET", "POST", "PATCH", "DELETE"}
        assert {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")} >= {
            "authorization", "content-type", "idempotency-key", "if-none-match"}
        assert "access-control-allow-credentials" not in headers  # bearer tokens, no cookies
    other = client.options(LIST, headers={**preflight, "Origin": "https://evil.example"})
    assert _cors(other) == {}


def test_without_configured_origins_there_are_no_cors_headers(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    assert _cors(gw.api(studio.token).get(LIST, headers={"Origin": APP})) == {}
    answer = gw.api(None).options(LIST, headers={"Origin": APP, "Access-Control-Request-Method": "GET"})
    assert _cors(answer) == {}


@pytest.mark.parametrize("origins", ["*", "https://*.example.com", "app.example.com", "https://app.example.com/",
                                     "https://app.example.com/path", "ftp://app.example.com"])
def test_cors_origins_must_be_exact_origins(tmp_path: Path, origins: str) -> None:
    with pytest.raises(ValidationError, match="GATEWAY_CORS_ORIGINS"):
        make_settings(tmp_path, "sqlite://", cors_origins=origins)
