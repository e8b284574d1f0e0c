"""/app/c/{id}: one conversation, read-only for now: the guest's new text by default with the
full text behind a "show quoted text" toggle (<details>, no script), replies with their delivery
state and the relay's reason, and why each message is here (its threading rule).

Reads through gateway/inbox/reading.conversation_detail, as the API does, scoped to the
session's studio: another studio's id is 404. Opening it changes nothing (GET). Closing and
reopening is a form (CSRF token and Origin checked, gateway/web/security.py) over the API's own
domain function; marking read, replying and the guest's HTML in a sandboxed frame come with
the next pages.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine, select

from gateway.inbox.actions import CLOSED, OPEN, set_status
from gateway.store.db import write_tx
from gateway.web.login import checked_form

from gateway.access.web_sessions import SessionCaller
from gateway.inbox.reading import ConversationDetailOut, MessageOut, conversation_detail
from gateway.store.db import read_tx
from gateway.store.tables import STUDIO
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.templating import negotiate, short_time

PAGE_SIZE = 50


@dataclass(frozen=True)
class Shown:
    message: MessageOut
    when: str
    when_iso: str
    quoted: bool        # the full text holds more than the new text


@dataclass(frozen=True)
class Thread:
    studio_name: str
    conversation: ConversationDetailOut
    messages: list[Shown]


@get("/app/c/{conversation_id:int}", name="web-conversation")
async def conversation(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    signed = await signed_in(request)
    settings = request.app.state.settings
    if signed is None:
        return to_login(request)
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    found = await asyncio.to_thread(_read, request.app.state.engine, signed, conversation_id, language)
    if found is None:
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    return page(request, "conversation.html", language=language, thread=found,
                csrf=csrf_token(settings.secret(), session_token(request, settings) or ""))


def _read(engine: Engine, signed: SessionCaller, conversation_id: int, language: str) -> Thread | None:
    studio_id = signed.caller.studio_id
    with read_tx(engine) as conn:
        detail = conversation_detail(conn, studio_id, conversation_id, limit=PAGE_SIZE)
        if detail is None:
            return None
        studio = conn.execute(select(STUDIO.c.name, STUDIO.c.time_zone).where(STUDIO.c.id == studio_id)).one()
    shown = [Shown(m, short_time(m.received_at, studio.time_zone, language), m.received_at.isoformat(),
                   m.full_text.strip() != m.text.strip()) for m in detail.messages]
    return Thread(studio.name, detail, shown)


@post("/app/c/{conversation_id:int}/status", name="web-conversation-status", status_code=303)
async def change_status(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Close or reopen, then back to the conversation (303, so a reload does not post again)."""
    signed = await signed_in(request)
    settings = request.app.state.settings
    if signed is None:
        return Redirect("/app/login", status_code=303)
    form = await checked_form(request, session_token(request, settings))
    status = form.get("status")
    if status not in (OPEN, CLOSED):
        raise NotFoundException("no such status", extra={"code": "bad_status"})
    if not await asyncio.to_thread(_set, request.app.state.engine, signed.caller.studio_id, conversation_id,
                                   str(status)):
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    return Redirect(f"/app/c/{conversation_id}", status_code=303)


def _set(engine: Engine, studio_id: int, conversation_id: int, status: str) -> bool:
    with write_tx(engine) as conn:
        return set_status(conn, studio_id, conversation_id, status)
