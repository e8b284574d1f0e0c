"""API tokens of the caller's studio: list, create (shown once), revoke.

The owner sees and revokes all of the studio's tokens, a member only their own; anything else
is 404, never 403 (gateway/access/studios.py holds the rules). Answers carry the stored prefix only:
the token itself appears once, in the answer that creates it.
"""
from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from gateway.api.ids import RowId
from gateway.api.created import LOCATION, created
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.api.idempotency import Idempotent, shown_once
from gateway.store.db import read_tx, write_tx
from gateway.access.studios import Caller, create_own_token, list_tokens, revoke_token


class TokenOut(msgspec.Struct):
    id: int
    prefix: str
    profile_id: int
    created_at: datetime
    revoked_at: datetime | None
    current: bool  # the token this request came with


class TokenList(msgspec.Struct):
    items: list[TokenOut]
    next_cursor: str | None = None


class NewTokenOut(msgspec.Struct):
    id: int
    prefix: str
    token: str | None  # null only in an Idempotency-Key replay: the token was shown once already
    created_at: datetime


# The new token's only appearance must not stay in a cache on the way.
NO_STORE = [ResponseHeader(name="Cache-Control", value="no-store")]


class TokenController(Controller):
    path = "/api/v1/tokens"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
              cursor: Cursor = None) -> TokenList:
        """The studio's tokens for the owner, one's own for a member; revoked ones included;
        oldest first."""
        with cursor_checked(), read_tx(state.engine) as conn:
            tokens = list_tokens(conn, caller, limit=limit, cursor=cursor)
        return TokenList(items=[
            TokenOut(id=t.id, prefix=t.prefix, profile_id=t.profile_id, created_at=t.created_at,
                     revoked_at=t.revoked_at, current=t.id == caller.token_id) for t in tokens.items],
            next_cursor=tokens.next_cursor)

    @post("/", sync_to_thread=True, status_code=201, response_headers=[*NO_STORE, LOCATION], opt=shown_once("token"))
    def create(self, state: State, caller: NamedDependency[Caller], idempotent: Idempotent) -> Response[NewTokenOut]:
        """A new token for the caller's own profile; `token` is shown this once (a replay of the
        same Idempotency-Key answers the same token with `token: null`)."""
        with write_tx(state.engine) as conn:
            new = create_own_token(conn, caller)
        return created(NewTokenOut(id=new.id, prefix=new.prefix, token=new.token, created_at=new.created_at),
                       f"/api/v1/tokens/{new.id}")

    @delete("/{token_id:str}", sync_to_thread=True, status_code=204)
    def revoke(self, state: State, caller: NamedDependency[Caller], token_id: RowId) -> None:
        """Revoke at once (the next request with it is 401); revoking again is fine."""
        with write_tx(state.engine) as conn:
            found = revoke_token(conn, caller, token_id)
        if not found:
            raise NotFoundException("token not found")
