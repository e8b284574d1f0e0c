"""/app/c/{id}: one conversation, its actions and the reply box.

The page shows the guest's new text by default with the full text behind a "show quoted text"
toggle (<details>, no script), the sanitised HTML in a sandboxed frame served by its own route
(gateway/web/conversation_parts.py), attachments (image thumbnails and downloads), replies with
their delivery state, the relay's reason and a retry button when one failed, and why each
message is here (its threading rule). Opening it marks it read, as reading in a mail client does.

Reads through gateway/inbox/reading.conversation_detail, as the API does, scoped to the
session's studio: another studio's id is 404. Every action is a form (CSRF token and Origin
checked, gateway/web/security.py) over the API's own domain functions, answered 303 back to a
page so a reload does not post again: close/reopen, mark unread, delete the conversation or one
message (restored from the trash page, gateway/web/trash.py), reply.

The reply box posts multipart (text and files), read as it streams in (gateway/web/reply_upload.py),
and goes through the API's checks: the attachments' sizes and count, the text, the reply brake
(gateway/outbound/replies.py), all before anything is written, so an oversized upload, however
large, is a form error with the typed text kept and nothing half-stored.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Connection, Engine, select

from gateway.access.web_sessions import SessionCaller, session_caller, touch
from gateway.inbox.actions import CLOSED, OPEN, set_status
from gateway.inbox.reading import BadCursor, ConversationDetailOut, MessageOut, conversation_detail
from gateway.inbox.reads import mark_read
from gateway.lifecycle.deletion_log import deletion_log
from gateway.lifecycle.trash import delete_conversation, delete_message
from gateway.outbound.replies import ReplyError, ReplyTooLarge, Upload, check_text, check_uploads, create_reply
from gateway.outbound.reply_brake import RepliesBraked, check_reply_brake
from gateway.settings import Settings
from gateway import eventlog
from gateway.store.db import read_soon, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import STUDIO
from gateway.web.signed_forms import signed_form
from gateway.web.login import check_csrf, check_origin, page
from gateway.web.reply_upload import DRAIN_MAX, read_reply_post
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.templating import RowTimes, negotiate, translations

PAGE_SIZE = 50
# Images a browser shows as a thumbnail: raster formats only. SVG can carry script and is only
# ever a download (gateway/web/conversation_parts.py serves the bytes sandboxed either way).
THUMBNAIL_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


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
    event_id: int  # the studio's last event when the page was read: its live stream goes on from there


@dataclass(frozen=True)
class Draft:
    """What the reply box shows again after a refused reply: the text, and why it was refused."""

    text: str = ""
    error: str = ""


@get("/app/c/{conversation_id:int}", name="web-conversation")
async def conversation(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    state = request.app.state
    token = session_token(request, state.settings)
    signed = found = None
    due = False
    now = utcnow()
    try:  # the session and the page in one read, as the inbox reads them (bench/web_inbox.py)
        if token:
            signed, due, found = await read_soon(state.engine, state.get("loop_reader"), partial(
                _signed_read, token=token, now=now, accept_language=request.headers.get("accept-language", ""),
                conversation_id=conversation_id, cursor=request.query_params.get("cursor") or None))
    except BadCursor:
        raise ClientException("not a page of this conversation", extra={"code": "bad_cursor"}) from None
    if signed is None:
        return to_login(request)
    if due:
        await asyncio.to_thread(_write, state.engine, touch, signed.session_id, now)
    return await _answer(request, signed, found, Draft())


async def _page(request: Request[Any, Any, Any], signed: SessionCaller, conversation_id: int, draft: Draft,
                status: int = 200) -> Response[Any]:
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    try:
        found = await asyncio.to_thread(_read, request.app.state.engine, signed.caller.studio_id, conversation_id,
                                        language, request.query_params.get("cursor") or None)
    except BadCursor:
        raise ClientException("not a page of this conversation", extra={"code": "bad_cursor"}) from None
    return await _answer(request, signed, found, draft, status)


async def _answer(request: Request[Any, Any, Any], signed: SessionCaller, found: Thread | None, draft: Draft,
                  status: int = 200) -> Response[Any]:
    settings: Settings = request.app.state.settings
    if found is None:
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    if found.conversation.unread:  # opening is reading; the page shows it as it was when opened
        await asyncio.to_thread(_write, request.app.state.engine, mark_read, signed.caller.studio_id,
                                found.conversation.id, utcnow())
    # The newest page follows the conversation live (templates/web/conversation.html); an older
    # page, opened by its cursor, stays as it was.
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    return page(request, "conversation.html", status=status, language=language, thread=found, draft=draft,
                thumbnails=THUMBNAIL_TYPES, live=request.query_params.get("cursor") is None,
                csrf=csrf_token(settings.secret(), session_token(request, settings) or ""))


def _signed_read(conn: Connection, *, token: str, now: datetime, accept_language: str, conversation_id: int,
                 cursor: str | None) -> tuple[SessionCaller | None, bool, Thread | None]:
    """The session, whether its activity is due to be written, and the page, on one connection."""
    signed, due = session_caller(conn, token, now)
    if signed is None:
        return None, False, None
    language = negotiate(accept_language, signed.locale)
    return signed, due, _read_on(conn, signed.caller.studio_id, conversation_id, language, cursor)


def _read(engine: Engine, studio_id: int, conversation_id: int, language: str, cursor: str | None) -> Thread | None:
    with read_tx(engine) as conn:
        return _read_on(conn, studio_id, conversation_id, language, cursor)


def _read_on(conn: Connection, studio_id: int, conversation_id: int, language: str,
             cursor: str | None = None) -> Thread | None:
    """The newest PAGE_SIZE messages, or with `cursor` the older page it names (the API's cursor)."""
    # First the event number, then the page: every event up to it is committed (eventlog.py
    # numbers without gaps), so the page shows it, and the stream brings what comes after.
    seen = eventlog.current(conn, [studio_id])[studio_id]
    detail = conversation_detail(conn, studio_id, conversation_id, limit=PAGE_SIZE, cursor=cursor)
    if detail is None:
        return None
    studio = conn.execute(select(STUDIO.c.name, STUDIO.c.time_zone).where(STUDIO.c.id == studio_id)).one()
    when = RowTimes(studio.time_zone, language)
    shown = [Shown(m, when(m.received_at), m.received_at.isoformat(), m.full_text.strip() != m.text.strip())
             for m in detail.messages]
    return Thread(studio.name, detail, shown, seen)


@post("/app/c/{conversation_id:int}/status", name="web-conversation-status", status_code=303)
async def change_status(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Close or reopen, then back to the conversation (303, so a reload does not post again)."""
    signed, form = await signed_form(request)
    status = form.get("status")
    if status not in (OPEN, CLOSED):
        raise NotFoundException("no such status", extra={"code": "bad_status"})
    if not await asyncio.to_thread(_write, request.app.state.engine, set_status, signed.caller.studio_id,
                                   conversation_id, str(status)):
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    return Redirect(f"/app/c/{conversation_id}", status_code=303)


@post("/app/c/{conversation_id:int}/unread", name="web-conversation-unread", status_code=303)
async def mark_unread(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Mark unread, then to the inbox: staying on the page would be opening it, which reads it."""
    signed, form = await signed_form(request)
    if not await asyncio.to_thread(_write, request.app.state.engine, mark_read, signed.caller.studio_id,
                                   conversation_id, utcnow(), read=False):
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    return Redirect("/app/", status_code=303)


@post("/app/c/{conversation_id:int}/delete", name="web-conversation-delete", status_code=303)
async def delete(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Into the trash (restorable for 30 days on a paid plan), then to the trash page."""
    signed, form = await signed_form(request)
    settings: Settings = request.app.state.settings
    caller = signed.caller
    deleted = await asyncio.to_thread(_write, request.app.state.engine, delete_conversation, caller.studio_id,
                                      conversation_id, caller.profile_id, utcnow(), log=deletion_log(settings))
    if deleted is None:
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    return Redirect("/app/trash", status_code=303)


@post("/app/m/{message_id:int}/delete", name="web-message-delete", status_code=303)
async def delete_one_message(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    """One message into the trash (as DELETE /api/v1/messages/{id}), then back to its
    conversation; restorable from the trash page for 30 days on a paid plan."""
    signed, form = await signed_form(request)
    settings: Settings = request.app.state.settings
    caller = signed.caller
    deleted = await asyncio.to_thread(_write, request.app.state.engine, delete_message, caller.studio_id,
                                      message_id, caller.profile_id, utcnow(), log=deletion_log(settings))
    if deleted is None:
        raise NotFoundException("no such message", extra={"code": "not_found"})
    return Redirect(f"/app/c/{deleted.conversation_id}", status_code=303)


@post("/app/c/{conversation_id:int}/reply", name="web-conversation-reply", status_code=303,
      request_max_body_size=DRAIN_MAX)
async def reply(request: Request[Any, Any, Any], conversation_id: FromPath[int]) -> Response[Any]:
    """Queue the reply (it shows at once as "queued"), or the page again with a form error and
    the typed text: too large or too many files (gateway/web/reply_upload.py), no text, the brake."""
    signed = await signed_in(request)
    if signed is None:
        return Redirect("/app/login", status_code=303)
    check_origin(request)
    settings: Settings = request.app.state.settings
    posted = await read_reply_post(request, settings)
    if posted is None:
        raise ClientException("the reply box sends a multipart form", extra={"code": "bad_form"})
    check_csrf(request, session_token(request, settings), posted.fields)
    text = posted.fields.get("text", "")
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    try:
        if posted.refused:
            raise ReplyTooLarge(posted.refused)
        check_text(text)
        uploads = check_uploads(posted.uploads, settings)
        found = await asyncio.to_thread(_queue, request.app.state.engine, settings, signed.caller.studio_id,
                                        conversation_id, text, uploads)
    except ReplyTooLarge:
        why = "too_many" if posted.refused == "too_many" else "too_large"
        return await _page(request, signed, conversation_id, Draft(text, _refusal(why, language)), 413)
    except ReplyError:
        return await _page(request, signed, conversation_id, Draft(text, _refusal("empty", language)), 400)
    except RepliesBraked:
        return await _page(request, signed, conversation_id, Draft(text, _refusal("braked", language)), 429)
    if not found:
        raise NotFoundException("no such conversation", extra={"code": "not_found"})
    wake = getattr(request.app.state, "wake_outbox", None)
    if wake is not None:
        wake()  # same process (gateway serve): send now rather than at the next poll
    return Redirect(f"/app/c/{conversation_id}#reply", status_code=303)


def _refusal(why: str, language: str) -> str:
    _ = translations(language).gettext
    return {"too_large": _("The attachments are too large. Nothing was sent; please send smaller files."),
            "too_many": _("Too many files at once. Nothing was sent; please send fewer files."),
            "empty": _("Please write a text. Nothing was sent."),
            "braked": _("Too many replies to this conversation in the last hour. Nothing was sent; "
                        "please try again later.")}[why]


def _queue(engine: Engine, settings: Settings, studio_id: int, conversation_id: int, text: str,
           uploads: list[Upload]) -> bool:
    with write_tx(engine) as conn:
        check_reply_brake(conn, studio_id=studio_id, conversation_id=conversation_id, now=utcnow(),
                          limit=settings.reply_max_per_conversation_per_hour)
        return create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=text,
                            settings=settings, uploads=uploads) is not None


def _write(engine: Engine, action: Any, *args: Any, **kwargs: Any) -> Any:
    """One domain action in its own write transaction, off the event loop."""
    with write_tx(engine) as conn:
        return action(conn, *args, **kwargs)


CONVERSATION_ROUTES = [conversation, change_status, mark_unread, delete, delete_one_message, reply]
