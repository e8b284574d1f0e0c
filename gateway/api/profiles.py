"""The studio's profiles: the owner connects members (each gets a first token, shown once)
and disconnects them; members see who is connected. Rules in gateway/access/profiles.py."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import JSONBody

from gateway.api.ids import RowId
from gateway.api.auth import require_owner
from gateway.api.created import LOCATION, created
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.api.idempotency import Idempotent, shown_once
from gateway.api.manage import ConflictException
from gateway.api.tokens import NO_STORE, NewTokenOut
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.access.profiles import ProfileConflict, ProfileInfo, connect_member, disconnect_profile, list_profiles
from gateway.access.studios import Caller, StudioError


class ProfileOut(msgspec.Struct):
    id: int
    email: str
    name: str
    role: str                           # owner | member
    created_at: datetime
    disconnected_at: datetime | None


class ProfileList(msgspec.Struct):
    items: list[ProfileOut]
    next_cursor: str | None = None


class ProfileIn(msgspec.Struct):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class NewProfileOut(msgspec.Struct):
    profile: ProfileOut
    token: NewTokenOut                  # the member's first token, shown this once


def _out(p: ProfileInfo) -> ProfileOut:
    return ProfileOut(id=p.id, email=p.email, name=p.name, role=p.role, created_at=p.created_at,
                      disconnected_at=p.disconnected_at)


class ProfileController(Controller):
    path = "/api/v1/profiles"

    @get("/", sync_to_thread=True)
    def index(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
              cursor: Cursor = None) -> ProfileList:
        """Oldest first. The owner sees every profile, disconnected ones with `disconnected_at`;
        a member sees the connected ones (who else answers the studio's guests)."""
        with cursor_checked(), read_tx(state.engine) as conn:
            page = list_profiles(conn, caller, limit=limit, cursor=cursor)
        return ProfileList(items=[_out(p) for p in page.items], next_cursor=page.next_cursor)

    @post("/", sync_to_thread=True, status_code=201, response_headers=[*NO_STORE, LOCATION],
          raises=[ClientException, ConflictException], opt=shown_once("token.token"))
    def connect(self, state: State, caller: NamedDependency[Caller], data: JSONBody[ProfileIn],
                idempotent: Idempotent) -> Response[NewProfileOut]:
        """Owner only: connect a member and hand out their first token (shown once).
        409 when the address is connected to the studio already."""
        require_owner(caller, "connect profiles")
        try:
            with write_tx(state.engine) as conn:
                profile, token = connect_member(conn, caller, data.email, data.name, utcnow())
        except ProfileConflict as exc:
            raise ConflictException(str(exc)) from None
        except StudioError as exc:
            raise ClientException(str(exc)) from None
        return created(NewProfileOut(profile=_out(profile), token=NewTokenOut(
            id=token.id, prefix=token.prefix, token=token.token, created_at=token.created_at)),
            f"/api/v1/profiles/{profile.id}")

    @delete("/{profile_id:str}", sync_to_thread=True, status_code=204,
            raises=[ConflictException, NotFoundException])
    def disconnect(self, state: State, caller: NamedDependency[Caller], profile_id: RowId) -> None:
        """Owner only: disconnect a member; their tokens stop working at once. 409 for the
        owner's own profile; disconnecting again is fine."""
        require_owner(caller, "disconnect profiles")
        try:
            with write_tx(state.engine) as conn:
                found = disconnect_profile(conn, caller, profile_id, utcnow())
        except ProfileConflict as exc:
            raise ConflictException(str(exc)) from None
        if not found:
            raise NotFoundException("profile not found")
