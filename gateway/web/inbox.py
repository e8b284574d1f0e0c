"""/app/: the studio's inbox, newest activity first, behind sign-in; filters (open, closed,
unread), search and paging by the API's cursor, all in the query string (plain GET links and a
GET form: nothing changes state, so no CSRF token is needed).

Live (no script of ours, htmx-ext-sse only): the page listens to the studio's event
stream (`GET /api/v1/events` with the session cookie) from the last event it was read at, so
nothing between rendering and connecting is missed, and, on any event, re-fetches its list
as a fragment (`?part=rows`, the same query otherwise); a `reset` event (the stream could not
continue from the browser's last id) asks `?part=reload`, answered by `HX-Refresh`, and htmx
reloads the page.

Reads through the same functions as the API (gateway/inbox/reading.py), scoped to the session's
studio; a member sees what the API shows a member (the whole inbox). Support access has no
session, so it never reaches a page. Without a live session: the login page.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from litestar import Request, Response, get
from litestar.exceptions import ClientException
from sqlalchemy import Connection, Engine, bindparam, func, select

from gateway.access.web_sessions import SessionCaller, session_caller, touch
from gateway.inbox.reading import BadCursor, ConversationOut, list_conversations
from gateway.inbox.snippets import snippets
from gateway.store.db import read_soon, write_tx
from gateway.store.models import utcnow
from gateway.store.tables import PROFILE, STUDIO, STUDIO_EVENT_COUNTER
from gateway.web.login import page
from gateway.web.security import csrf_token
from gateway.web.session import session_token, to_login
from gateway.web.templating import RowTimes, negotiate

PAGE_SIZE = 50
FILTERS = ("all", "open", "closed", "unread")
MAX_QUERY = 200


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the list, flat: the template reads each field once, with no lookups through
    the conversation and its guest (50 rows' attribute lookups were a good part of the page)."""

    id: int
    unread: bool
    css: str            # "row", plus " unread" and " closed"
    guest: str          # the guest's name, else the address
    subject: str
    snippet: str
    when: str           # in the studio's time zone
    when_iso: str


def row(c: ConversationOut, snippet: str, when: RowTimes) -> Row:
    css = "row" + (" unread" if c.unread else "") + (" closed" if c.status == "closed" else "")
    return Row(c.id, c.unread, css, c.guest.name or c.guest.email, c.subject, snippet,
               when(c.last_message_at), c.last_message_at.isoformat())


@dataclass(frozen=True)
class View:
    """What the query string asks for."""

    show: str = "all"
    q: str = ""
    cursor: str | None = None


@dataclass(frozen=True)
class Inbox:
    studio_name: str
    profile_email: str
    rows: list[Row]
    view: View
    next_cursor: str | None
    event_id: int  # the studio's last event when the page was read: its live stream goes on from there


def view_of(request: Request[Any, Any, Any]) -> View:
    show = request.query_params.get("show", "all")
    q = " ".join(request.query_params.get("q", "").split())[:MAX_QUERY]
    return View(show=show if show in FILTERS else "all", q=q, cursor=request.query_params.get("cursor") or None)


@get("/app/", name="web-inbox")
async def inbox(request: Request[Any, Any, Any]) -> Response[Any]:
    state = request.app.state
    token = session_token(request, state.settings)
    now = utcnow()
    signed = found = None
    due = False
    try:  # the session and the page in one read (bench/web_inbox.py)
        if token:
            signed, due, found = await read_soon(
                state.engine, state.get("loop_reader"),
                partial(_signed_read, token=token, accept_language=request.headers.get("accept-language", ""),
                        view=view_of(request), now=now), snapshot=False)
    except BadCursor:
        raise ClientException("not a page of this inbox", extra={"code": "bad_cursor"}) from None
    if signed is None or found is None:  # never signed in, or a session that is over
        if request.query_params.get("part"):  # htmx asked for a piece: send the whole tab to sign-in
            return Response("", headers={"HX-Redirect": "/app/login"})
        return to_login(request)
    if due:
        await asyncio.to_thread(_touch, state.engine, signed.session_id, now)
    language = negotiate(request.headers.get("accept-language", ""), signed.locale)
    part = request.query_params.get("part")
    if part == "reload":  # htmx reloads the whole page on this header
        return Response("", headers={"HX-Refresh": "true"})
    if part == "rows":
        return page(request, "inbox_rows.html", language=language, inbox=found)
    csrf = csrf_token(state.settings.secret(), token or "")
    return page(request, "inbox.html", language=language, inbox=found, csrf=csrf)


def _signed_read(conn: Connection, *, token: str, accept_language: str, view: View,
                 now: datetime) -> tuple[SessionCaller | None, bool, Inbox | None]:
    """The session and the page on one connection, without a shared snapshot (store/db.read_now):
    each round trip to PostgreSQL was a good part of the page's time, and on SQLite the loop's
    reader answers without a thread's hand-offs (store/db.read_soon). With the session, whether
    its activity is due to be written."""
    signed, due = session_caller(conn, token, now)
    if signed is None:
        return None, False, None
    return signed, due, _read(conn, signed, negotiate(accept_language, signed.locale), view)


def _touch(engine: Engine, session_id: int, now: datetime) -> None:
    with write_tx(engine) as conn:
        touch(conn, session_id, now)


def _read(conn: Connection, signed: SessionCaller, language: str, view: View) -> Inbox:
    caller = signed.caller
    # First the event number, then the list (as the conversation page does): every event up to
    # it is committed (eventlog.py numbers without gaps), so the list shows it, and the stream,
    # opened from it, brings what came between rendering and connecting. One statement with the
    # studio's name and zone and the profile's address.
    head = conn.execute(_HEAD, {"studio_id": caller.studio_id, "profile_id": caller.profile_id}).one()
    listed = list_conversations(conn, caller.studio_id, limit=PAGE_SIZE,
                                status=view.show if view.show in ("open", "closed") else None,
                                unread=True if view.show == "unread" else None, q=view.q or None,
                                cursor=view.cursor)
    lines = snippets(conn, caller.studio_id, [c.id for c in listed.items])
    when = RowTimes(head.time_zone, language)
    rows = [row(c, lines.get(c.id, ""), when) for c in listed.items]
    return Inbox(head.name, head.email, rows, view, listed.next_cursor, head.seen)


_HEAD = (select(STUDIO.c.name, STUDIO.c.time_zone, PROFILE.c.email,
                func.coalesce(STUDIO_EVENT_COUNTER.c.seq, 0).label("seen"))
         .select_from(STUDIO.join(PROFILE, PROFILE.c.studio_id == STUDIO.c.id)
                      .outerjoin(STUDIO_EVENT_COUNTER, STUDIO_EVENT_COUNTER.c.studio_id == STUDIO.c.id))
         .where(STUDIO.c.id == bindparam("studio_id"), PROFILE.c.id == bindparam("profile_id")))
