"""GET /app/m/{id}/delete: "Delete this message?" before a single message goes into the trash.

The conversation page's "Delete this message" is a link to this page, not the deleting form
itself: one click on a small button beside a message must not remove it unasked, and the step
works without script (as the plan's cancellation does, gateway/web/billing.py). The page names
the message (who, when, its start) and says what deleting means on the studio's plan (restorable
from the trash for 30 days on a paid plan, not on the free one); its button posts the form the
page used to carry (gateway/web/conversation.delete_one_message), and "Keep it" leads back.
Only a message the studio is shown can be asked about: another studio's, a deleted or a
rejected one is 404, as deleting it would be.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from sqlalchemy import Engine, select

from gateway.access.visibility import IN_LIVE_CONVERSATION, LIVE_MESSAGE
from gateway.access.web_sessions import SessionCaller
from gateway.billing.entitlements import has_paid_features
from gateway.lifecycle.trash import RETENTION, SHOWN_STATES
from gateway.settings import Settings
from gateway.store.db import read_tx
from gateway.store.models import utcnow
from gateway.store.tables import MESSAGE, STUDIO
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.templating import negotiate, short_time

EXCERPT = 300


@dataclass(frozen=True)
class Asked:
    studio_name: str
    message_id: int
    conversation_id: int
    sender: str         # the guest's name or address; the studio for its own reply
    outbound: bool
    when: str
    when_iso: str
    excerpt: str
    restorable: bool    # the plan lets it come back from the trash
    retention_days: int


@get("/app/m/{message_id:int}/delete", name="web-message-delete-confirm")
async def confirm_delete(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    signed = await signed_in(request)
    if signed is None:
        return to_login(request)
    settings: Settings = request.app.state.settings
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    asked = await asyncio.to_thread(_read, request.app.state.engine, settings, signed, message_id, language)
    if asked is None:
        raise NotFoundException("no such message", extra={"code": "not_found"})
    return page(request, "message_delete.html", language=language, asked=asked,
                csrf=csrf_token(settings.secret(), session_token(request, settings) or ""))


def _read(engine: Engine, settings: Settings, signed: SessionCaller, message_id: int, language: str) -> Asked | None:
    studio_id, now = signed.caller.studio_id, utcnow()
    with read_tx(engine) as conn:
        # What delete_message (gateway/lifecycle/trash.py) would delete: shown, live, in a live conversation.
        m = conn.execute(select(MESSAGE.c.id, MESSAGE.c.conversation_id, MESSAGE.c.direction, MESSAGE.c.from_name,
                                MESSAGE.c.from_email, MESSAGE.c.text, MESSAGE.c.received_at).where(
            MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id, MESSAGE.c.state.in_(SHOWN_STATES),
            LIVE_MESSAGE, IN_LIVE_CONVERSATION)).first()
        if m is None:
            return None
        studio = conn.execute(select(STUDIO.c.name, STUDIO.c.time_zone).where(STUDIO.c.id == studio_id)).one()
        paid = has_paid_features(conn, studio_id, settings, now)
    outbound = m.direction == "outbound"
    return Asked(studio.name, m.id, m.conversation_id, studio.name if outbound else (m.from_name or m.from_email),
                 outbound, short_time(m.received_at, studio.time_zone, language), m.received_at.isoformat(),
                 m.text[:EXCERPT], paid, RETENTION.days)


MESSAGE_DELETE_ROUTES = [confirm_delete]
