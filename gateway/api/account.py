"""Account deletion over HTTP: the owner asks, the code from the mail deletes.

Thin handlers over gateway/lifecycle/account_deletion.py, which explains the two steps. The confirmation
needs no bearer token (an owner who wants to leave may have lost it): the code is the proof.
Wrong codes are counted per client address like wrong tokens (gateway/access/ratelimit.py, a budget
of its own), so guessing gets 429 long before it could matter for an 80-bit code.

The mail's link opens a small page (GET) whose button posts the code (POST): a GET never
deletes, because mail scanners and link previews open links by themselves. The page may not be
framed (a hidden frame must not trick anyone into the click), sends no referrer (its address
holds the code) and is not cached.

Hooks the application reads from `app.state`: `cancel_subscription_for_deletion(studio_id)`
(billing wires it; default: nothing to cancel) and `clock` (tests move time; default utcnow).
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Callable

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import (HTTPException, NotFoundException, PermissionDeniedException,
                                 ServiceUnavailableException, TooManyRequestsException)
from litestar.params import FromQuery, JSONBody, URLEncodedBody
from litestar.status_codes import HTTP_410_GONE
from markupsafe import escape

from gateway.lifecycle.account_deletion import (CONFIRMATION_PATH, CancelSubscription, CodeExpired, CodeUsed, NotAllowed, TooManyRequests, UnknownCode, confirm_deletion, no_subscription_to_cancel, request_by_owner)
from gateway.api.auth import auth_limiter
from gateway.api.created import LOCATION, accepted
from gateway.api.manage import ConflictException
from gateway.store.models import utcnow
from gateway.access.studios import Caller

log = logging.getLogger(__name__)

class DeletionRequestIn(msgspec.Struct):
    reason: Annotated[str, msgspec.Meta(max_length=10_000)] = ""   # optional; kept without personal data


class DeletionRequestedOut(msgspec.Struct):
    status: str              # confirmation_sent
    sent_to: str             # the owner's registered address, where the code went
    expires_at: datetime


class DeletionConfirmIn(msgspec.Struct):
    code: Annotated[str, msgspec.Meta(max_length=64)]


class DeletionConfirmedOut(msgspec.Struct):
    status: str              # deleted


class GoneException(HTTPException):
    status_code = HTTP_410_GONE


class ConfirmationError(Exception):
    """A refused confirmation as the HTTP status and words to answer with."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


NO_STORE = {"Cache-Control": "no-store"}
PAGE_HEADERS = {**NO_STORE, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                           "frame-ancestors 'none'"}
LIMITER = "deletion_code_limiter"


class AccountDeletionController(Controller):
    path = "/api/v1/account/deletion"

    @post("/", sync_to_thread=True, status_code=202, response_headers=[LOCATION],
          raises=[ConflictException, PermissionDeniedException, TooManyRequestsException])
    def ask(self, state: State, caller: NamedDependency[Caller],
            data: JSONBody[DeletionRequestIn | None] = None) -> Response[DeletionRequestedOut]:
        """Owner only: mail a confirmation code (valid 48 hours, once) to the owner's registered
        address. Nothing is deleted before the code is confirmed. 429 after three requests a day.
        `Location` is where the code is confirmed (POST .../confirm)."""
        if caller.role != "owner":
            raise PermissionDeniedException("only the studio's owner can delete its account")
        try:
            requested = request_by_owner(state.engine, state.settings, studio_id=caller.studio_id,
                                         reason=data.reason if data else "", now=_clock(state)())
        except NotAllowed as exc:
            raise ConflictException(str(exc)) from None
        except TooManyRequests as exc:
            raise TooManyRequestsException(str(exc)) from None
        wake = getattr(state, "wake_outbox", None)
        if wake is not None:
            wake()  # same process (gateway serve): send now rather than at the next poll
        return accepted(DeletionRequestedOut(status="confirmation_sent", sent_to=requested.sent_to,
                                             expires_at=requested.expires_at), f"{self.path}/confirm")

    @post("/confirm", sync_to_thread=True, status_code=200, response_headers=NO_STORE,
          raises=[NotFoundException, ConflictException, GoneException, TooManyRequestsException,
                  ServiceUnavailableException])
    def confirm(self, request: Request, state: State, data: JSONBody[DeletionConfirmIn]) -> DeletionConfirmedOut:
        """No token needed: the code from the mail deletes the studio's account irrevocably.
        404 unknown code, 409 used, 410 expired (ask again), 503 billing could not cancel the
        subscription (nothing was deleted; try again)."""
        try:
            _confirm(request, state, data.code)
        except ConfirmationError as exc:
            raise _http_error(exc) from None
        return DeletionConfirmedOut(status="deleted")


# The page and its form are for a person's browser, not for API clients: out of the OpenAPI
# document (a generated client has no use for HTML), described in docs/api.md instead.
@get(CONFIRMATION_PATH, sync_to_thread=False, media_type="text/html", include_in_schema=False)
def confirmation_page(code: FromQuery[str] = "") -> Response[str]:
    """The page the mail links to: the code in a form, and a button that posts it."""
    return _page(200, "Konto löschen · Delete account", f"""
<p>Mit diesem Code wird das Konto mit allen Daten <strong>unwiderruflich</strong> gelöscht.<br>
This code deletes the account with all its data <strong>irrevocably</strong>.</p>
<form method="post" action="{CONFIRMATION_PATH}">
<input name="code" value="{escape(code[:64])}" size="24" autocomplete="off" required>
<button type="submit">Endgültig löschen · Delete for good</button>
</form>""")


class ConfirmForm(msgspec.Struct):
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""


@post(CONFIRMATION_PATH, sync_to_thread=True, media_type="text/html", status_code=200, include_in_schema=False)
def confirmation_form(request: Request, state: State, data: URLEncodedBody[ConfirmForm]) -> Response[str]:
    """The page's button: the outcome as a page."""
    try:
        _confirm(request, state, data.code)
    except ConfirmationError as exc:
        return _page(exc.status, "Nicht gelöscht · Not deleted", f"<p>{escape(str(exc))}</p>", exc.headers)
    return _page(200, "Gelöscht · Deleted", "<p>Das Konto und alle seine Daten sind gelöscht.<br>"
                                            "The account and all its data have been deleted.</p>")


def _confirm(request: Request, state: State, code: str) -> None:
    """Confirm with the per-address brake on wrong codes; refusals as ConfirmationError."""
    limiter = auth_limiter(request.app, LIMITER)
    address = request.client.host if request.client else "unknown"
    retry_after = limiter.retry_after(address)
    if retry_after is not None:
        raise ConfirmationError(429, f"too many wrong codes from this address; retry in {retry_after} s",
                                {"Retry-After": str(retry_after)})
    hook: CancelSubscription = state.get("cancel_subscription_for_deletion") or no_subscription_to_cancel
    try:
        confirm_deletion(state.engine, state.settings, code, now=_clock(state)(), cancel_subscription=hook)
    except UnknownCode as exc:
        limiter.failure(address)
        raise ConfirmationError(404, str(exc)) from None
    except CodeUsed as exc:
        raise ConfirmationError(409, str(exc)) from None
    except CodeExpired as exc:
        raise ConfirmationError(410, str(exc)) from None
    except Exception as exc:  # the billing hook or the database: nothing was deleted, the code stays valid
        log.exception("account deletion failed before anything was deleted")
        raise ConfirmationError(503, "the deletion could not be carried out now; nothing was deleted, "
                                     "please try again later") from exc


def _http_error(exc: ConfirmationError) -> HTTPException:
    kinds: dict[int, type[HTTPException]] = {404: NotFoundException, 409: ConflictException, 410: GoneException,
                                             429: TooManyRequestsException, 503: ServiceUnavailableException}
    return kinds[exc.status](str(exc), headers=exc.headers or None)


def _clock(state: State) -> Callable[[], datetime]:
    return state.get("clock") or utcnow


def _page(status: int, title: str, body: str, headers: dict[str, str] | None = None) -> Response[str]:
    html = f"""<!doctype html>
<html lang="de"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{title}</title>
<style>body{{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;max-width:36rem;margin:3rem auto;
padding:0 1rem;color:#2b2a28;line-height:1.6}}input,button{{font:inherit;padding:.4rem .6rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
    return Response(html, status_code=status, media_type="text/html", headers={**PAGE_HEADERS, **(headers or {})})
