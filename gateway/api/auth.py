"""Bearer-token authentication: every API query is scoped to the caller's studio.

Failed attempts are braked per client address and per token prefix (policy in
gateway/access/ratelimit.py): once either is blocked, a wrong token gets 429 with
`Retry-After`. A valid token is never refused by the brake: it is checked first, so a guesser
behind the owner's office NAT no longer locks the owner out. The client address is uvicorn's,
which honours `X-Forwarded-For` only from the proxies in `FORWARDED_ALLOW_IPS` (default:
localhost); behind any other proxy all clients share its address and so its budget.

Support tokens (gws_) act for the studio named in `X-Support-Studio`, with a reason in
`X-Support-Reason`, only on the read routes marked `opt=support_read(...)` and only while
the studio's owner has granted access (gateway/access/support.py); each such request is audited
once it has passed validation and has its answer, before the answer is sent (a refused one as
"<action>.rejected"). Everything else is 403 for support, without looking at the studio.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, NoReturn

from litestar import Litestar, Request
from litestar.exceptions import (
    ClientException, NotAuthorizedException, PermissionDeniedException, TooManyRequestsException)
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from gateway.store.db import is_sqlite, make_engine, read_tx, write_tx
from gateway.store.models import utcnow
from gateway.access.ratelimit import FailureLimiter, SharedFailureLimiter, guess_keys
from gateway.access.studios import SUPPORT_ROLE, Caller, StudioError, authenticate
from gateway.access.support import SUPPORT_TOKEN_PREFIX, SupportDenied, authenticate_support, check_read, record_read
from gateway.access.web_sessions import cookie_name_for, session_caller

log = logging.getLogger(__name__)
CHALLENGE = {"WWW-Authenticate": "Bearer"}
SUPPORT_STUDIO, SUPPORT_REASON = "X-Support-Studio", "X-Support-Reason"
_SUPPORT_READ = "support_read"
_SESSION_READ = "session_read"


def session_read() -> dict[str, Any]:
    """Handler `opt` that lets the pages' session cookie stand in for a bearer token, on GET
    routes only (the event stream): a cookie rides along with cross-site requests, so a route
    that changes anything would need the pages' CSRF check, which the API does not do."""
    return {_SESSION_READ: True}


def support_read(action: str, target: str) -> dict[str, Any]:
    """Handler `opt` that opens a read route to support: the audit action, and the target
    with the route's path parameters filled in ("conversation {conversation_id}")."""
    return {_SUPPORT_READ: (action, target)}


def require_owner(caller: Caller, doing: str) -> None:
    """403 unless the caller is the studio's owner; `doing` completes "only the owner can ..."."""
    if caller.role != "owner":
        raise PermissionDeniedException(f"only the studio's owner can {doing}")


_limiter_guard = threading.Lock()


def auth_limiter(app: Litestar, name: str = "auth_limiter") -> FailureLimiter:
    """The app's limiter `app.state.<name>` (created on first use unless set before); other
    secrets guessed over the API (account-deletion codes) keep budgets of their own. The one
    created here counts in the database, shared by every process (gateway/access/ratelimit.py)."""
    limiter = app.state.get(name)
    if limiter is None:
        with _limiter_guard:  # handlers run in threads: two first requests must share one limiter
            limiter = app.state.get(name)
            if limiter is None:
                limiter = SharedFailureLimiter(app.state.engine, name.removesuffix("_limiter"))
                setattr(app.state, name, limiter)
    return limiter


async def blocked_for(app: Litestar, limiter: FailureLimiter, address: str) -> int | None:
    """limiter.retry_after without stalling the loop: a shared limiter reads the database, on
    the loop's own SQLite reader where there is one (as the token lookup does), else in a thread."""
    if not isinstance(limiter, SharedFailureLimiter):
        return limiter.retry_after(address)
    reader: Engine | None = app.state.get("loop_reader")
    if reader is not None:
        try:
            with reader.connect() as conn:
                return limiter.retry_after(address, conn)
        except OperationalError:
            pass  # locked for a moment: wait for it off the loop
    return await asyncio.to_thread(limiter.retry_after, address)


async def count_failure(limiter: FailureLimiter, address: str) -> None:
    if isinstance(limiter, SharedFailureLimiter):
        await asyncio.to_thread(limiter.failure, address)
    else:
        limiter.failure(address)


async def provide_caller(request: Request) -> AsyncGenerator[Caller, None]:
    """The caller. A support read is audited once it has its answer, before that is sent.

    Litestar resolves dependencies before it validates query parameters, so auditing while
    resolving wrote "conversation.read" for requests then refused with 400 (a bad `limit`) and
    for ids that were not there (404). The code after `yield` runs once the handler has
    returned and its response is built, but before it is sent: if the entry cannot be written,
    the request fails and nothing is sent, so there is still no read without its entry. A
    request refused after the grant check is written down too, as "<action>.rejected", so the
    owner sees every attempt; that entry is best-effort (nothing was read)."""
    caller, read = await _caller(request)
    if read is None:
        yield caller
        return
    engine: Engine = request.app.state.engine
    try:
        yield caller
    except Exception:
        try:
            await asyncio.to_thread(_record, engine, caller.studio_id, read, f"{read.action}.rejected")
        except Exception:  # the refusal stands; its entry is a courtesy
            log.exception("could not audit a refused support request")
        raise
    await asyncio.to_thread(_record, engine, caller.studio_id, read, read.action)


async def _caller(request: Request) -> tuple[Caller, _PendingRead | None]:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        cookie = _session_cookie(request)
        if cookie is not None:  # a page's session: valid or 401, never counted (256 random bits)
            caller = await asyncio.to_thread(_session, request.app.state.engine, cookie)
            if caller is None:
                raise NotAuthorizedException("the session is over; sign in again", headers=CHALLENGE)
            return caller, None
        raise NotAuthorizedException("missing bearer token", headers=CHALLENGE)  # not counted: nothing guessed
    engine: Engine = request.app.state.engine
    token = token.strip()
    if token.startswith(SUPPORT_TOKEN_PREFIX):
        found = await asyncio.to_thread(_support_caller, request, engine, token)
    else:
        caller = await _token_caller(request.app, engine, token)
        found = None if caller is None else (caller, None)
    if found is None:
        await _refuse_guess(request, token)
    return found


async def _refuse_guess(request: Request, token: str) -> NoReturn:
    """A wrong token: 429 while its address or its prefix is blocked (not counted: nothing was
    learnt from it), else counted against both and 401."""
    limiter = auth_limiter(request.app)
    keys = guess_keys(request.client.host if request.client else "unknown", token)
    waits = [wait for key in keys if (wait := await blocked_for(request.app, limiter, key)) is not None]
    if waits:
        retry_after = max(waits)
        raise TooManyRequestsException(
            f"too many failed authentication attempts; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)})
    for key in keys:
        await count_failure(limiter, key)
    raise NotAuthorizedException("invalid or revoked token", headers=CHALLENGE)


async def recheck_caller(request: Request, caller: Caller) -> bool:
    """Whether the credential that made `caller` still makes the same caller: for responses that
    outlive their request (the event stream, api/events.py), which close once their token is
    revoked, their member disconnected or their studio deleted. Only a studio profile's
    credential is rechecked here (support never reaches a stream); a web session, when the
    pages' session is looked up again too, so a logout ends its stream at the next heartbeat.
    Not rate-limited: nothing is guessed."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        cookie = _session_cookie(request)
        found = None if cookie is None else await asyncio.to_thread(_session, request.app.state.engine, cookie)
    elif token.strip().startswith(SUPPORT_TOKEN_PREFIX):
        return False
    else:
        found = await _token_caller(request.app, request.app.state.engine, token.strip())
    return found is not None and (found.studio_id, found.profile_id) == (caller.studio_id, caller.profile_id)


@dataclass(frozen=True)
class _PendingRead:
    actor: str
    action: str
    target: str
    reason: str


def _session_cookie(request: Request) -> str | None:
    """The pages' session cookie, on the routes that accept it (`session_read`). The cookie's
    name follows the scheme (gateway/web/session.py): `__Host-` over https, the plain one on
    http; over https a plain one is ignored, since a sibling subdomain could have set it."""
    if not request.route_handler.opt.get(_SESSION_READ) or request.method != "GET":
        return None
    name = cookie_name_for(request.app.state.settings.public_url, request.url.scheme)
    return request.cookies.get(name) or None


def _session(engine: Engine, token: str) -> Caller | None:
    with read_tx(engine) as conn:
        found, _ = session_caller(conn, token, utcnow())
    return None if found is None else found.caller


def _record(engine: Engine, studio_id: int, read: _PendingRead, action: str) -> None:
    with write_tx(engine) as conn:
        record_read(conn, studio_id, actor=read.actor, action=action, target=read.target, reason=read.reason,
                    now=utcnow())


def loop_reader(engine: Engine) -> Engine | None:
    """SQLite: a small engine for the token lookup on the event loop, which never waits for a
    lock (busy_timeout 0). None on PostgreSQL, where a lookup is a network round trip.

    Every API request looks its token up. In a thread, twenty concurrent requests handed the
    GIL back and forth for a one-row indexed read that SQLite answers in microseconds
    (bench/outbound.py); a WAL reader waits only while another connection recovers the log
    after a crash, and then the lookup goes to a thread instead of stalling the loop."""
    if not is_sqlite(engine):
        return None
    return make_engine(str(engine.url), busy_timeout=0, pool_size=2)


async def _token_caller(app: Litestar, engine: Engine, token: str) -> Caller | None:
    reader: Engine | None = app.state.get("loop_reader")
    if reader is not None:
        try:
            with reader.connect() as conn:
                return authenticate(conn, token)
        except OperationalError:
            pass  # locked for a moment: wait for it off the loop
    return await asyncio.to_thread(_authenticate, engine, token)


def _authenticate(engine: Engine, token: str) -> Caller | None:
    with read_tx(engine) as conn:
        return authenticate(conn, token)


def _support_caller(request: Request, engine: Engine, token: str) -> tuple[Caller, _PendingRead] | None:
    """The support operator's caller, or None for a token that is not one (a failed guess)."""
    with read_tx(engine) as conn:
        operator = authenticate_support(conn, token)
    if operator is None:
        return None
    read = request.route_handler.opt.get(_SUPPORT_READ)
    if read is None:
        raise PermissionDeniedException("support access is read-only: conversations, held messages and "
                                        "attachments, under the studio owner's grant")
    slug, reason = request.headers.get(SUPPORT_STUDIO, ""), request.headers.get(SUPPORT_REASON, "")
    if not slug.strip():
        raise ClientException(f"support requests name the studio in {SUPPORT_STUDIO} and why in {SUPPORT_REASON}")
    action, target = read
    try:
        with read_tx(engine) as conn:
            studio_id = check_read(conn, slug, reason=reason, now=utcnow())
    except SupportDenied as exc:
        raise PermissionDeniedException(str(exc)) from None
    except StudioError as exc:
        raise ClientException(f"{SUPPORT_REASON}: {exc}") from None
    return (Caller(studio_id=studio_id, profile_id=0, role=SUPPORT_ROLE),
            _PendingRead(actor=f"support:{operator.name}", action=action,
                         target=_target(target, request.path_params), reason=reason))


def _target(template: str, path_params: dict[str, Any]) -> str:
    """"conversation 12": path ids arrive as text (api/ids.py), so a refused one may be long."""
    return template.format(**{name: str(value)[:24] for name, value in path_params.items()})
