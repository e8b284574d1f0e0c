"""Support access as the owner manages it: grant read-only access for a while, list, revoke.
Rules in gateway/access/support.py; each grant and revocation is in the audit log."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import JSONBody

from gateway.access import audit
from gateway.api.ids import RowId
from gateway.api.auth import require_owner
from gateway.api.created import LOCATION, created
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.api.idempotency import Idempotent
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.access.studios import Caller, StudioError
from gateway.access.support import GrantInfo, grant_access, grant_duration, list_grants, revoke_grant


class GrantIn(msgspec.Struct, forbid_unknown_fields=True):
    """`hours` or `days` (not both); neither: 24 hours. At most 7 days."""

    hours: Annotated[int, msgspec.Meta(ge=1, le=168)] | None = None
    days: Annotated[int, msgspec.Meta(ge=1, le=7)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""


class GrantOut(msgspec.Struct):
    id: int
    granted_by: int                     # the owner's profile id
    note: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    active: bool                        # support can read now


class GrantList(msgspec.Struct):
    items: list[GrantOut]
    next_cursor: str | None = None


def _out(g: GrantInfo) -> GrantOut:
    return GrantOut(id=g.id, granted_by=g.profile_id, note=g.note, created_at=g.created_at,
                    expires_at=g.expires_at, revoked_at=g.revoked_at, active=g.active)


class SupportGrantController(Controller):
    path = "/api/v1/support-grants"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
              cursor: Cursor = None) -> GrantList:
        """Owner only: the studio's grants, newest first, active and past."""
        require_owner(caller, "see support access")
        with cursor_checked(), read_tx(state.engine) as conn:
            page = list_grants(conn, caller.studio_id, utcnow(), limit=limit, cursor=cursor)
        return GrantList(items=[_out(g) for g in page.items], next_cursor=page.next_cursor)

    @post("/", sync_to_thread=True, status_code=201, raises=[ClientException], response_headers=[LOCATION])
    def grant(self, state: State, caller: NamedDependency[Caller], idempotent: Idempotent,
              data: JSONBody[GrantIn | None] = None) -> Response[GrantOut]:
        """Owner only: let support read the studio's conversations from now on for `hours` or
        `days` (24 hours without either, or without a body; at most 7 days). Replaces the
        active grant, if any."""
        require_owner(caller, "grant support access")
        data, now = data or GrantIn(), utcnow()
        try:
            with write_tx(state.engine) as conn:
                granted = grant_access(conn, caller.studio_id, caller.profile_id, audit.profile_actor(conn, caller),
                                       grant_duration(data.hours, data.days), data.note, now)
        except StudioError as exc:
            raise ClientException(str(exc)) from None
        return created(_out(granted), f"/api/v1/support-grants/{granted.id}")

    @delete("/{grant_id:str}", sync_to_thread=True, status_code=204, raises=[NotFoundException])
    def revoke(self, state: State, caller: NamedDependency[Caller], grant_id: RowId) -> None:
        """Owner only: end the grant now; support's next read is refused. Revoking again is fine."""
        require_owner(caller, "revoke support access")
        with write_tx(state.engine) as conn:
            found = revoke_grant(conn, caller.studio_id, grant_id, audit.profile_actor(conn, caller), utcnow())
        if found is None:
            raise NotFoundException("support grant not found")
