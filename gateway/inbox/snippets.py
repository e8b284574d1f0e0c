"""The line of text an inbox row shows under its subject: the start of the guest's last new text.

One query for a page of conversations (not one per row): the newest visible, undeleted inbound
message of each, its `text` (the new text, without the quoted history, gateway/inbound/quotes.py)
cut in SQL so a long mail is not read whole for a line.
"""
from __future__ import annotations

from sqlalchemy import Connection, func, select, text

from gateway.access.visibility import LIVE_MESSAGE
from gateway.store.tables import MESSAGE

SNIPPET_CHARS = 140


# PostgreSQL: the page's ids as one array parameter, so the statement's text is the same for
# every page (psycopg prepares it after a few pages, and the server plans it once) where an IN
# list of 50 parameters was a new statement each time; each id walks ix_message_conversation
# backwards to its newest guest message (a LATERAL LIMIT 1), however long the conversation.
_NEWEST_PG = text(f"""
    SELECT page.id, newest.line
    FROM unnest(CAST(:ids AS integer[])) AS page(id)
    CROSS JOIN LATERAL (
        SELECT substr(message.text, 1, {SNIPPET_CHARS * 2}) AS line FROM message
        WHERE message.conversation_id = page.id AND message.studio_id = :studio_id
          AND message.direction = 'inbound' AND message.state = 'visible'
          AND message.deleted_at IS NULL  -- visibility.LIVE_MESSAGE
        ORDER BY message.id DESC LIMIT 1) AS newest""")


def snippets(conn: Connection, studio_id: int, conversation_ids: list[int]) -> dict[int, str]:
    """conversation id → its snippet, one line; conversations without a guest message are left out."""
    if not conversation_ids:
        return {}
    if conn.dialect.name == "postgresql":
        found = conn.execute(_NEWEST_PG, {"ids": conversation_ids, "studio_id": studio_id})
        return {conversation_id: _one_line(line or "") for conversation_id, line in found}
    # The newest ids come from ix_message_conversation_inbound and drive a join on the primary
    # key. Written as `id IN (...) AND studio_id = ?` both back ends may walk the studio's index
    # over every message instead (SQLite did: 3 ms at 10,000 conversations, bench/web_inbox.py).
    newest = (select(func.max(MESSAGE.c.id).label("id"))
              .where(MESSAGE.c.conversation_id.in_(conversation_ids), MESSAGE.c.direction == "inbound",
                     MESSAGE.c.state == "visible", LIVE_MESSAGE)
              .group_by(MESSAGE.c.conversation_id).subquery())
    rows = conn.execute(select(MESSAGE.c.conversation_id, func.substr(MESSAGE.c.text, 1, SNIPPET_CHARS * 2))
                        .select_from(newest.join(MESSAGE, MESSAGE.c.id == newest.c.id))
                        .where(MESSAGE.c.studio_id == studio_id))
    return {conversation_id: _one_line(text or "") for conversation_id, text in rows}


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET_CHARS else line[:SNIPPET_CHARS - 1].rstrip() + "…"
