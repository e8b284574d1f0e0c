"""Signing in without a password: /app/login, the mailed link's page, and logout.

Thin handlers: gateway/access/web_sessions.py holds the rules (one-time links, sessions),
gateway/lifecycle/login_mail.py mails the link. Here: forms, cookies, CSRF and the brake.

- POST /app/login answers the same page for every address, whether a mail was queued or not,
  so the form tells nobody which addresses have profiles.
- Asking is rate-limited per address and per client address (gateway/access/ratelimit.py, in
  the database, shared by every web process): every request counts, since each one may send a
  mail. A blocked request gets 429 with Retry-After and sends nothing.
- GET of the link shows a button; only its POST uses the link up (mail scanners prefetch links).
"""
from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.exceptions import PermissionDeniedException
from litestar.response import Redirect
from sqlalchemy import Engine

from gateway.access.ratelimit import SharedFailureLimiter
from gateway.access.studios import StudioError, check_email
from gateway.access.web_sessions import LinkRefused, SessionCaller, check_link, consume_link, end_session
from gateway.lifecycle.login_mail import mail_login_links
from gateway.settings import Settings
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.web.security import CSRF_FIELD, PRESESSION_COOKIE, csrf_ok, csrf_token, new_presession, origin_ok
from gateway.web.session import clear_session, presession_cookie, session_cookie, session_token, signed_in
from gateway.web.templating import negotiate, render

# Sign-in mails one address may ask for, and one client address, per window (seconds).
PER_ADDRESS, PER_CLIENT, WINDOW = 5, 20, 900.0
REFUSALS = {"unknown": 404, "used": 410, "expired": 410}


def page(request: Request[Any, Any, Any], template: str, *, status: int = 200, language: str | None = None,
         cookies: list[Cookie] | None = None, **context: Any) -> Response[str]:
    """An HTML page in the request's language (the profile's choice when given)."""
    lang = language or negotiate(request.headers.get("accept-language", ""))
    return Response(render(template, lang, **context), status_code=status, media_type=MediaType.HTML,
                    cookies=cookies or [])


def _binding(request: Request[Any, Any, Any]) -> tuple[str, list[Cookie]]:
    """What the anonymous forms' CSRF token is bound to: the pre-session cookie, set if missing."""
    value = request.cookies.get(PRESESSION_COOKIE)
    if value:
        return value, []
    value = new_presession()
    return value, [presession_cookie(request, request.app.state.settings, value)]


async def checked_form(request: Request[Any, Any, Any], binding: str | None) -> dict[str, Any]:
    """The posted form, after the Origin and CSRF checks (403 when either fails)."""
    check_origin(request)
    form = dict(await request.form())
    check_csrf(request, binding, form)
    return form


def check_origin(request: Request[Any, Any, Any]) -> None:
    """403 for a form sent from another site (before its body is read)."""
    if not origin_ok(request, request.app.state.settings):
        raise PermissionDeniedException("this form was sent from another site", extra={"code": "bad_origin"})


def check_csrf(request: Request[Any, Any, Any], binding: str | None, form: dict[str, Any]) -> None:
    """403 unless the form carries the token of `binding` (the session, or the pre-session)."""
    sent = form.get(CSRF_FIELD)
    if not csrf_ok(request.app.state.settings.secret(), binding, sent if isinstance(sent, str) else None):
        raise PermissionDeniedException("the form's security token is missing or wrong; please reload the page",
                                        extra={"code": "csrf_failed"})


@get("/app/login", name="web-login")
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    if await signed_in(request) is not None:
        return Redirect("/app/", status_code=303)
    binding, cookies = _binding(request)
    return page(request, "login.html", cookies=cookies,
                csrf=csrf_token(request.app.state.settings.secret(), binding))


@post("/app/login", name="web-login-ask", status_code=200)
async def ask_for_link(request: Request[Any, Any, Any]) -> Response[str]:
    settings: Settings = request.app.state.settings
    form = await checked_form(request, request.cookies.get(PRESESSION_COOKIE))
    try:
        email = check_email(str(form.get("email", "")))
    except StudioError:
        binding, cookies = _binding(request)
        return page(request, "login.html", status=400, cookies=cookies, error=True,
                    csrf=csrf_token(settings.secret(), binding))
    client = request.client.host if request.client else "unknown"
    retry_after = await asyncio.to_thread(_brake, request, email, client)
    if retry_after is not None:
        response = page(request, "login_wait.html", status=429, minutes=max(1, -(-retry_after // 60)))
        response.headers["Retry-After"] = str(retry_after)
        return response
    await asyncio.to_thread(mail_login_links, request.app.state.engine, settings, email, utcnow())
    return page(request, "login_sent.html", email=email)


def _limiters(request: Request[Any, Any, Any]) -> tuple[SharedFailureLimiter, SharedFailureLimiter]:
    state = request.app.state
    if state.get("login_limiters") is None:  # two first requests racing make equal limiters: harmless
        engine: Engine = state.engine
        state.login_limiters = (SharedFailureLimiter(engine, "login_address", max_failures=PER_ADDRESS, window=WINDOW),
                                SharedFailureLimiter(engine, "login_client", max_failures=PER_CLIENT, window=WINDOW))
    return state.login_limiters  # type: ignore[no-any-return]


def _brake(request: Request[Any, Any, Any], email: str, client: str) -> int | None:
    """Seconds to wait when the address or the client asked too often; else counts this request.

    The limiter counts and blocks once the count reaches its maximum: the request that reaches it
    is still served, the next ones wait."""
    by_address, by_client = _limiters(request)
    waits = [w for w in (by_address.retry_after(email), by_client.retry_after(client)) if w is not None]
    if waits:
        return max(waits)
    by_address.failure(email)
    by_client.failure(client)
    return None


@get("/app/login/link", name="web-login-link")
async def link_page(request: Request[Any, Any, Any]) -> Response[str]:
    """The mailed link's page: a button that signs in, or a clear refusal. Uses nothing up."""
    token = request.query_params.get("token", "")
    try:
        await asyncio.to_thread(_check, request.app.state.engine, token)
    except LinkRefused as refused:
        return page(request, "link_refused.html", status=REFUSALS[refused.reason], reason=refused.reason)
    binding, cookies = _binding(request)
    return page(request, "link.html", cookies=cookies, token=token,
                csrf=csrf_token(request.app.state.settings.secret(), binding))


def _check(engine: Engine, token: str) -> None:
    with read_tx(engine) as conn:
        check_link(conn, token, utcnow())


@post("/app/login/link", name="web-login-consume", status_code=303)
async def sign_in(request: Request[Any, Any, Any]) -> Response[Any]:
    settings: Settings = request.app.state.settings
    form = await checked_form(request, request.cookies.get(PRESESSION_COOKIE))
    try:
        _, token = await asyncio.to_thread(_consume, request.app.state.engine, str(form.get("token", "")))
    except LinkRefused as refused:
        return page(request, "link_refused.html", status=REFUSALS[refused.reason], reason=refused.reason)
    response: Response[Any] = Redirect("/app/", status_code=303)
    response.set_cookie(session_cookie(request, settings, token))
    response.delete_cookie(PRESESSION_COOKIE, path="/app")
    return response


def _consume(engine: Engine, token: str) -> tuple[SessionCaller, str]:
    with write_tx(engine) as conn:
        return consume_link(conn, token, utcnow())


@post("/app/logout", name="web-logout", status_code=303)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    settings: Settings = request.app.state.settings
    signed = await signed_in(request)
    if signed is not None:
        await checked_form(request, session_token(request, settings))
        await asyncio.to_thread(_end, request.app.state.engine, signed.session_id)
    response: Response[Any] = Redirect("/app/login", status_code=303)
    clear_session(response, request, settings)
    return response


def _end(engine: Engine, session_id: int) -> None:
    with write_tx(engine) as conn:
        end_session(conn, session_id, utcnow())


LOGIN_ROUTES = [login_form, ask_for_link, link_page, sign_in, logout]
