"""The studio's audit log for its owner: who read or changed access, newest first.
Read-only: the log has no route that changes it (gateway/access/audit.py)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ClientException
from litestar.params import QueryParameter

from gateway.api.auth import require_owner
from gateway.access.audit import list_entries
from gateway.store.db import read_tx
from gateway.access.studios import Caller


class AuditOut(msgspec.Struct):
    id: int
    at: datetime
    actor: str                          # owner:<email>, support:<name>, operator:<name>
    action: str                         # conversation.read, support_grant.create, ...
    target: str                         # conversation 12, attachment 7, ...
    reason: str


class AuditList(msgspec.Struct):
    items: list[AuditOut]
    next_cursor: str | None = None


class AuditController(Controller):
    path = "/api/v1/audit"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller],
              limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
              cursor: Annotated[str | None, QueryParameter(max_length=20)] = None) -> AuditList:
        """Owner only: newest first; `next_cursor` fetches the older page after this one."""
        require_owner(caller, "read the audit log")
        if cursor is not None and not (cursor.isascii() and cursor.isdigit()):
            raise ClientException("cursor is not one this API handed out")
        with read_tx(state.engine) as conn:
            page = list_entries(conn, caller.studio_id, limit=limit, before=int(cursor) if cursor else None)
        return AuditList(
            items=[AuditOut(id=e.id, at=e.created_at, actor=e.actor, action=e.action, target=e.target,
                            reason=e.reason) for e in page.items],
            next_cursor=str(page.next_before) if page.next_before is not None else None)
