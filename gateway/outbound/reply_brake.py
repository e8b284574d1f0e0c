"""The brake on replies: at most so many per conversation per hour.

New inquiries have a flood brake at the SMTP door (gateway/inbound/intake.py); replies need
one too. A client stuck in a retry loop, a script gone wrong or a stolen token could
otherwise mail one guest hundreds of times within minutes, and the guest's provider would
answer by blocking the studio's relay. People answer a guest a few times an hour at most,
so a brake per conversation stops the loop long before it harms anyone, and says when to
try again (the API answers 429 with Retry-After, RFC 6585 section 4).

Every reply the studio wrote counts, deleted ones too (they were sent all the same);
acknowledgements and other automatic mail do not. Like the flood brake this is a brake,
not an exact quota: two processes writing at the same instant may both pass.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from gateway.outbound.replies import ReplyError
from gateway.store.tables import MESSAGE

WINDOW = timedelta(hours=1)


class RepliesBraked(ReplyError):
    """Too many replies in this conversation within the hour (answered 429)."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"at most {limit} replies per conversation per hour; "
                         f"try again in {retry_after} seconds")
        self.retry_after = retry_after


def check_reply_brake(conn: Connection, *, studio_id: int, conversation_id: int, now: datetime,
                      limit: int) -> None:
    """Raise RepliesBraked when the conversation had `limit` replies within the last hour.

    Asks for the `limit`-th reply of the window, oldest first, through the (conversation_id,
    direction, received_at) index: it exists only when the brake is on, and the rows before it
    are stepped over inside the database. Fetching all `limit` of them into Python instead cost
    every reply a few microseconds per earlier reply of the hour once the limit was raised (a
    load test's 4,000 replies to one conversation: p99 from 15 to 98 ms, bench/outbound.py)."""
    window = select(MESSAGE.c.received_at).where(
        MESSAGE.c.conversation_id == conversation_id, MESSAGE.c.direction == "outbound",
        MESSAGE.c.received_at > now - WINDOW, MESSAGE.c.studio_id == studio_id,
        MESSAGE.c.automatic.is_(False)).order_by(MESSAGE.c.received_at)
    if conn.execute(window.offset(limit - 1).limit(1)).first() is None:
        return
    oldest = conn.execute(window.limit(1)).scalar_one()
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    # One more reply is possible once the oldest of these leaves the window.
    raise RepliesBraked(limit, max(1, math.ceil((oldest + WINDOW - now).total_seconds())))
