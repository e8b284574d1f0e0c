"""The inbox rows' snippets (gateway/inbox/snippets.py): the newest live guest message of each
conversation, one line, on both back ends (each has its own statement)."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, insert, select

from gateway.access.studios import add_studio
from gateway.inbox.snippets import SNIPPET_CHARS, snippets
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import CONVERSATION, GUEST, MESSAGE


def _conversation(conn: object, studio_id: int, guest_id: int, subject: str) -> int:
    now = utcnow()
    return conn.execute(insert(CONVERSATION).values(  # type: ignore[attr-defined]
        studio_id=studio_id, guest_id=guest_id, subject=subject, subject_key=subject.lower(), status="open",
        created_at=now, last_message_at=now, message_count=1).returning(CONVERSATION.c.id)).scalar_one()


def _message(conn: object, studio_id: int, conversation_id: int, text: str, *, direction: str = "inbound",
             state: str = "visible", deleted: bool = False) -> None:
    now = utcnow()
    conn.execute(insert(MESSAGE).values(  # type: ignore[attr-defined]
        studio_id=studio_id, conversation_id=conversation_id, direction=direction, state=state,
        from_email="guest@example.org", from_name="Gast", subject="x", text=text, full_text="",
        message_id=f"{utcnow().timestamp()}-{text[:10]}@example.org", received_at=now,
        deleted_at=now - timedelta(seconds=1) if deleted else None))


def test_the_newest_live_guest_message_of_each_conversation_in_one_line(engine: Engine) -> None:
    with write_tx(engine) as conn:
        studio_id, _ = add_studio(conn, "inkwell", "Inkwell", "owner@inkwell.example")
        other_id, _ = add_studio(conn, "other", "Other", "owner@other.example")
        guest_id = conn.execute(insert(GUEST).values(studio_id=studio_id, email="guest@example.org", name="Gast",
                                                     created_at=utcnow()).returning(GUEST.c.id)).scalar_one()
        plain = _conversation(conn, studio_id, guest_id, "Plain")
        _message(conn, studio_id, plain, "Erste Frage")
        _message(conn, studio_id, plain, "Zweite\n  Frage,\tneu")
        _message(conn, studio_id, plain, "Unsere Antwort", direction="outbound")
        _message(conn, studio_id, plain, "Gehalten", state="held")
        _message(conn, studio_id, plain, "Gelöscht", deleted=True)
        long = _conversation(conn, studio_id, guest_id, "Long")
        _message(conn, studio_id, long, "Wort " * 100)
        answered_only = _conversation(conn, studio_id, guest_id, "Answered only")
        _message(conn, studio_id, answered_only, "Nur unsere Nachricht", direction="outbound")
        ids = [c for c, in conn.execute(select(CONVERSATION.c.id))]
    with read_tx(engine) as conn:
        found = snippets(conn, studio_id, ids)
        assert snippets(conn, other_id, ids) == {}  # another studio's ids are not found
        assert snippets(conn, studio_id, []) == {}
    assert found[plain] == "Zweite Frage, neu"
    assert len(found[long]) == SNIPPET_CHARS and found[long].endswith("…")
    assert answered_only not in found
