"""/app/trash: the conversations and the single messages the studio deleted in the last 30
days, and restoring one, as the API's trash offers (/api/v1/trash/conversations and /messages,
POST .../restore for either). A message comes back into its conversation; one whose
conversation is deleted too is listed once that conversation is restored (the API's rule).

Restoring is a paid feature (gateway/billing/entitlements.py; the FAQ: "deleted data can be
restored on a paid plan"). On the free plan the page says so and why instead of offering a
button; a restore posted anyway gets the same explanation (402), never a silent nothing. The
listing and the restore are the API's (gateway/lifecycle/trash.py), scoped to the session's
studio: another studio's id is 404.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine, select

from gateway.access.web_sessions import SessionCaller
from gateway.billing.entitlements import has_paid_features
from gateway.lifecycle.deletion_log import deletion_log
from gateway.lifecycle.trash import (RETENTION, ConversationDeleted, Expired, NotDeleted, PaidFeature,
                                     Restored, TrashedConversation, TrashedMessage, record_restored, restore_conversation,
                                     restore_message, trashed_conversations, trashed_messages)
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.paging import BadCursor
from gateway.store.tables import STUDIO
from gateway.web.signed_forms import signed_form
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.templating import negotiate, short_time

log = logging.getLogger(__name__)
PAGE_SIZE = 50


@dataclass(frozen=True)
class TrashRow:
    conversation: TrashedConversation
    deleted: str
    purge: str


@dataclass(frozen=True)
class TrashedMessageRow:
    message: TrashedMessage
    deleted: str
    purge: str


@dataclass(frozen=True)
class Trash:
    studio_name: str
    restorable: bool        # the plan allows restoring
    rows: list[TrashRow]
    next_cursor: str | None
    retention_days: int
    messages: list[TrashedMessageRow]
    next_messages_cursor: str | None    # the messages page on, by the API's cursor of that list
    cursor: str | None                  # the conversations' page shown (kept while paging messages)


@get("/app/trash", name="web-trash")
async def trash(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await signed_in(request)
    if signed is None:
        return to_login(request)
    return await _page(request, signed)


async def _page(request: Request[Any, Any, Any], signed: SessionCaller, refused: str = "",
                status: int = 200) -> Response[Any]:
    settings: Settings = request.app.state.settings
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    cursor = request.query_params.get("cursor") or None
    messages_cursor = request.query_params.get("messages_cursor") or None
    try:
        found = await asyncio.to_thread(_read, request.app.state.engine, settings, signed, language, cursor,
                                        messages_cursor)
    except BadCursor:
        raise ClientException("not a page of this trash", extra={"code": "bad_cursor"}) from None
    return page(request, "trash.html", status=status, language=language, trash=found, refused=refused,
                csrf=csrf_token(settings.secret(), session_token(request, settings) or ""))


def _read(engine: Engine, settings: Settings, signed: SessionCaller, language: str, cursor: str | None,
          messages_cursor: str | None = None) -> Trash:
    studio_id, now = signed.caller.studio_id, utcnow()
    with read_tx(engine) as conn:
        studio = conn.execute(select(STUDIO.c.name, STUDIO.c.time_zone).where(STUDIO.c.id == studio_id)).one()
        listed = trashed_conversations(conn, studio_id, now, limit=PAGE_SIZE, cursor=cursor)
        messages = trashed_messages(conn, studio_id, now, limit=PAGE_SIZE, cursor=messages_cursor)
        paid = has_paid_features(conn, studio_id, settings, now)
    zone = studio.time_zone
    rows = [TrashRow(c, short_time(c.deleted_at, zone, language), short_time(c.purge_at, zone, language))
            for c in listed.items]
    shown = [TrashedMessageRow(m, short_time(m.deleted_at, zone, language), short_time(m.purge_at, zone, language))
             for m in messages.items]
    return Trash(studio.name, paid, rows, listed.next_cursor, RETENTION.days, shown, messages.next_cursor, cursor)


@post("/app/trash/{conversation_id:int}/restore", name="web-trash-restore", status_code=303)
async def restore(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Back into the inbox as it was, then to the conversation; refused: the trash, explained."""
    return await _restore_answer(request, conversation_id, restore_conversation)


@post("/app/trash/m/{message_id:int}/restore", name="web-trash-restore-message", status_code=303)
async def restore_one_message(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    """Back into its conversation, then to it at the message; refused: the trash, explained."""
    return await _restore_answer(request, message_id, restore_message)


async def _restore_answer(request: Request[Any, Any, Any], object_id: int,
                          restore_one: Callable[..., Restored | None]) -> Response[Any]:
    signed, form = await signed_form(request)
    settings: Settings = request.app.state.settings
    kind = "conversation" if restore_one is restore_conversation else "message"
    try:
        restored = await asyncio.to_thread(_restore, request.app.state.engine, settings, signed.caller.studio_id,
                                           object_id, restore_one)
    except PaidFeature:
        return await _page(request, signed, "paid", 402)
    except Expired:
        return await _page(request, signed, "expired", 410)
    except ConversationDeleted:  # the message's conversation was deleted after the page was read
        return await _page(request, signed, "conversation_deleted", 409)
    except NotDeleted:  # restored meanwhile (a double click)
        return Redirect(f"/app/c/{object_id}" if kind == "conversation" else "/app/trash", status_code=303)
    if restored is None:
        raise NotFoundException(f"no such {kind}", extra={"code": "not_found"})
    try:
        record_restored(deletion_log(settings), signed.caller.studio_id, restored)
    except OSError:  # restored and committed: a later backup restore would only re-trash it
        log.exception("could not log the restore of %s %d in the deletion log", kind, object_id)
    at = "" if kind == "conversation" else f"#m{object_id}"
    return Redirect(f"/app/c/{restored.conversation_id}{at}", status_code=303)


def _restore(engine: Engine, settings: Settings, studio_id: int, object_id: int,
             restore_one: Callable[..., Restored | None]) -> Restored | None:
    with write_tx(engine) as conn:
        return restore_one(conn, studio_id, object_id, settings, utcnow())


TRASH_ROUTES = [trash, restore, restore_one_message]
