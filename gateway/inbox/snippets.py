"""The line of text an inbox row shows under its subject: the start of the guest's last new text.

One query for a page of conversations (not one per row): the newest visible, undeleted inbound
message of each, its `text` (the new text, without the quoted history, gateway/inbound/quotes.py)
cut in SQL so a long mail is not read whole for a line.
"""
from __future__ import annotations

from sqlalchemy import Connection, func, select

from gateway.access.visibility import LIVE_MESSAGE
from gateway.store.tables import MESSAGE

SNIPPET_CHARS = 140


def snippets(conn: Connection, studio_id: int, conversation_ids: list[int]) -> dict[int, str]:
    """conversation id → its snippet, one line; conversations without a guest message are left out."""
    if not conversation_ids:
        return {}
    newest = (select(func.max(MESSAGE.c.id))
              .where(MESSAGE.c.studio_id == studio_id, MESSAGE.c.conversation_id.in_(conversation_ids),
                     MESSAGE.c.direction == "inbound", MESSAGE.c.state == "visible", LIVE_MESSAGE)
              .group_by(MESSAGE.c.conversation_id))
    rows = conn.execute(select(MESSAGE.c.conversation_id, func.substr(MESSAGE.c.text, 1, SNIPPET_CHARS * 2))
                        .where(MESSAGE.c.id.in_(newest)))
    return {conversation_id: _one_line(text or "") for conversation_id, text in rows}


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET_CHARS else line[:SNIPPET_CHARS - 1].rstrip() + "…"
