"""A support read is audited as a read only when it read something: after validation, before
the answer is sent. Over real HTTP against a real gateway, on SQLite and PostgreSQL."""
from __future__ import annotations

from tests.access import CONVERSATIONS, as_support, grant, open_conversation, support_token
from tests.conftest import RunningGateway
from tests.test_api_access import _audit


def _support_entries(gw: RunningGateway, studio: object) -> list[tuple[object, object]]:
    return [(e["action"], e["target"]) for e in _audit(gw, studio)  # type: ignore[arg-type]
            if str(e["actor"]).startswith("support:")]


def test_a_refused_support_query_is_not_audited_as_a_read(gw: RunningGateway) -> None:
    """Before: GET /conversations?limit=9999 answered 400 and the audit log still said
    "conversation.list" (the dependency audited before Litestar validated the query)."""
    studio = gw.add_studio("inkwell")
    mail = open_conversation(gw, studio)
    grant(gw, studio, hours=2)
    support = as_support(gw, support_token(gw, "alice"), "inkwell")

    assert support.get(CONVERSATIONS, params={"limit": 9999}).status_code == 400
    assert support.get(f"{CONVERSATIONS}/{mail.conversation_id + 1000}").status_code == 404
    assert _support_entries(gw, studio) == [
        ("conversation.read.rejected", f"conversation {mail.conversation_id + 1000}"),
        ("conversation.list.rejected", "conversations"),
    ]

    assert support.get(CONVERSATIONS, params={"limit": 10}).status_code == 200
    assert _support_entries(gw, studio)[0] == ("conversation.list", "conversations")
