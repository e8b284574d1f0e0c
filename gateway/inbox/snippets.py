"""The line of text an inbox row shows under its subject: the start of the guest's last new text.

One query for a page of conversations (not one per row): the newest visible, undeleted inbound
message of each, its `text` (the new text, without the quoted history, gateway/inbound/quotes.py)
cut in SQL so a long mail is not read whole for a line.
"""
from __future__ import annotations

import json

from sqlalchemy import Connection

from gateway.store.db import DriverSQL

SNIPPET_CHARS = 140


# Both statements take the page's ids as one parameter (an array on PostgreSQL, a JSON array
# on SQLite), so the statement's text is the same for every page: psycopg prepares it after a
# few pages and the server plans it once, where an IN list of 50 parameters was a new statement
# each time. Each id walks ix_message_conversation backwards to its newest guest message (a
# LATERAL LIMIT 1 on PostgreSQL, a correlated LIMIT 1 on SQLite), however long the conversation.
# SQLite is told the index: left to itself it walked ix_message_studio_deleted, every message of
# the studio for each row (15 ms a page at 2,000 conversations).
# Run on the driver's cursor (store/db.DriverSQL): they return ids and text, and SQLAlchemy's
# per-execution work cost more than SQLite took to answer (bench/web_inbox.py).
_LIVE = "message.deleted_at IS NULL"  # visibility.LIVE_MESSAGE
_NEWEST_PG = DriverSQL(f"""
    SELECT page.id, newest.line
    FROM unnest(CAST(? AS integer[])) AS page(id)
    CROSS JOIN LATERAL (
        SELECT substr(message.text, 1, {SNIPPET_CHARS * 2}) AS line FROM message
        WHERE message.conversation_id = page.id AND message.studio_id = ?
          AND message.direction = 'inbound' AND message.state = 'visible' AND {_LIVE}
        ORDER BY message.id DESC LIMIT 1) AS newest""")
_NEWEST_SQLITE = DriverSQL(f"""
    SELECT page.value, (
        SELECT substr(message.text, 1, {SNIPPET_CHARS * 2}) FROM message INDEXED BY ix_message_conversation
        WHERE message.conversation_id = page.value AND message.studio_id = ?
          AND message.direction = 'inbound' AND message.state = 'visible' AND {_LIVE}
        ORDER BY message.id DESC LIMIT 1) AS line
    FROM json_each(?) AS page""")


def snippets(conn: Connection, studio_id: int, conversation_ids: list[int]) -> dict[int, str]:
    """conversation id → its snippet, one line; conversations without a guest message are left out."""
    if not conversation_ids:
        return {}
    if conn.dialect.name == "postgresql":
        found = _NEWEST_PG(conn, (conversation_ids, studio_id))
    else:
        found = _NEWEST_SQLITE(conn, (studio_id, json.dumps(conversation_ids)))
    return {conversation_id: _one_line(line) for conversation_id, line in found if line is not None}


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET_CHARS else line[:SNIPPET_CHARS - 1].rstrip() + "…"
