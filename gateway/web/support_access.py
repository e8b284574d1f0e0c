"""/app/support: the owner grants and revokes support access, and reads the audit log.

The same domain functions as /api/v1/support-grants and /api/v1/audit (gateway/access/support.py,
gateway/access/audit.py), so granting from the page is audited as the API's is. Durations are
a fixed choice (1 hour to 7 days, the API's bounds). The log shows its newest AUDIT_SHOWN
entries; older ones page by the API's cursor. Times are in the studio's time zone, as everywhere
on the pages.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy import Engine

from gateway.access import audit
from gateway.access.studios import StudioError
from gateway.access.support import grant_access, list_grants, revoke_grant
from gateway.access.web_sessions import SessionCaller
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.store.paging import BadCursor
from gateway.web.login import page
from gateway.web.session import to_login
from gateway.web.audit_words import worded
from gateway.web.templating import long_time
from gateway.web.signed_forms import signed_form
from gateway.web.studio_pages import (
    owner_signed,
    read_studio,
    studio_context,
)

DURATIONS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "3d": timedelta(days=3), "7d": timedelta(days=7)}
GRANTS_SHOWN, AUDIT_SHOWN = 20, 50
MAX_NOTE = 500


def _read(engine: Engine, signed: SessionCaller, cursor: str | None, language: str) -> dict[str, Any]:
    studio_id, now = signed.caller.studio_id, utcnow()
    with read_tx(engine) as conn:
        grants = list_grants(conn, studio_id, now, limit=GRANTS_SHOWN)
        entries = audit.list_entries(conn, studio_id, limit=AUDIT_SHOWN, cursor=cursor)
    studio = read_studio(engine, signed)
    # Every time on the pages is the studio's (its settings' time zone), these too.
    return {"studio": studio, "grants": grants.items, "entries": worded(entries.items, language),
            "next_cursor": entries.next_cursor,
            "local": partial(long_time, time_zone=studio.time_zone, language=language)}


@get("/app/support", name="web-support")
async def support_page(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    context = studio_context(request, signed)
    try:
        found = await asyncio.to_thread(_read, request.app.state.engine, signed,
                                        request.query_params.get("cursor") or None, context["language"])
    except BadCursor:
        raise ClientException("not a page of this log", extra={"code": "bad_cursor"}) from None
    return page(request, "studio_support.html", **found, **context)


@post("/app/support", name="web-support-grant", status_code=303)
async def grant(request: Request[Any, Any, Any]) -> Response[Any]:
    signed, form = await signed_form(request, owner=True)
    duration = DURATIONS.get(str(form.get("duration", "")))
    note = str(form.get("note", ""))
    if duration is None or len(note) > MAX_NOTE:
        raise ClientException("choose how long support may read", extra={"code": "bad_grant"})
    try:
        await asyncio.to_thread(_grant, request.app.state.engine, signed, duration, note)
    except StudioError:
        raise ClientException("the note must be one line", extra={"code": "bad_grant"}) from None
    return Redirect("/app/support", status_code=303)


def _grant(engine: Engine, signed: SessionCaller, duration: timedelta, note: str) -> None:
    caller = signed.caller
    with write_tx(engine) as conn:
        grant_access(conn, caller.studio_id, caller.profile_id, audit.profile_actor(conn, caller), duration, note,
                     utcnow())


@post("/app/support/{grant_id:int}/revoke", name="web-support-revoke", status_code=303)
async def revoke(request: Request[Any, Any, Any], grant_id: FromPath[int]) -> Response[Any]:
    signed, _ = await signed_form(request, owner=True)
    if not await asyncio.to_thread(_revoke, request.app.state.engine, signed, grant_id):
        raise NotFoundException("no such grant", extra={"code": "not_found"})
    return Redirect("/app/support", status_code=303)


def _revoke(engine: Engine, signed: SessionCaller, grant_id: int) -> bool:
    caller = signed.caller
    with write_tx(engine) as conn:
        return revoke_grant(conn, caller.studio_id, grant_id, audit.profile_actor(conn, caller), utcnow()) is not None


SUPPORT_ROUTES = [support_page, grant, revoke]
