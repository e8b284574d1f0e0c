"""/app/held: mail held for the studio's decision, and accepting or rejecting it.

A message is held when its sender is not a participant of the conversation it names (a
forwarded thread, a partner writing in, a forged In-Reply-To; gateway/inbox/actions.py). The
page lists them newest first with the start of their text, and each has two buttons: accept
(it joins its conversation, and its sender counts from then on) or reject (never shown again).
The same domain function as the API decides, scoped to the session's studio (another studio's
id is 404); a message decided meanwhile (another person in the studio, a double tap) is simply
shown as gone from the list. A profile's answer to a notification held by its sender check is
sent to the guest on accepting it, by that profile or the owner only
(gateway/outbound/notify_answers.py). Such an answer says why it is held (its thread_rule); one
that cannot be sent at all (nothing but the quoted notification, or too large) offers no
Accept, and an accept posted anyway gets the list again with the reason, the answer still held.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine, select

from gateway.access.web_sessions import SessionCaller
from gateway.access.studios import Caller
from gateway.inbox.actions import Decision, HeldMessage, NotHeld, decide_held, list_held
from gateway.outbound.notify_answers import Confirmed, NotYours, confirm_held_answer
from gateway.outbound.replies import ReplyError
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import STUDIO
from gateway.web.signed_forms import signed_form
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, signed_in, to_login
from gateway.web.templating import negotiate, short_time, translations

PAGE_SIZE = 50
EXCERPT = 300


# A notification answer's thread_rule that cannot be sent, whoever accepts it: the reply's own
# checks refused it (notify_answers.answer_by_mail records `notify_answer_<ReplyError code>`, cut
# to the column's 32 characters).
UNSENDABLE = ("notify_answer_reply_text", "notify_answer_attachment")


@dataclass(frozen=True)
class HeldRow:
    message: HeldMessage
    excerpt: str
    when: str
    when_iso: str
    why: str            # for a notification answer: why it is held ("" for other held mail)
    sendable: bool      # accepting can succeed (not an answer the reply's checks refuse)


@dataclass(frozen=True)
class Held:
    studio_name: str
    rows: list[HeldRow]
    next_cursor: str | None


@get("/app/held", name="web-held")
async def held(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await signed_in(request)
    if signed is None:
        return to_login(request)
    return await _page(request, signed)


async def _page(request: Request[Any, Any, Any], signed: SessionCaller, *, error: str = "",
                status: int = 200) -> Response[Any]:
    settings: Settings = request.app.state.settings
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    found = await asyncio.to_thread(_read, request.app.state.engine, signed, language,
                                    request.query_params.get("cursor") or None)
    return page(request, "held.html", status=status, language=language, held=found, error=error,
                csrf=csrf_token(settings.secret(), session_token(request, settings) or ""))


def _read(engine: Engine, signed: SessionCaller, language: str, cursor: str | None) -> Held:
    studio_id = signed.caller.studio_id
    with read_tx(engine) as conn:
        studio = conn.execute(select(STUDIO.c.name, STUDIO.c.time_zone).where(STUDIO.c.id == studio_id)).one()
        listed = list_held(conn, studio_id, limit=PAGE_SIZE, cursor=cursor)
    rows = [HeldRow(m, m.text[:EXCERPT], short_time(m.received_at, studio.time_zone, language),
                    m.received_at.isoformat(), why(m.thread_rule, language), not m.thread_rule.startswith(UNSENDABLE))
            for m in listed.items]
    return Held(studio.name, rows, listed.next_cursor)


def why(thread_rule: str, language: str) -> str:
    """Why a profile's answer to a notification is held, in words; "" for any other held mail
    (the page's introduction says why that is held)."""
    _ = translations(language).gettext
    if thread_rule.startswith("notify_answer_reply_text_empty"):
        return _("An answer by mail to a notification that holds nothing but the quoted notification: "
                 "there is nothing to send to the guest. Reject it, and answer in the conversation.")
    if thread_rule.startswith("notify_answer_reply_text"):
        return _("An answer by mail to a notification whose text cannot be sent to the guest (too long). "
                 "Reject it, and answer in the conversation.")
    if thread_rule.startswith("notify_answer_attachment"):
        return _("An answer by mail to a notification whose attachments are too large to send to the guest. "
                 "Reject it, and answer in the conversation with smaller files.")
    if thread_rule == "notify_answer_stranger":
        return _("An answer to a notification, but not from the address the notification went to. "
                 "Accepting sends it to the guest in the studio's name.")
    if thread_rule == "notify_answer_disconnected":
        return _("An answer to a notification from a person no longer connected to the studio. "
                 "Accepting sends it to the guest in the studio's name.")
    if thread_rule == "notify_answer_unauthenticated":
        return _("An answer to a notification that failed the sender check of its address's domain (SPF, DMARC). "
                 "Accepting sends it to the guest in the studio's name.")
    return ""


@post("/app/held/{message_id:int}", name="web-held-decide", status_code=303)
async def decide(request: Request[Any, Any, Any], message_id: FromPath[int]) -> Response[Any]:
    """Accept (then to its conversation) or reject (then back to the list)."""
    signed, form = await signed_form(request)
    decision = form.get("decision")
    if decision not in ("accept", "reject"):
        raise NotFoundException("no such decision", extra={"code": "bad_decision"})
    try:
        decided = await asyncio.to_thread(_decide, request.app.state.engine, request.app.state.settings,
                                          signed.caller, message_id, decision == "accept")
    except NotHeld:
        return Redirect("/app/held", status_code=303)  # decided meanwhile
    except ReplyError:  # an answer the reply's checks refuse: the list again, saying so; it stays held
        language = negotiate(request.headers.get("accept-language", ""), signed.locale)
        return await _page(request, signed, status=400, error=translations(language).gettext(
            "This answer cannot be sent to the guest; it is still held. Reject it, and answer in the conversation."))
    except NotYours as exc:
        raise PermissionDeniedException(str(exc), extra={"code": "not_your_answer"}) from None
    if decided is None:
        raise NotFoundException("no such message", extra={"code": "not_found"})
    if decided.state == "sent" and (wake := getattr(request.app.state, "wake_outbox", None)) is not None:
        wake()  # same process (gateway serve): send now rather than at the next poll
    if decision == "accept":
        return Redirect(f"/app/c/{decided.conversation_id}", status_code=303)
    return Redirect("/app/held", status_code=303)


def _decide(engine: Engine, settings: Settings, caller: Caller, message_id: int,
            accept: bool) -> Decision | Confirmed | None:
    """A profile's held answer to a notification is sent on accepting it
    (gateway/outbound/notify_answers.py); any other held mail joins its conversation."""
    with write_tx(engine) as conn:
        sent = confirm_held_answer(conn, settings, caller, message_id) if accept else None
        return sent or decide_held(conn, caller.studio_id, message_id, accept=accept)


HELD_ROUTES = [held, decide]
