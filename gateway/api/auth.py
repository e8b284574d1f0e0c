"""Bearer-token authentication: every API query is scoped to the caller's studio.

Failed attempts are rate-limited per client address (policy in gateway/ratelimit.py): a
blocked address gets 429 with `Retry-After` for every request that needs a caller, before
its token is checked. The client address is uvicorn's, which honours `X-Forwarded-For` only
from the proxies in `FORWARDED_ALLOW_IPS` (default: localhost); behind any other proxy all
clients share its address and so its budget.
"""
from __future__ import annotations

import threading

from litestar import Litestar, Request
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from sqlalchemy import Engine

from gateway.db import read_tx
from gateway.ratelimit import AuthFailureLimiter
from gateway.studios import Caller, authenticate

CHALLENGE = {"WWW-Authenticate": "Bearer"}
_limiter_guard = threading.Lock()


def auth_limiter(app: Litestar, name: str = "auth_limiter") -> AuthFailureLimiter:
    """The app's limiter `app.state.<name>` (created on first use unless set before); other
    secrets guessed over the API (account-deletion codes) keep budgets of their own."""
    limiter = app.state.get(name)
    if limiter is None:
        with _limiter_guard:  # handlers run in threads: two first requests must share one limiter
            limiter = app.state.get(name)
            if limiter is None:
                limiter = AuthFailureLimiter()
                setattr(app.state, name, limiter)
    return limiter


def provide_caller(request: Request) -> Caller:
    limiter = auth_limiter(request.app)
    address = request.client.host if request.client else "unknown"
    retry_after = limiter.retry_after(address)
    if retry_after is not None:
        raise TooManyRequestsException(
            f"too many failed authentication attempts from this address; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)})
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing bearer token", headers=CHALLENGE)  # not counted: nothing guessed
    engine: Engine = request.app.state.engine
    with read_tx(engine) as conn:
        caller = authenticate(conn, token.strip())
    if caller is None:
        limiter.failure(address)
        raise NotAuthorizedException("invalid or revoked token", headers=CHALLENGE)
    return caller
