"""The start of every form of the conversation, trash and held pages: who is signed in, and the
posted form once its Origin and CSRF token passed (403 otherwise, gateway/web/security.py).

Without a live session the answer is the login page (303) and nothing is done; the session is
checked before the form is read, so a stale cookie never gets as far as a CSRF comparison.
"""
from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.response import Redirect

from gateway.access.web_sessions import SessionCaller
from gateway.web.login import checked_form
from gateway.web.session import session_token, signed_in


async def signed_form(request: Request[Any, Any, Any]) -> tuple[SessionCaller, dict[str, Any]] | tuple[None, Response[Any]]:
    """(who, the form), or (None, the redirect to the login page to answer with)."""
    signed = await signed_in(request)
    if signed is None:
        return None, Redirect("/app/login", status_code=303)
    return signed, await checked_form(request, session_token(request, request.app.state.settings))
