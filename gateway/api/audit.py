"""The studio's audit log for its owner: who read or changed access, newest first.
Read-only: the log has no route that changes it (gateway/access/audit.py)."""
from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from gateway.api.auth import require_owner
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
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
              limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None) -> AuditList:
        """Owner only: newest first; `next_cursor` fetches the older page after this one."""
        require_owner(caller, "read the audit log")
        with cursor_checked(), read_tx(state.engine) as conn:
            page = list_entries(conn, caller.studio_id, limit=limit, cursor=cursor)
        return AuditList(
            items=[AuditOut(id=e.id, at=e.created_at, actor=e.actor, action=e.action, target=e.target,
                            reason=e.reason) for e in page.items],
            next_cursor=page.next_cursor)
