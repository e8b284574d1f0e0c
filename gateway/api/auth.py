"""Bearer-token authentication: every API query is scoped to the caller's studio."""
from __future__ import annotations

from litestar import Request
from litestar.exceptions import NotAuthorizedException
from sqlalchemy import Engine

from gateway.db import read_tx
from gateway.studios import Caller, authenticate


def provide_caller(request: Request) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    engine: Engine = request.app.state.engine
    with read_tx(engine) as conn:
        caller = authenticate(conn, token.strip())
    if caller is None:
        raise NotAuthorizedException("invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return caller
