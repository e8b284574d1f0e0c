"""The session cookie of the pages: which one we set, and who a request is signed in as.

Over https the cookie is `__Host-gw_session` with `Secure` (the prefix makes browsers refuse
one set by a subdomain or without `Secure`, and pins it to `/`); on plain http, for local use,
it is `gw_session` without the prefix, since browsers refuse `__Host-` without `Secure`. Always
HttpOnly (no script reads it) and SameSite=Lax (sent on following a link to us, not on a
cross-site POST). It is kept for COOKIE_DAYS (the most browsers keep one), longer than any
session lasts: the server decides (14 idle days, gateway/access/web_sessions.py), and the
lookup runs on every request, so a logout, a disconnected member or a deleted account ends
access at once.
"""
from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect
from sqlalchemy import Engine

from gateway.access.web_sessions import PLAIN_COOKIE, SECURE_COOKIE, SessionCaller, session_caller, touch
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.web.security import PRESESSION_COOKIE, https

COOKIE_DAYS = 400


def cookie_name(request: Request[Any, Any, Any], settings: Settings) -> str:
    return SECURE_COOKIE if https(request, settings) else PLAIN_COOKIE


def session_cookie(request: Request[Any, Any, Any], settings: Settings, token: str) -> Cookie:
    secure = https(request, settings)
    return Cookie(key=SECURE_COOKIE if secure else PLAIN_COOKIE, value=token, path="/", secure=secure,
                  httponly=True, samesite="lax", max_age=COOKIE_DAYS * 86400)


def presession_cookie(request: Request[Any, Any, Any], settings: Settings, value: str) -> Cookie:
    """The pre-sign-in CSRF binding (gateway/web/security.py): short-lived, scoped to /app/."""
    return Cookie(key=PRESESSION_COOKIE, value=value, path="/app", secure=https(request, settings), httponly=True,
                  samesite="lax", max_age=3600)


def clear_session(response: Response[Any], request: Request[Any, Any, Any], settings: Settings) -> None:
    response.delete_cookie(cookie_name(request, settings), path="/")


def to_login(request: Request[Any, Any, Any]) -> Response[Any]:
    """Where a page without a live session goes: the login page, a stale cookie dropped."""
    response: Response[Any] = Redirect("/app/login", status_code=303)
    settings: Settings = request.app.state.settings
    if session_token(request, settings):
        clear_session(response, request, settings)
    return response


def session_token(request: Request[Any, Any, Any], settings: Settings) -> str | None:
    return request.cookies.get(cookie_name(request, settings))


async def signed_in(request: Request[Any, Any, Any]) -> SessionCaller | None:
    """Who the request is signed in as, or None (no cookie, or a session that is over)."""
    settings: Settings = request.app.state.settings
    token = session_token(request, settings)
    if not token:
        return None
    return await asyncio.to_thread(lookup, request.app.state.engine, token)


def lookup(engine: Engine, token: str) -> SessionCaller | None:
    """`signed_in` for code already off the loop: a page that reads does both in one thread hop."""
    now = utcnow()
    with read_tx(engine) as conn:
        found, due = session_caller(conn, token, now)
    if found is not None and due:
        with write_tx(engine) as conn:
            touch(conn, found.session_id, now)
    return found
