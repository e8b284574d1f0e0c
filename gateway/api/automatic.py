"""Automatic mail of the caller's studio that opened no conversation (gateway/inbox/automatic.py)."""
from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from gateway.access.studios import Caller
from gateway.api.auth import support_read
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.inbox.automatic import AutomaticList, list_automatic
from gateway.store.db import read_tx


class AutomaticController(Controller):
    path = "/api/v1/automatic"

    @get("/", sync_to_thread=True, opt=support_read("automatic.list", "automatic mail"))
    def list_automatic(
        self, state: State, caller: NamedDependency[Caller],
        limit: Limit = DEFAULT_LIMIT,
        kind: Annotated[str | None, QueryParameter(pattern="^(bounce|auto-reply|bulk|list|auto-generated)$")] = None,
        cursor: Cursor = None,
    ) -> AutomaticList:
        """Bounces, auto-replies, list and bulk mail that opened no conversation, newest first;
        `next_cursor` fetches the page after this one."""
        with cursor_checked(), read_tx(state.engine) as conn:
            return list_automatic(conn, caller.studio_id, limit=limit, kind=kind, cursor=cursor)
