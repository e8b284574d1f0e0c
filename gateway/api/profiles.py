"""The studio's profiles: the owner connects members (each gets a first token, shown once)
and disconnects them; members see who is connected. Rules in gateway/access/profiles.py."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import JSONBody

from gateway.api.errors import validation_failed
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
from gateway.outbound.notify_preferences import InvalidPreference, check_changes, preferences, update_preferences


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


class NotificationsOut(msgspec.Struct):
    mode: str                   # immediately | hourly | off
    quiet_from: str | None      # HH:MM in the studio's time zone: mail then waits for the digest
    quiet_to: str | None
    paused: bool                # notifications bounced repeatedly; a PATCH resumes them


# What the document promises; the values are checked by notify_preferences.check_changes, so a
# bad one is a 422 naming its field rather than the decoder's 400.
_MODE = msgspec.Meta(extra_json_schema={"extra": {"enum": ["immediately", "hourly", "off"]}})
_HHMM = msgspec.Meta(extra_json_schema={"extra": {"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}})


class NotificationsPatch(msgspec.Struct):
    """Only the fields given change; a quiet hour set to null removes the quiet hours."""
    mode: Annotated[str, _MODE] | msgspec.UnsetType = msgspec.UNSET
    quiet_from: Annotated[str, _HHMM] | None | msgspec.UnsetType = msgspec.UNSET
    quiet_to: Annotated[str, _HHMM] | None | msgspec.UnsetType = msgspec.UNSET


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

    @get("/me/notifications", sync_to_thread=True, raises=[NotFoundException])
    def my_notifications(self, state: State, caller: NamedDependency[Caller]) -> NotificationsOut:
        """How the calling profile hears about guest mail, and whether bounces paused it."""
        with read_tx(state.engine) as conn:
            found = preferences(conn, caller.studio_id, caller.profile_id)
        if found is None:
            raise NotFoundException("profile not found")
        return NotificationsOut(**found.as_json())

    @patch("/me/notifications", sync_to_thread=True, raises=[NotFoundException])
    def change_my_notifications(self, state: State, caller: NamedDependency[Caller],
                                data: JSONBody[NotificationsPatch]) -> NotificationsOut:
        """Change the calling profile's notifications (immediately, hourly or off; quiet hours as
        HH:MM); 422 naming the field for a value they cannot take. Any change resumes a pause."""
        changes = {f: getattr(data, f) for f in data.__struct_fields__ if getattr(data, f) is not msgspec.UNSET}
        try:
            checked = check_changes(changes)
        except InvalidPreference as exc:
            error = validation_failed([(exc.field, str(exc))], code="invalid_notification_preference")
            error.status_code = 422
            raise error from None
        with write_tx(state.engine) as conn:
            found = update_preferences(conn, caller.studio_id, caller.profile_id, checked, utcnow())
        if found is None:
            raise NotFoundException("profile not found")
        return NotificationsOut(**found.as_json())

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
