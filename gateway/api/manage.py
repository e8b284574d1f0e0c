"""Managing the caller's studio's mail: held messages, closing and reopening conversations,
downloading attachments. Thin handlers over gateway/inbox/actions.py.

As everywhere in the API, an id of another studio is 404, never 403.
"""
from __future__ import annotations

from datetime import datetime

import msgspec
from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.status_codes import HTTP_409_CONFLICT

from gateway.api.ids import RowId
from gateway.api.auth import support_read
from gateway.api.errors import api_error, validation_failed
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.inbox.actions import CLOSED, OPEN, NotHeld, attachment_download, decide_held, list_held, set_status
from gateway.store.db import read_tx, write_tx
from gateway.mail.files import content_disposition, plain_media_type
from gateway.inbox.reading import PersonOut
from gateway.outbound.notify_answers import NotYours, confirm_held_answer
from gateway.outbound.replies import ReplyError
from gateway.access.studios import Caller


class HeldOut(msgspec.Struct):
    id: int
    conversation_id: int
    from_: PersonOut = msgspec.field(name="from")
    subject: str
    text: str
    received_at: datetime


class HeldList(msgspec.Struct):
    items: list[HeldOut]
    next_cursor: str | None = None


class DecisionOut(msgspec.Struct):
    id: int
    state: str              # visible (accepted) | rejected | sent (a profile's answer, sent to the guest)
    conversation_id: int


class StatusOut(msgspec.Struct):
    id: int
    status: str             # open | closed


class ConflictException(HTTPException):
    status_code = HTTP_409_CONFLICT


class HeldController(Controller):
    """Mail from someone who is not a participant of the conversation it replies to."""

    path = "/api/v1/held"

    @get("/", sync_to_thread=True, opt=support_read("held.list", "held messages"))
    def index(self, state: State, caller: NamedDependency[Caller], limit: Limit = DEFAULT_LIMIT,
              cursor: Cursor = None) -> HeldList:
        """The studio's held messages, newest first; `next_cursor` fetches the older page."""
        with cursor_checked(), read_tx(state.engine) as conn:
            held = list_held(conn, caller.studio_id, limit=limit, cursor=cursor)
        return HeldList(items=[
            HeldOut(id=m.id, conversation_id=m.conversation_id, from_=PersonOut(email=m.from_email, name=m.from_name),
                    subject=m.subject, text=m.text, received_at=m.received_at) for m in held.items],
            next_cursor=held.next_cursor)

    @post("/{message_id:str}/accept", sync_to_thread=True, status_code=200,
          raises=[ConflictException, NotFoundException, PermissionDeniedException])
    def accept(self, state: State, caller: NamedDependency[Caller], message_id: RowId) -> DecisionOut:
        """Show the message in its conversation; its sender counts as a participant from now on.
        A profile's held answer to a notification is sent to the guest instead, as the studio's
        reply (`sent`); only that profile or the owner may confirm it (403 otherwise), and 400
        `reply_text_empty` when there is nothing but the quote to send. 409 if it is not held
        (any more)."""
        return _decide(state, caller, message_id, accept=True)

    @post("/{message_id:str}/reject", sync_to_thread=True, status_code=200,
          raises=[ConflictException, NotFoundException])
    def reject(self, state: State, caller: NamedDependency[Caller], message_id: RowId) -> DecisionOut:
        """Keep the message out of sight for good (it is kept, as `rejected`). 409 if not held."""
        return _decide(state, caller, message_id, accept=False)


def _decide(state: State, caller: Caller, message_id: int, *, accept: bool) -> DecisionOut:
    try:
        with write_tx(state.engine) as conn:
            sent = confirm_held_answer(conn, state.settings, caller, message_id) if accept else None
            decision = sent or decide_held(conn, caller.studio_id, message_id, accept=accept)
    except NotHeld as exc:
        raise ConflictException(str(exc)) from None
    except NotYours as exc:
        raise api_error(403, "not_your_answer", str(exc)) from None
    except ReplyError as exc:
        raise validation_failed([("text", str(exc))], code=exc.code) from None
    if decision is None:
        raise NotFoundException("held message not found")
    if decision.state == "sent" and (wake := getattr(state, "wake_outbox", None)) is not None:
        wake()  # same process (gateway serve): send now rather than at the next poll
    return DecisionOut(id=decision.id, state=decision.state, conversation_id=decision.conversation_id)


class ConversationStatusController(Controller):
    """Close and reopen; shares its prefix with ConversationController (gateway/api/conversations.py)."""

    path = "/api/v1/conversations"

    @post("/{conversation_id:str}/close", sync_to_thread=True, status_code=200)
    def close(self, state: State, caller: NamedDependency[Caller], conversation_id: RowId) -> StatusOut:
        """Closed until the studio reopens it or the guest writes again; closing twice is fine."""
        return _set_status(state, caller, conversation_id, CLOSED)

    @post("/{conversation_id:str}/reopen", sync_to_thread=True, status_code=200)
    def reopen(self, state: State, caller: NamedDependency[Caller], conversation_id: RowId) -> StatusOut:
        """Open again; reopening an open conversation is fine."""
        return _set_status(state, caller, conversation_id, OPEN)


def _set_status(state: State, caller: Caller, conversation_id: int, status: str) -> StatusOut:
    with write_tx(state.engine) as conn:
        found = set_status(conn, caller.studio_id, conversation_id, status)
    if not found:
        raise NotFoundException("conversation not found")
    return StatusOut(id=conversation_id, status=status)


# The bytes and their name come from whoever wrote the mail. A browser must never render them
# in our origin, whatever the type says: always a download (Content-Disposition: attachment),
# no type sniffing, and a sandbox (no scripts, opaque origin) should one open it anyway, as
# for text/html or image/svg+xml, which can carry script.
DOWNLOAD_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
class AttachmentController(Controller):
    path = "/api/v1/attachments"

    @get("/{attachment_id:str}", sync_to_thread=True, media_type="application/octet-stream",
         opt=support_read("attachment.read", "attachment {attachment_id}"))
    def download(self, state: State, caller: NamedDependency[Caller], attachment_id: RowId) -> Response[bytes]:
        """The attachment's bytes as a download, with its stored type.

        404 for another studio's attachment, and for one of a held or rejected message: it
        becomes available when the message is accepted."""
        with read_tx(state.engine) as conn:
            found = attachment_download(conn, caller.studio_id, attachment_id)
        if found is None:
            raise NotFoundException("attachment not found")
        media_type = plain_media_type(found.content_type)
        # Content-Type set as stored: Litestar would add "; charset=utf-8" to text/* types, but
        # the bytes are in whatever charset the sender used.
        return Response(found.data, media_type=media_type, headers={
            **DOWNLOAD_HEADERS, "Content-Type": media_type,
            "Content-Disposition": content_disposition(found.filename)})
