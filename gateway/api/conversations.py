"""Conversations of the caller's studio: list, read (queries in gateway/inbox/reading.py) and reply.

Every query filters on the caller's studio id; an id of another studio is simply not found
(404), so the API never confirms that someone else's conversation exists. Deleted
conversations and messages are left out the same way (gateway/access/visibility.py); the trash
(gateway/api/trash.py) is where they can be found and restored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException, TooManyRequestsException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Body, FromPath, QueryParameter
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import OperationalError

from gateway.eventlog import CONVERSATION_UPDATED, record as record_event
from gateway.inbox import reading
from gateway.api.auth import support_read
from gateway.api.trash import DeletedOut, deleted_answer
from gateway.store.batching import WriteUnavailable
from gateway.store.db import read_tx, write_tx
from gateway.store.tables import CONVERSATION
from gateway.store.models import utcnow
from gateway.inbox.reading import (BadCursor, ConversationDetailOut, ConversationList, MessageOut, attachment_out, message_out)
from gateway.outbound.replies import (MAX_TEXT, ReplyError, ReplyTooLarge, Upload, check_text, check_uploads, create_reply)
from gateway.outbound.reply_brake import RepliesBraked, check_reply_brake
from gateway.access.studios import Caller
from gateway.store.tables import ATTACHMENT
from gateway.lifecycle.trash import delete_conversation
from gateway.lifecycle.deletion_log import deletion_log
from gateway.access.visibility import LIVE_CONVERSATION


class ReadOut(msgspec.Struct):
    id: int
    unread: bool
    read_at: datetime


# The longest text (MAX_TEXT characters) as JSON, each character escaped as \uXXXX at worst.
REPLY_MAX_BODY = MAX_TEXT * 6 + 4096


# Attachments up to the largest message we accept (checked exactly in check_uploads).
UPLOAD_MAX_BODY = 64 * 1024 * 1024


@dataclass
class ReplyUpload:
    text: str
    files: list[UploadFile] = field(default_factory=list)


class ReplyIn(msgspec.Struct):
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]


async def _uploads(files: list[UploadFile], state: State) -> list[Upload]:
    uploads = [Upload(f.filename or "attachment", f.content_type or "application/octet-stream", await f.read())
               for f in files]
    try:
        return check_uploads(uploads, state.settings)
    except ReplyTooLarge as exc:
        raise ClientException(str(exc), status_code=413) from None
    except ReplyError as exc:
        raise ClientException(str(exc)) from None


async def _read_at_most(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body, or 413 as soon as it passes `limit`: the route admits attachment-sized
    bodies for multipart, which a JSON reply never needs."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise ClientException(f"a JSON reply is at most {limit} bytes", status_code=413)
        return await request.body()  # the server holds it to the declared length
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ClientException(f"a JSON reply is at most {limit} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


_TEXT = Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_TEXT)


@dataclass
class ReplyOperation(Operation):
    """The reply route reads its body itself (JSON or multipart), so its schema says both."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(required=True, content={
            "application/json": OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.OBJECT, required=["text"], properties={"text": _TEXT})),
            "multipart/form-data": OpenAPIMediaType(schema=Schema(
                type=OpenAPIType.OBJECT, required=["text"], properties={
                    "text": _TEXT,
                    "files": Schema(type=OpenAPIType.ARRAY,
                                    items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY))})),
        })


class ConversationController(Controller):
    path = "/api/v1/conversations"

    @get("/", sync_to_thread=True, opt=support_read("conversation.list", "conversations"))
    def list_conversations(
        self, state: State, caller: NamedDependency[Caller],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        status: Annotated[str | None, QueryParameter(pattern="^(open|closed)$")] = None,
        unread: Annotated[bool | None, QueryParameter()] = None,
        q: Annotated[str | None, QueryParameter(min_length=1, max_length=200)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> ConversationList:
        """Newest activity first; `next_cursor` fetches the page after this one."""
        try:
            with read_tx(state.engine) as conn:
                return reading.list_conversations(conn, caller.studio_id, limit=limit, status=status, unread=unread,
                                                  q=q, cursor=cursor)
        except BadCursor as exc:
            raise ClientException(str(exc)) from None

    @post("/{conversation_id:int}/read", sync_to_thread=True, status_code=200)
    def mark_read(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int]) -> ReadOut:
        """Mark the conversation read now (it turns unread again when new mail arrives)."""
        now = utcnow()
        with write_tx(state.engine) as conn:
            found = conn.execute(update(CONVERSATION).where(
                CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == caller.studio_id,
                LIVE_CONVERSATION).values(read_at=now)).rowcount
            if found:
                record_event(conn, caller.studio_id, CONVERSATION_UPDATED, now, conversation_id=conversation_id,
                             change="read")
        if not found:
            raise NotFoundException("conversation not found")
        return ReadOut(id=conversation_id, unread=False, read_at=now)

    @get("/{conversation_id:int}", sync_to_thread=True,
         opt=support_read("conversation.read", "conversation {conversation_id}"))
    def get_conversation(
        self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        images: Annotated[str, QueryParameter(pattern="^(blocked|remote)$")] = "blocked",
    ) -> ConversationDetailOut:
        """The conversation and a page of its messages: the newest `limit` first time, oldest
        first within the page; `next_cursor` fetches the older page. Remote images in the
        guests' HTML are left out (`remote_images_blocked` says where) unless `images=remote`."""
        try:
            with read_tx(state.engine) as conn:
                detail = reading.conversation_detail(conn, caller.studio_id, conversation_id, limit=limit,
                                                     cursor=cursor, remote_images=images == "remote")
        except BadCursor as exc:
            raise ClientException(str(exc)) from None
        if detail is None:
            raise NotFoundException("conversation not found")
        return detail

    @delete("/{conversation_id:int}", sync_to_thread=True, status_code=200, raises=[NotFoundException])
    def remove(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int]) -> DeletedOut:
        """Hide the conversation with all its messages at once (404 from then on, as if gone);
        restorable from the trash for 30 days on a paid plan, then erased for good. A guest's
        new mail opens a new conversation; replies still queued are not sent while deleted.
        (Here, not beside restore in gateway/api/trash.py: Litestar wants one controller per path.)"""
        with write_tx(state.engine) as conn:
            deleted = delete_conversation(conn, caller.studio_id, conversation_id, caller.profile_id, utcnow(),
                                          log=deletion_log(state.settings))
        return deleted_answer(deleted, "conversation")

    @post("/{conversation_id:int}/replies/upload", status_code=202, request_max_body_size=UPLOAD_MAX_BODY)
    async def reply_with_attachments(
        self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int],
        data: Annotated[ReplyUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> MessageOut:
        """The same reply with attachments: multipart/form-data with `text` and `files` parts.

        /replies takes this form as well; this path stays for the clients that use it."""
        return await self._queue_reply(state, caller, conversation_id, data.text, await _uploads(data.files, state))

    @post("/{conversation_id:int}/replies", status_code=202, request_max_body_size=UPLOAD_MAX_BODY,
          operation_class=ReplyOperation)
    async def reply(self, request: Request[Any, Any, Any], state: State, caller: NamedDependency[Caller],
                    conversation_id: FromPath[int]) -> MessageOut:
        """Queue a reply to the guest: 202 with the outbound message (delivery `queued`).

        JSON `{"text": ...}`, or multipart/form-data with a `text` part and `files` parts for
        attachments (as /replies/upload takes it). The row and its outbox job are written in a
        group commit shared with concurrent replies (gateway/store/batching.py)."""
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            form = await request.form()
            text = form.get("text")
            if not isinstance(text, str):
                raise ClientException("a multipart reply needs a text part")
            files = [f for f in form.getall("files", []) if isinstance(f, UploadFile)]
            return await self._queue_reply(state, caller, conversation_id, text, await _uploads(files, state))
        body = await _read_at_most(request, REPLY_MAX_BODY)  # JSON, whatever the client declared (as before)
        try:
            data = msgspec.json.decode(body, type=ReplyIn)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ClientException(f"invalid reply: {exc}") from None
        return await self._queue_reply(state, caller, conversation_id, data.text, [])

    async def _queue_reply(self, state: State, caller: Caller, conversation_id: int, text: str,
                           uploads: list[Upload]) -> MessageOut:
        settings = state.settings

        def write(conn: Connection) -> Any:
            # Scoped to the caller's studio: another studio's id finds no replies and stays 404.
            check_reply_brake(conn, studio_id=caller.studio_id, conversation_id=conversation_id, now=utcnow(),
                              limit=settings.reply_max_per_conversation_per_hour)
            created = create_reply(conn, studio_id=caller.studio_id, conversation_id=conversation_id,
                                   text=text, settings=settings, uploads=uploads)
            if created is None:
                return None
            files = []
            if uploads:
                files = conn.execute(select(ATTACHMENT).where(ATTACHMENT.c.message_id == created.message_row_id)
                                     .order_by(ATTACHMENT.c.id)).all()
            return SimpleNamespace(**created.row), [attachment_out(a) for a in files]

        try:
            check_text(text)  # refused before it joins a group commit
            written = await state.writes.run(write)
        except RepliesBraked as exc:
            raise TooManyRequestsException(str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except ReplyError as exc:
            raise ClientException(str(exc)) from None
        except (WriteUnavailable, OperationalError):
            raise ServiceUnavailableException("temporary problem storing the reply, please retry") from None
        if written is None:
            raise NotFoundException("conversation not found")
        wake = getattr(state, "wake_outbox", None)
        if wake is not None:
            wake()  # same process (gateway serve): send now rather than at the next poll
        return message_out(written[0], written[1], None)
