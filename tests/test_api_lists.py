"""One list model on every list route: `{items, next_cursor}`, `limit` and `cursor`, the same
limits everywhere, and every list paged through 1,200 items over HTTP.

The 1,200 rows of each list are written through the store in one transaction (the API would
take minutes to make them); they are read only through the API. Their times repeat in runs of
seven, so pages must break ties by id: a page that did would repeat or skip items.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

import pytest
from sqlalchemy import Connection, insert

from gateway.store.db import write_tx
from gateway.store.models import utcnow
from gateway.store.tables import (API_TOKEN, AUDIT_ENTRY, AUTOMATIC_MAIL, CONVERSATION, GUEST, MESSAGE, PROFILE,
                                  SUPPORT_GRANT)
from tests.conftest import RunningGateway, StudioInfo

N = 1_200


def _at(base: datetime, i: int) -> datetime:
    return base - timedelta(seconds=i // 7)  # runs of seven equal times


def _guest(conn: Connection, studio_id: int) -> int:
    return int(conn.execute(insert(GUEST).returning(GUEST.c.id), {
        "studio_id": studio_id, "email": "guest@example.org", "name": "Lena"}).scalar_one())


def _conversation(conn: Connection, studio_id: int, guest_id: int, now: datetime) -> int:
    return int(conn.execute(insert(CONVERSATION).returning(CONVERSATION.c.id), {
        "studio_id": studio_id, "guest_id": guest_id, "subject": "Anfrage", "created_at": now,
        "last_message_at": now, "updated_at": now}).scalar_one())


def _messages(conn: Connection, studio_id: int, conversation_id: int, now: datetime, **values: Any) -> None:
    conn.execute(insert(MESSAGE), [{
        "studio_id": studio_id, "conversation_id": conversation_id, "direction": "inbound",
        "message_id": f"m{i}@example.org", "dedupe_key": f"d{i}", "from_email": "guest@example.org",
        "subject": f"Nachricht {i}", "text": f"Text {i}", "received_at": _at(now, i), **values} for i in range(N)])


def seed_conversations(conn: Connection, studio_id: int, now: datetime) -> None:
    guest_id = _guest(conn, studio_id)
    conn.execute(insert(CONVERSATION), [{
        "studio_id": studio_id, "guest_id": guest_id, "subject": f"Anfrage {i}", "created_at": _at(now, i),
        "last_message_at": _at(now, i), "updated_at": _at(now, i), "message_count": 1} for i in range(N)])


def seed_trashed_conversations(conn: Connection, studio_id: int, now: datetime) -> None:
    guest_id = _guest(conn, studio_id)
    conn.execute(insert(CONVERSATION), [{
        "studio_id": studio_id, "guest_id": guest_id, "subject": f"Anfrage {i}", "created_at": now,
        "last_message_at": now, "updated_at": now, "deleted_at": _at(now, i)} for i in range(N)])


def seed_messages(conn: Connection, studio_id: int, now: datetime) -> None:
    _messages(conn, studio_id, _conversation(conn, studio_id, _guest(conn, studio_id), now), now)


def seed_held(conn: Connection, studio_id: int, now: datetime) -> None:
    _messages(conn, studio_id, _conversation(conn, studio_id, _guest(conn, studio_id), now), now, state="held")


def seed_trashed_messages(conn: Connection, studio_id: int, now: datetime) -> None:
    conversation_id = _conversation(conn, studio_id, _guest(conn, studio_id), now)
    _messages(conn, studio_id, conversation_id, now, deleted_at=now - timedelta(hours=1))


def seed_automatic(conn: Connection, studio_id: int, now: datetime) -> None:
    conn.execute(insert(AUTOMATIC_MAIL), [{
        "studio_id": studio_id, "auto_kind": "bulk", "dedupe_key": f"a{i}", "from_email": "news@example.org",
        "subject": f"Newsletter {i}", "message_id": f"a{i}@example.org", "received_at": _at(now, i)}
        for i in range(N)])


def seed_audit(conn: Connection, studio_id: int, now: datetime) -> None:
    conn.execute(insert(AUDIT_ENTRY), [{
        "studio_id": studio_id, "created_at": _at(now, i), "actor": "support:alice", "action": "conversation.read",
        "target": f"conversation {i}", "reason": "ticket"} for i in range(N)])


def seed_tokens(conn: Connection, studio_id: int, now: datetime) -> None:
    profile_id = conn.execute(PROFILE.select().where(PROFILE.c.studio_id == studio_id)).first().id
    conn.execute(insert(API_TOKEN), [{
        "studio_id": studio_id, "profile_id": profile_id, "prefix": f"gw_{i:05d}",
        "token_hash": hashlib.sha256(f"{studio_id}-{i}".encode()).hexdigest(), "created_at": _at(now, i),
        "revoked_at": now} for i in range(N)])


def seed_profiles(conn: Connection, studio_id: int, now: datetime) -> None:
    conn.execute(insert(PROFILE), [{
        "studio_id": studio_id, "email": f"member{i}@example.org", "name": f"Member {i}", "role": "member",
        "created_at": now} for i in range(N)])


def seed_grants(conn: Connection, studio_id: int, now: datetime) -> None:
    profile_id = conn.execute(PROFILE.select().where(PROFILE.c.studio_id == studio_id)).first().id
    conn.execute(insert(SUPPORT_GRANT), [{
        "studio_id": studio_id, "profile_id": profile_id, "created_at": _at(now, i),
        "expires_at": _at(now, i) + timedelta(hours=1), "revoked_at": now, "closed_at": now} for i in range(N)])


@dataclass(frozen=True)
class ListCase:
    path: str
    seed: Callable[[Connection, int, datetime], None]
    extra: int = 0            # items the studio has without seeding (the owner's profile, its token)


LISTS = {
    "conversations": ListCase("/api/v1/conversations", seed_conversations),
    "messages": ListCase("/api/v1/conversations/{conversation_id}/messages", seed_messages),
    "held": ListCase("/api/v1/held", seed_held),
    "trash-conversations": ListCase("/api/v1/trash/conversations", seed_trashed_conversations),
    "trash-messages": ListCase("/api/v1/trash/messages", seed_trashed_messages),
    "automatic": ListCase("/api/v1/automatic", seed_automatic),
    "audit": ListCase("/api/v1/audit", seed_audit),
    "tokens": ListCase("/api/v1/tokens", seed_tokens, extra=1),
    "profiles": ListCase("/api/v1/profiles", seed_profiles, extra=1),
    "support-grants": ListCase("/api/v1/support-grants", seed_grants),
}


def _seeded(gw: RunningGateway, case: ListCase) -> tuple[StudioInfo, str]:
    studio = gw.add_studio("inkwell")
    with write_tx(gw.engine) as conn:
        case.seed(conn, studio.id, utcnow())
        conversation_id = conn.execute(CONVERSATION.select().where(CONVERSATION.c.studio_id == studio.id)).first()
    return studio, case.path.format(conversation_id=conversation_id.id if conversation_id else 0)


def _page_through(api: Any, path: str, limit: int | None) -> list[int]:
    ids: list[int] = []
    cursor: str | None = None
    for _ in range(N):  # bounded: a cursor that never ends fails below, not by hanging
        params: dict[str, Any] = {} if limit is None else {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        answer = api.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= (limit or 50)
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids
        assert len(body["items"]) == (limit or 50)  # only the last page is short
    raise AssertionError("the cursor never ended")


@pytest.mark.parametrize("name", sorted(LISTS))
def test_every_list_pages_through_1200_items_once_each(gw: RunningGateway, name: str) -> None:
    case = LISTS[name]
    studio, path = _seeded(gw, case)
    api = gw.api(studio.token)
    largest = _page_through(api, path, 200)
    assert len(largest) == N + case.extra and len(set(largest)) == len(largest)
    # Default pages of 50: the same items (a conversation's messages are oldest first within
    # each page, so only there the order of the pages' concatenation depends on the page size).
    default = _page_through(api, path, None)
    assert default == largest if name != "messages" else sorted(default) == sorted(largest)
    assert api.get(path, params={"limit": 201}).status_code == 400
    assert api.get(path, params={"limit": 0}).status_code == 400


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("name", sorted(LISTS))
def test_a_cursor_we_did_not_hand_out_is_400_bad_cursor_never_500(gw: RunningGateway, name: str) -> None:
    studio = gw.add_studio("inkwell")
    with write_tx(gw.engine) as conn:  # the messages' route needs its conversation
        conversation_id = _conversation(conn, studio.id, _guest(conn, studio.id), utcnow())
    api = gw.api(studio.token)
    path = LISTS[name].path.format(conversation_id=conversation_id)
    at = "2026-12-06T10:00:00+00:00"
    for bad in ("not-a-cursor", "bm9wZQ", "", "x" * 5000, _cursor(f"1|{2**63}|{at}"), _cursor(f"1|{2**63}"),
                _cursor(f"1|99999999999999999999999|{at}"), _cursor("1|-5"), _cursor(f"2|5|{at}"),
                _cursor("1|5|yesterday"), _cursor("1|5|0001-01-01T00:00:00+05:00"),
                _cursor("1|5|9999-12-31T23:59:59-05:00"), _cursor("1|٣"), "é"):
        answer = api.get(path, params={"cursor": bad})
        assert answer.status_code == 400, (bad, answer.status_code, answer.text)
        assert _code(answer.json()) == "bad_cursor", answer.text


def _code(error: dict[str, Any]) -> Any:
    """The error's code: top-level in the error model, or in Litestar's `extra` before it."""
    return error["code"] if "code" in error else (error.get("extra") or {}).get("code")
