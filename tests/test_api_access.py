"""Who may act for a studio, over HTTP: the owner connects and disconnects members, grants
support read-only access for a while, and reads the audit log of every support read."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import PROFILE, API_TOKEN
from gateway.store.tables import SUPPORT_TOKEN
from gateway.access.support import grant_access, revoke_support_token
from tests.access import (AUDIT, CONVERSATIONS, GRANTS, PROFILES, as_support, connect_member, grant,
                          open_conversation, support_token)
from tests.conftest import RunningGateway, StudioInfo

TOKENS = "/api/v1/tokens"


def _at(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def _audit(gw: RunningGateway, studio: StudioInfo) -> list[dict[str, object]]:
    response = gw.api(studio.token).get(AUDIT, params={"limit": 200})
    assert response.status_code == 200
    return list(response.json()["items"])


# --- profiles ------------------------------------------------------------------------------------

def test_owner_connects_a_member_whose_first_token_is_shown_once_and_works(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    response = gw.api(studio.token).post(PROFILES, json={"email": " Nora@Inkwell.example ", "name": "Nora Nadel"})
    assert response.status_code == 201 and response.headers["cache-control"] == "no-store"
    created = response.json()
    assert set(created) == {"profile", "token"}
    profile, token = created["profile"], created["token"]
    assert {k: profile[k] for k in ("email", "name", "role", "disconnected_at")} == {
        "email": "nora@inkwell.example", "name": "Nora Nadel", "role": "member", "disconnected_at": None}
    assert set(token) == {"id", "prefix", "token", "created_at"} and token["token"].startswith(token["prefix"])

    member = gw.api(token["token"])
    assert member.get(CONVERSATIONS).status_code == 200
    listed = gw.api(studio.token).get(PROFILES).json()["items"]
    assert [(p["role"], p["email"]) for p in listed] == [("owner", "owner@inkwell.example"),
                                                         ("member", "nora@inkwell.example")]
    assert token["token"] not in gw.api(studio.token).get(PROFILES).text
    with read_tx(gw.engine) as conn:
        stored = conn.execute(select(API_TOKEN.c.token_hash).where(API_TOKEN.c.id == token["id"])).scalar_one()
    assert stored != token["token"] and len(stored) == 64


def test_member_reads_and_answers_but_manages_nothing(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    _, token = connect_member(gw, studio)
    member = gw.api(token)
    assert member.get(f"{CONVERSATIONS}/{mail.conversation_id}").status_code == 200
    assert member.post(f"{CONVERSATIONS}/{mail.conversation_id}/replies", json={"text": "Gern!"}).status_code == 202
    assert member.get(f"/api/v1/attachments/{mail.attachment_id}").status_code == 200

    refused = {
        "connect profiles": member.post(PROFILES, json={"email": "x@inkwell.example", "name": "X"}),
        "disconnect profiles": member.delete(f"{PROFILES}/1"),
        "see support access": member.get(GRANTS),
        "grant support access": member.post(GRANTS, json={}),
        "revoke support access": member.delete(f"{GRANTS}/1"),
        "read the audit log": member.get(AUDIT),
        "change its settings": member.patch("/api/v1/studio", json={"acknowledge_inquiries": True}),
    }
    for doing, response in refused.items():
        assert response.status_code == 403
        assert response.json() == {"status_code": 403, "code": "forbidden", "detail": f"only the studio's owner can {doing}"}
    assert gw.api(studio.token).get(GRANTS).json()["items"] == []  # nothing was granted on the way


def test_a_member_sees_the_connected_profiles_only(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _, token = connect_member(gw, studio, "nora@inkwell.example")
    gone, _ = connect_member(gw, studio, "tom@inkwell.example")
    assert gw.api(studio.token).delete(f"{PROFILES}/{gone}").status_code == 204
    seen_by_member = [p["email"] for p in gw.api(token).get(PROFILES).json()["items"]]
    assert seen_by_member == ["owner@inkwell.example", "nora@inkwell.example"]
    seen_by_owner = {p["email"]: p["disconnected_at"] for p in gw.api(studio.token).get(PROFILES).json()["items"]}
    assert list(seen_by_owner) == ["owner@inkwell.example", "nora@inkwell.example", "tom@inkwell.example"]
    assert seen_by_owner["tom@inkwell.example"] is not None and seen_by_owner["nora@inkwell.example"] is None


def test_disconnecting_stops_every_token_of_the_member_at_once(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    profile_id, first = connect_member(gw, studio)
    second = gw.api(first).post(TOKENS).json()["token"]
    assert gw.api(second).get(CONVERSATIONS).status_code == 200

    owner = gw.api(studio.token)
    assert owner.delete(f"{PROFILES}/{profile_id}").status_code == 204
    for token in (first, second):
        refused = gw.api(token).get(CONVERSATIONS)
        assert refused.status_code == 401 and refused.json()["detail"] == "invalid or revoked token"
    assert owner.get(CONVERSATIONS).status_code == 200
    member_tokens = [t for t in owner.get(TOKENS).json()["items"] if t["profile_id"] == profile_id]
    assert len(member_tokens) == 2 and all(t["revoked_at"] is not None for t in member_tokens)

    [disconnected] = [p for p in owner.get(PROFILES).json()["items"] if p["id"] == profile_id]
    assert owner.delete(f"{PROFILES}/{profile_id}").status_code == 204  # again: fine, first time kept
    [again] = [p for p in owner.get(PROFILES).json()["items"] if p["id"] == profile_id]
    assert again["disconnected_at"] == disconnected["disconnected_at"] is not None


def test_the_owner_cannot_disconnect_themselves(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    [me] = owner.get(PROFILES).json()["items"]
    response = owner.delete(f"{PROFILES}/{me['id']}")
    assert response.status_code == 409
    assert response.json() == {"status_code": 409, "code": "conflict", "detail": "the owner's profile cannot be disconnected"}
    assert owner.get(CONVERSATIONS).status_code == 200
    with read_tx(gw.engine) as conn:
        assert conn.execute(select(PROFILE.c.disconnected_at).where(PROFILE.c.id == me["id"])).scalar_one() is None


def test_an_address_connects_once_and_again_after_it_was_disconnected(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    profile_id, _ = connect_member(gw, studio, "nora@inkwell.example")
    for email in ("NORA@inkwell.example", "owner@inkwell.example"):
        response = owner.post(PROFILES, json={"email": email, "name": "Again"})
        assert response.status_code == 409
        assert response.json()["detail"] == f"{email.lower()} is connected to this studio already"
    assert owner.delete(f"{PROFILES}/{profile_id}").status_code == 204
    again, _ = connect_member(gw, studio, "nora@inkwell.example")
    assert again != profile_id
    assert len(owner.get(PROFILES).json()["items"]) == 3
    other = gw.add_studio("blackrose")  # the same address may belong to another studio too
    connect_member(gw, other, "nora@inkwell.example")


@pytest.mark.parametrize("body, detail", [
    ({"email": "nora.inkwell.example", "name": "Nora"}, "email must be a plain address like name@example.com"),
    ({"email": "nora@inkwell.example\r\nBcc: all@example.org", "name": "Nora"},
     "email must be a plain address like name@example.com"),
    ({"email": "Nora <nora@inkwell.example>", "name": "Nora"}, "email must be a plain address like name@example.com"),
    ({"email": "nora@inkwell.example", "name": "Nora\r\nX-Injected: yes"},
     "name must be a single line without control characters"),
    ({"email": "nora@inkwell.example", "name": "   "}, "name must not be empty"),
    ({"email": "nora@inkwell.example", "name": "N" * 201}, None),
    ({"email": "n" * 310 + "@inkwell.example", "name": "Nora"}, None),
])
def test_bad_addresses_and_names_are_400_and_connect_nobody(gw: RunningGateway, body: dict[str, str],
                                                             detail: str | None) -> None:
    studio = gw.add_studio("inkwell")
    response = gw.api(studio.token).post(PROFILES, json=body)
    assert response.status_code == 400
    if detail is not None:  # None: refused by the schema's length limits, in Litestar's words
        assert response.json()["detail"] == detail
    assert len(gw.api(studio.token).get(PROFILES).json()["items"]) == 1


def test_another_studios_profile_is_404(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    their_member, their_token = connect_member(gw, theirs, "ink@blackrose.example")
    response = gw.api(mine.token).delete(f"{PROFILES}/{their_member}")
    assert response.status_code == 404 and response.json() == {"status_code": 404, "code": "not_found", "detail": "profile not found"}
    assert gw.api(their_token).get(CONVERSATIONS).status_code == 200
    assert "ink@blackrose.example" not in gw.api(mine.token).get(PROFILES).text


# --- support grants ---------------------------------------------------------------------------------

def test_owner_grants_replaces_lists_and_revokes_support_access(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    created = owner.post(GRANTS)  # no body: the default
    assert created.status_code == 201
    first = created.json()
    assert first["active"] is True and first["revoked_at"] is None and first["note"] == ""
    assert _at(first["expires_at"]) - _at(first["created_at"]) == timedelta(hours=24)

    second = grant(gw, studio, days=2, note="Zustellproblem, Ticket 4711")
    assert _at(second["expires_at"]) - _at(second["created_at"]) == timedelta(days=2)
    items = owner.get(GRANTS).json()["items"]
    assert [(g["id"], g["active"]) for g in items] == [(second["id"], True), (first["id"], False)]
    assert items[1]["revoked_at"] == second["created_at"]  # replaced when the new one began

    assert owner.delete(f"{GRANTS}/{second['id']}").status_code == 204
    [revoked, _] = owner.get(GRANTS).json()["items"]
    assert revoked["active"] is False and revoked["revoked_at"] is not None
    assert owner.delete(f"{GRANTS}/{second['id']}").status_code == 204  # again: fine, first time kept
    assert owner.get(GRANTS).json()["items"][0]["revoked_at"] == revoked["revoked_at"]


@pytest.mark.parametrize("body", [
    {"days": 8}, {"hours": 169}, {"hours": 0}, {"days": 0}, {"hours": 2, "days": 1}, {"minutes": 30},
    {"note": "eins\nzwei"}, {"note": "x" * 501},
])
def test_grants_are_an_hour_to_seven_days_with_a_one_line_note(gw: RunningGateway, body: dict[str, object]) -> None:
    studio = gw.add_studio("inkwell")
    response = gw.api(studio.token).post(GRANTS, json=body)
    assert response.status_code == 400
    assert gw.api(studio.token).get(GRANTS).json()["items"] == []


def test_seven_days_is_the_longest_grant(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    for body in ({"days": 7}, {"hours": 168}):
        granted = grant(gw, studio, **body)
        assert _at(granted["expires_at"]) - _at(granted["created_at"]) == timedelta(days=7)


def test_another_studios_grant_is_404(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    their_grant = grant(gw, theirs)
    response = gw.api(mine.token).delete(f"{GRANTS}/{their_grant['id']}")
    assert response.status_code == 404 and response.json()["detail"] == "support grant not found"
    assert gw.api(theirs.token).get(GRANTS).json()["items"][0]["active"] is True
    assert gw.api(mine.token).get(GRANTS).json()["items"] == []


# --- support reading over HTTP ---------------------------------------------------------------------

def test_support_reads_only_under_an_active_grant_and_every_read_is_audited(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio, subject="Geheimes Motiv", body="Bitte diskret behandeln.")
    support = as_support(gw, support_token(gw, "alice"), "inkwell", reason="ticket 4711")
    denied = support.get(CONVERSATIONS)
    assert denied.status_code == 403 and "Geheimes Motiv" not in denied.text
    assert denied.json()["detail"].startswith("no active support grant for studio 'inkwell'")

    granted = grant(gw, studio, hours=2)
    owner = gw.api(studio.token)
    assert support.get(CONVERSATIONS).json() == owner.get(CONVERSATIONS).json()
    detail = support.get(f"{CONVERSATIONS}/{mail.conversation_id}")
    assert detail.status_code == 200 and detail.json()["messages"][0]["text"] == "Bitte diskret behandeln."
    download = support.get(f"/api/v1/attachments/{mail.attachment_id}")
    assert download.status_code == 200 and download.content == b"\x89PNG\r\n\x1a\nsketch"
    assert support.get("/api/v1/held").status_code == 200

    reads = [(e["actor"], e["action"], e["target"], e["reason"]) for e in _audit(gw, studio)
             if str(e["actor"]).startswith("support:")]
    assert reads == [
        ("support:alice", "held.list", "held messages", "ticket 4711"),
        ("support:alice", "attachment.read", f"attachment {mail.attachment_id}", "ticket 4711"),
        ("support:alice", "conversation.read", f"conversation {mail.conversation_id}", "ticket 4711"),
        ("support:alice", "conversation.list", "conversations", "ticket 4711"),
    ]
    log = owner.get(AUDIT).text
    assert "Geheimes Motiv" not in log and "diskret" not in log and "gws_" not in log

    assert owner.delete(f"{GRANTS}/{granted['id']}").status_code == 204
    assert support.get(f"{CONVERSATIONS}/{mail.conversation_id}").status_code == 403
    assert len(_audit(gw, studio)) == len(reads) + 2  # the grant and its revocation; no refused read


def test_support_may_not_write_or_manage_even_with_a_grant(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    grant(gw, studio)
    support = as_support(gw, support_token(gw), "inkwell")
    before = gw.api(studio.token).get(f"{CONVERSATIONS}/{mail.conversation_id}").json()
    attempts = [
        support.post(f"{CONVERSATIONS}/{mail.conversation_id}/replies", json={"text": "Hallo von Support"}),
        support.post(f"{CONVERSATIONS}/{mail.conversation_id}/read"),
        support.post(f"{CONVERSATIONS}/{mail.conversation_id}/close"),
        support.get("/api/v1/studio"), support.get(TOKENS), support.post(TOKENS), support.get(PROFILES),
        support.get(GRANTS), support.post(GRANTS, json={"days": 7}), support.get(AUDIT),
    ]
    for response in attempts:
        assert response.status_code == 403
        assert response.json()["detail"].startswith("support access is read-only")
    assert gw.api(studio.token).get(f"{CONVERSATIONS}/{mail.conversation_id}").json() == before
    assert len(gw.api(studio.token).get(GRANTS).json()["items"]) == 1


def test_support_names_the_studio_and_a_reason(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    grant(gw, studio)
    token = support_token(gw)
    nameless = gw.api(token).get(CONVERSATIONS, headers={"X-Support-Reason": "ticket 1"})
    assert nameless.status_code == 400 and "X-Support-Studio" in nameless.json()["detail"]
    reasonless = gw.api(token).get(CONVERSATIONS, headers={"X-Support-Studio": "inkwell"})
    assert reasonless.status_code == 400 and reasonless.json()["detail"] == "X-Support-Reason: reason must not be empty"
    unknown = as_support(gw, token, "nosuchstudio").get(CONVERSATIONS)
    assert unknown.status_code == 403  # the same answer as a studio without a grant
    assert _audit(gw, studio)[0]["action"] == "support_grant.create"  # no read was recorded


def test_support_reading_one_studio_gets_404_for_another_studios_ids(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    their_mail = open_conversation(gw, theirs, subject="Nur für Blackrose")
    grant(gw, mine)
    support = as_support(gw, support_token(gw), "inkwell")
    for path in (f"{CONVERSATIONS}/{their_mail.conversation_id}", f"/api/v1/attachments/{their_mail.attachment_id}"):
        response = support.get(path)
        assert response.status_code == 404 and "Blackrose" not in response.text
    assert support.get(CONVERSATIONS).json()["items"] == []
    assert as_support(gw, support_token(gw), "blackrose").get(CONVERSATIONS).status_code == 403


def test_an_expired_grant_lets_support_read_nothing(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    open_conversation(gw, studio)
    with write_tx(gw.engine) as conn:  # granted two days ago for a day
        grant_access(conn, studio.id, 1, "owner:owner@inkwell.example", timedelta(days=1), "",
                     now=utcnow() - timedelta(days=2))
    response = as_support(gw, support_token(gw), "inkwell").get(CONVERSATIONS)
    assert response.status_code == 403 and response.json()["detail"].startswith("no active support grant")
    [expired] = gw.api(studio.token).get(GRANTS).json()["items"]
    assert expired["active"] is False and expired["revoked_at"] is None


def test_a_revoked_support_token_is_401(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    grant(gw, studio)
    token = support_token(gw)
    support = as_support(gw, token, "inkwell")
    assert support.get(CONVERSATIONS).status_code == 200
    with write_tx(gw.engine) as conn:
        support_id = conn.execute(select(SUPPORT_TOKEN.c.id)).scalar_one()
        assert revoke_support_token(conn, support_id, utcnow())
    refused = support.get(CONVERSATIONS)
    assert refused.status_code == 401 and refused.json()["detail"] == "invalid or revoked token"
    assert gw.api(studio.token).get(CONVERSATIONS).status_code == 200


def test_a_studio_token_cannot_borrow_support_headers(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    open_conversation(gw, theirs, subject="Nur für Blackrose")
    grant(gw, theirs)
    response = as_support(gw, mine.token, "blackrose").get(CONVERSATIONS)
    assert response.status_code == 200 and response.json()["items"] == []  # its own studio, headers ignored


# --- the audit log ---------------------------------------------------------------------------------------

def test_audit_log_is_newest_first_in_pages_and_the_owners_alone(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    for hours in (1, 2, 3):
        grant(gw, studio, hours=hours, note=f"Runde {hours}")
    member_id, member_token = connect_member(gw, studio)
    assert gw.api(studio.token).delete(f"{PROFILES}/{member_id}").status_code == 204
    everything = _audit(gw, studio)
    assert [e["action"] for e in everything] == [
        "profile.disconnect", "profile.connect", "support_grant.create", "support_grant.revoke",
        "support_grant.create", "support_grant.revoke", "support_grant.create"]
    assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
    assert {e["actor"] for e in everything} == {"owner:owner@inkwell.example"}
    assert everything[0]["target"] == f"profile {member_id}" and everything[2]["reason"] == "Runde 3"
    assert everything[3]["reason"] == "replaced by a new grant"

    pages, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        answer = gw.api(studio.token).get(AUDIT, params=params).json()
        pages.append([e["id"] for e in answer["items"]])
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1] and sum(pages, []) == [e["id"] for e in everything]

    assert gw.api(studio.token).get(AUDIT, params={"cursor": "gestern"}).status_code == 400
    other = gw.add_studio("blackrose")
    assert gw.api(other.token).get(AUDIT).json() == {"items": [], "next_cursor": None}


def test_the_audit_log_has_no_way_to_change_it(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    grant(gw, studio)
    owner = gw.api(studio.token)
    [entry] = _audit(gw, studio)
    for method in ("PUT", "PATCH", "DELETE"):
        assert owner.request(method, AUDIT).status_code == 405
        assert owner.request(method, f"{AUDIT}/{entry['id']}").status_code == 404
    assert _audit(gw, studio) == [entry]


def test_access_routes_need_a_token(gw: RunningGateway) -> None:
    for path in (GRANTS, AUDIT, PROFILES):
        response = gw.api(None).get(path)
        assert response.status_code == 401 and response.json()["detail"] == "missing bearer token"
