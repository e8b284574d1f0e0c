"""API tokens over HTTP: listing without secrets, creating, revoking, studio and member scoping,
and the brake on failed authentication (429 with Retry-After, lifted when the window passes)."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.access.ratelimit import AuthFailureLimiter
from gateway.store.tables import PROFILE, API_TOKEN
from gateway.access.studios import create_token
from tests.conftest import RunningGateway, StudioInfo

TOKENS = "/api/v1/tokens"
CONVERSATIONS = "/api/v1/conversations"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def add_member(gw: RunningGateway, studio: StudioInfo, email: str = "artist@inkwell.example") -> tuple[int, str]:
    """A connected member of the studio and a token of theirs: (profile id, token)."""
    with write_tx(gw.engine) as conn:
        profile_id = conn.execute(PROFILE.insert().returning(PROFILE.c.id), {
            "studio_id": studio.id, "email": email, "name": "Artist", "role": "member",
            "created_at": utcnow()}).scalar_one()
        return profile_id, create_token(conn, studio.id, profile_id)


def install_limiter(gw: RunningGateway, **options: object) -> AuthFailureLimiter:
    """Give the running app a limiter on a fake clock (auth.py creates one on first use otherwise)."""
    app = gw.gateway._uvicorn.config.app  # type: ignore[union-attr]  # Gateway does not expose its app
    limiter = app.state.auth_limiter = AuthFailureLimiter(**options)  # type: ignore[arg-type]
    return limiter


def token_id(gw: RunningGateway, token: str) -> int:
    [item] = [i for i in gw.api(token).get(TOKENS).json()["items"] if i["current"]]
    return int(item["id"])


def test_list_shows_prefixes_only_and_no_secrets(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    member_profile, member_token = add_member(gw, studio)
    response = gw.api(studio.token).get(TOKENS)
    assert response.status_code == 200
    items = response.json()["items"]
    assert [set(i) for i in items] == [{"id", "prefix", "profile_id", "created_at", "revoked_at", "current"}] * 2
    owner_item, member_item = items
    assert studio.token.startswith(owner_item["prefix"]) and owner_item["current"] is True
    assert member_token.startswith(member_item["prefix"]) and member_item["current"] is False
    assert member_item["profile_id"] == member_profile and owner_item["revoked_at"] is None
    with read_tx(gw.engine) as conn:
        hashes = conn.execute(select(API_TOKEN.c.token_hash)).scalars().all()
    for secret in [studio.token, member_token, *hashes]:
        assert secret not in response.text


def test_created_token_is_shown_once_and_works(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    response = gw.api(studio.token).post(TOKENS)
    assert response.status_code == 201
    created = response.json()
    assert set(created) == {"id", "prefix", "token", "created_at"}
    assert created["token"].startswith(created["prefix"]) and created["token"] != studio.token
    assert response.headers["cache-control"] == "no-store"

    new = gw.api(created["token"])
    assert new.get(CONVERSATIONS).status_code == 200
    listed = new.get(TOKENS)
    [current] = [i for i in listed.json()["items"] if i["current"]]
    assert current["id"] == created["id"] and created["token"] not in listed.text


def test_revoked_token_is_401_at_once_while_others_keep_working(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    owner = gw.api(studio.token)
    doomed = owner.post(TOKENS).json()
    assert gw.api(doomed["token"]).get(CONVERSATIONS).status_code == 200

    assert owner.delete(f"{TOKENS}/{doomed['id']}").status_code == 204
    refused = gw.api(doomed["token"]).get(CONVERSATIONS)
    assert refused.status_code == 401 and refused.json()["detail"] == "invalid or revoked token"
    assert owner.get(CONVERSATIONS).status_code == 200

    [revoked] = [i for i in owner.get(TOKENS).json()["items"] if i["id"] == doomed["id"]]
    assert revoked["revoked_at"] is not None
    assert owner.delete(f"{TOKENS}/{doomed['id']}").status_code == 204  # idempotent
    [again] = [i for i in owner.get(TOKENS).json()["items"] if i["id"] == doomed["id"]]
    assert again["revoked_at"] == revoked["revoked_at"]  # the first revocation time is kept


def test_member_sees_only_own_tokens_and_cannot_revoke_the_owners(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    member_profile, member_token = add_member(gw, studio)
    member = gw.api(member_token)
    assert member.post(TOKENS).status_code == 201
    items = member.get(TOKENS).json()["items"]
    assert len(items) == 2 and {i["profile_id"] for i in items} == {member_profile}

    owner_token_id = token_id(gw, studio.token)
    refused = member.delete(f"{TOKENS}/{owner_token_id}")
    assert refused.status_code == 404 and refused.json() == {"status_code": 404, "code": "not_found", "detail": "token not found"}
    assert gw.api(studio.token).get(CONVERSATIONS).status_code == 200


def test_owner_may_revoke_a_members_token(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    _, member_token = add_member(gw, studio)
    assert gw.api(studio.token).delete(f"{TOKENS}/{token_id(gw, member_token)}").status_code == 204
    assert gw.api(member_token).get(CONVERSATIONS).status_code == 401


def test_another_studios_token_is_404_and_never_listed(gw: RunningGateway) -> None:
    mine, theirs = gw.add_studio("inkwell"), gw.add_studio("blackrose")
    their_id = token_id(gw, theirs.token)
    response = gw.api(mine.token).delete(f"{TOKENS}/{their_id}")
    assert response.status_code == 404 and response.json() == {"status_code": 404, "code": "not_found", "detail": "token not found"}
    assert gw.api(theirs.token).get(CONVERSATIONS).status_code == 200
    assert their_id not in [i["id"] for i in gw.api(mine.token).get(TOKENS).json()["items"]]


def test_token_routes_need_a_token(gw: RunningGateway) -> None:
    anonymous = gw.api(None)
    for response in (anonymous.get(TOKENS), anonymous.post(TOKENS), anonymous.delete(f"{TOKENS}/1")):
        assert response.status_code == 401 and response.json()["detail"] == "missing bearer token"


def test_repeated_failures_get_429_until_the_window_passes(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    clock = FakeClock()
    install_limiter(gw, max_failures=10, window=60.0, clock=clock)
    guesser = gw.api("gw_guessing-000000")
    for _ in range(10):
        assert guesser.get(CONVERSATIONS).status_code == 401
        clock.now += 1.0

    blocked = guesser.get(CONVERSATIONS)
    assert blocked.status_code == 429
    assert blocked.headers["retry-after"] == "59"  # blocked for 60 s from the 10th failure, 1 s ago
    assert blocked.json()["status_code"] == 429 and "too many failed" in blocked.json()["detail"]
    # A valid token from the same address is never refused by the brake.
    assert gw.api(studio.token).get(CONVERSATIONS).status_code == 200

    clock.now += 58.5
    assert guesser.get(CONVERSATIONS).status_code == 429
    clock.now += 0.5
    assert guesser.get(CONVERSATIONS).status_code == 401


def test_failures_slide_out_of_the_window(gw: RunningGateway) -> None:
    clock = FakeClock()
    install_limiter(gw, max_failures=10, window=60.0, clock=clock)
    guesser = gw.api("gw_guessing-000000")
    for _ in range(9):
        assert guesser.get(CONVERSATIONS).status_code == 401
    clock.now += 60.0
    for _ in range(9):
        assert guesser.get(CONVERSATIONS).status_code == 401
    assert guesser.get(CONVERSATIONS).status_code == 401  # the 10th within the window ...
    assert guesser.get(CONVERSATIONS).status_code == 429  # ... starts the block


def test_a_blocked_address_does_not_block_others(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    install_limiter(gw, max_failures=3, clock=FakeClock())
    # uvicorn takes the client address from X-Forwarded-For when the peer is a local proxy.
    for _ in range(3):
        gw.api("gw_guessing-000000").get(CONVERSATIONS, headers={"X-Forwarded-For": "203.0.113.7"})
    other_guess = gw.api("gw_another-guess-1")  # another prefix: only the address is blocked
    assert other_guess.get(CONVERSATIONS, headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 429
    assert other_guess.get(CONVERSATIONS, headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 401
    owner = gw.api(studio.token)
    assert owner.get(CONVERSATIONS, headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    assert owner.get(CONVERSATIONS).status_code == 200


def test_a_valid_token_still_works_after_ten_bad_ones_from_its_address(gw: RunningGateway) -> None:
    """Issue 14: ten bad tokens from one address locked the owner's valid token out for a minute."""
    studio = gw.add_studio("inkwell")
    _, member_token = add_member(gw, studio)
    office = {"X-Forwarded-For": "203.0.113.7"}  # the owner and a guesser behind one NAT
    for number in range(10):  # each guess another prefix: the address alone is braked
        assert gw.api(f"gw_{number:02d}guess-0000").get(CONVERSATIONS, headers=office).status_code == 401
    eleventh = gw.api("gw_10guess-0000").get(CONVERSATIONS, headers=office)
    assert eleventh.status_code == 429 and 1 <= int(eleventh.headers["retry-after"]) <= 60
    for token in (studio.token, member_token):
        assert gw.api(token).get(CONVERSATIONS, headers=office).status_code == 200
    assert gw.api(studio.token).post(TOKENS, headers=office).status_code == 201


def test_guesses_at_one_prefix_are_braked_from_any_address(gw: RunningGateway) -> None:
    """The prefix (`gw_` and six characters) is public: many addresses aiming at one token's
    prefix share one budget, and the token itself keeps working."""
    studio = gw.add_studio("inkwell")
    install_limiter(gw, max_failures=10, clock=FakeClock())
    prefix = studio.token[:9]
    for number in range(10):
        guess = gw.api(f"{prefix}guess{number}").get(CONVERSATIONS, headers={"X-Forwarded-For": f"198.51.100.{number}"})
        assert guess.status_code == 401
    braked = gw.api(f"{prefix}guess-x").get(CONVERSATIONS, headers={"X-Forwarded-For": "192.0.2.200"})
    assert braked.status_code == 429 and braked.headers["retry-after"] == "60"
    assert gw.api(studio.token).get(CONVERSATIONS, headers={"X-Forwarded-For": "192.0.2.200"}).status_code == 200
    assert gw.api("gw_elsewhere-1").get(CONVERSATIONS, headers={"X-Forwarded-For": "192.0.2.200"}).status_code == 401


def test_requests_without_a_token_are_not_counted(gw: RunningGateway) -> None:
    studio = gw.add_studio("inkwell")
    install_limiter(gw, max_failures=3, clock=FakeClock())
    for _ in range(10):
        assert gw.api(None).get(CONVERSATIONS).status_code == 401
    assert gw.api(studio.token).get(CONVERSATIONS).status_code == 200


def test_limiter_memory_is_bounded_and_expired_entries_are_dropped() -> None:
    clock = FakeClock()
    limiter = AuthFailureLimiter(max_failures=2, window=60.0, max_clients=100, clock=clock)
    limiter.failure("192.0.2.1")
    limiter.failure("192.0.2.1")
    assert limiter.retry_after("192.0.2.1") == 60
    for i in range(500):
        limiter.failure(f"10.0.{i // 256}.{i % 256}")
    assert limiter.tracked() == 100  # the least recently failed addresses were forgotten
    clock.now += 60.0
    assert limiter.tracked() == 0 and limiter.retry_after("10.0.1.243") is None


def test_limiter_counts_concurrent_failures_exactly() -> None:
    limiter = AuthFailureLimiter(max_failures=8 * 200, clock=FakeClock())

    def fail() -> None:
        for _ in range(200):
            limiter.failure("192.0.2.1")

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limiter.retry_after("192.0.2.1") == 60  # all 1600 were counted: one lost would leave it open


@pytest.mark.parametrize("options", [{"max_failures": 0}, {"window": 0}, {"max_clients": 0}])
def test_limiter_refuses_meaningless_settings(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AuthFailureLimiter(**options)  # type: ignore[arg-type]
