"""The start of every form behind sign-in: who is signed in, and the posted form once its Origin
and CSRF token passed (403 otherwise, gateway/web/security.py); for an owner's form, the owner.

Without a live session `signed_form` raises SignInFirst, which the pages' router answers with
the login page (gateway/web/pages.py, session.to_login: 303, a stale cookie dropped) and nothing
is done; the session is checked before the form is read, so a stale cookie never gets as far as
a CSRF comparison. One helper for every page's forms, so no handler repeats the preamble.
"""
from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import PermissionDeniedException

from gateway.access.web_sessions import SessionCaller
from gateway.web.login import checked_form
from gateway.web.session import session_token, signed_in


class SignInFirst(Exception):
    """A form posted without a live session: answered with the login page (gateway/web/pages.py)."""


def owner_only(signed: SessionCaller) -> None:
    """The 403 page for a member on an owner's page or form (the API answers 403 too)."""
    if signed.caller.role != "owner":
        raise PermissionDeniedException("only the studio's owner can open this page", extra={"code": "owner_only"})


async def signed_form(request: Request[Any, Any, Any], *, owner: bool = False) -> tuple[SessionCaller, dict[str, Any]]:
    """(who, the form); SignInFirst without a session; with `owner`, the 403 page for a member."""
    signed = await signed_in(request)
    if signed is None:
        raise SignInFirst()
    form = await checked_form(request, session_token(request, request.app.state.settings))
    if owner:
        owner_only(signed)
    return signed, form
