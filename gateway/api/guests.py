"""The studio's guests: look one up; the owner erases one for good (their right to erasure).

Erasing is the owner's decision alone (members get 403): it cannot be undone on any plan.
"""
from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException, PermissionDeniedException

from gateway.api.ids import RowId
from gateway.store.db import read_tx, write_tx
from gateway.lifecycle.deletion_log import deletion_log
from gateway.lifecycle.guests import erase_guest_data, get_guest
from gateway.store.models import utcnow
from gateway.access.studios import Caller


class GuestDetailOut(msgspec.Struct):
    id: int
    email: str
    name: str
    created_at: datetime
    conversation_count: int   # shown conversations (deleted ones are in the trash)


class GuestErasedOut(msgspec.Struct):
    id: int
    conversations: int        # everything of theirs, deleted conversations included
    messages: int
    attachments: int
    erased_at: datetime


class GuestController(Controller):
    path = "/api/v1/guests"

    @get("/{guest_id:str}", sync_to_thread=True, raises=[NotFoundException])
    def show(self, state: State, caller: NamedDependency[Caller], guest_id: RowId) -> GuestDetailOut:
        with read_tx(state.engine) as conn:
            guest = get_guest(conn, caller.studio_id, guest_id)
        if guest is None:
            raise NotFoundException("guest not found")
        return GuestDetailOut(id=guest.id, email=guest.email, name=guest.name, created_at=guest.created_at,
                              conversation_count=guest.conversation_count)

    @post("/{guest_id:str}/erase", sync_to_thread=True, status_code=200,
          raises=[PermissionDeniedException, NotFoundException])
    def erase(self, state: State, caller: NamedDependency[Caller], guest_id: RowId) -> GuestErasedOut:
        """Owner only: erase the guest's conversations (deleted ones too), the mail they wrote
        into other conversations, their attachments and their contact, at once and for good.
        Mail they send afterwards starts afresh as from a new guest."""
        if caller.role != "owner":
            raise PermissionDeniedException("only the studio's owner can erase a guest's data")
        with write_tx(state.engine) as conn:
            erased = erase_guest_data(conn, caller.studio_id, guest_id, deletion_log(state.settings), utcnow(),
                                      mail_domain=state.settings.mail_domain)
        if erased is None:
            raise NotFoundException("guest not found")
        return GuestErasedOut(id=erased.id, conversations=erased.conversations, messages=erased.messages,
                              attachments=erased.attachments, erased_at=erased.erased_at)
