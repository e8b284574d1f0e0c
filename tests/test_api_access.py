"""Who may act for a studio, over HTTP: the owner connects and disconnects members."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from gateway.db import read_tx
from gateway.studios import PROFILE, TOKEN
from tests.access import CONVERSATIONS, PROFILES, connect_member, open_conversation
from tests.conftest import RunningGateway, StudioInfo

TOKENS = "/api/v1/tokens"


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
        stored = conn.execute(select(TOKEN.c.token_hash).where(TOKEN.c.id == token["id"])).scalar_one()
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
        "change its settings": member.patch("/api/v1/studio", json={"acknowledge_inquiries": True}),
    }
    for doing, response in refused.items():
        assert response.status_code == 403
        assert response.json() == {"status_code": 403, "detail": f"only the studio's owner can {doing}"}
    assert len(gw.api(studio.token).get(PROFILES).json()["items"]) == 2  # nobody was connected on the way


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
    assert response.json() == {"status_code": 409, "detail": "the owner's profile cannot be disconnected"}
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
    assert response.status_code == 404 and response.json() == {"status_code": 404, "detail": "profile not found"}
    assert gw.api(their_token).get(CONVERSATIONS).status_code == 200
    assert "ink@blackrose.example" not in gw.api(mine.token).get(PROFILES).text


def test_access_routes_need_a_token(gw: RunningGateway) -> None:
    for path in (PROFILES,):
        response = gw.api(None).get(path)
        assert response.status_code == 401 and response.json()["detail"] == "missing bearer token"
