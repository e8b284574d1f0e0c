"""/app/account: the owner downloads the studio's data and asks to delete the account.

Both through the API's domain functions: `spool_export` (gateway/lifecycle/export.py, as
GET /api/v1/export) and `request_by_owner` (gateway/lifecycle/account_deletion.py, as POST
/api/v1/account/deletion): the page only asks, with an optional reason; nothing is deleted
until the owner confirms with the code mailed to the registered address (the mail's link opens
the confirmation page, /account/deletion/confirm). The download is a GET (nothing changes), so
it needs no CSRF token; a member gets the 403 page, as the API answers 403.
"""
from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Stream

from gateway.lifecycle.account_deletion import (
    NotAllowed,
    TooManyRequests,
    request_by_owner,
)
from gateway.lifecycle.deletion_reason import MAX_REASON
from gateway.lifecycle.export import spool_export
from gateway.store.models import utcnow
from gateway.web.login import page
from gateway.web.session import to_login
from gateway.web.signed_forms import signed_form
from gateway.web.studio_pages import (
    owner_signed,
    read_studio,
    studio_context,
)

REASON_FIELD_MAX = 10_000   # the API's bound; the stored reason is cut to MAX_REASON without personal data


@get("/app/account", name="web-account")
async def account_page(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    studio = await asyncio.to_thread(read_studio, request.app.state.engine, signed)
    return page(request, "studio_account.html", studio=studio, max_reason=MAX_REASON,
                **studio_context(request, signed))


@get("/app/account/export", name="web-export")
async def export(request: Request[Any, Any, Any]) -> Response[Any]:
    signed = await owner_signed(request)
    if signed is None:
        return to_login(request)
    state, now = request.app.state, utcnow()
    spooled = await asyncio.to_thread(spool_export, state.engine, signed.caller.studio_id, state.settings, now)
    if spooled is None:
        raise NotFoundException("no such studio", extra={"code": "not_found"})
    return Stream(spooled.chunks(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{spooled.filename(now)}"',
        "Content-Length": str(spooled.size)})


@post("/app/account/deletion", name="web-account-deletion", status_code=200)
async def ask_deletion(request: Request[Any, Any, Any]) -> Response[Any]:
    """Mail the confirmation code; the answer says where it went and until when it is valid."""
    signed, form = await signed_form(request, owner=True)
    state = request.app.state
    try:
        requested = await asyncio.to_thread(request_by_owner, state.engine, state.settings,
                                            studio_id=signed.caller.studio_id,
                                            reason=str(form.get("reason", ""))[:REASON_FIELD_MAX], now=utcnow())
    except NotAllowed as exc:
        raise HTTPException(str(exc), status_code=409, extra={"code": "deletion_not_allowed"}) from None
    except TooManyRequests as exc:
        raise HTTPException(str(exc), status_code=429, extra={"code": "too_many_requests"}) from None
    wake = getattr(state, "wake_outbox", None)
    if wake is not None:
        wake()  # same process (gateway serve): send now rather than at the next poll
    studio = await asyncio.to_thread(read_studio, state.engine, signed)
    return page(request, "studio_deletion_sent.html", studio=studio, sent_to=requested.sent_to,
                expires_at=requested.expires_at, **studio_context(request, signed))


ACCOUNT_ROUTES = [account_page, export, ask_deletion]
