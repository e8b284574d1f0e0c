"""Conversations of the caller's studio: list, read (queries in gateway/inbox/reading.py) and reply.

Every query filters on the caller's studio id; an id of another studio is simply not found
(404), so the API never confirms that someone else's conversation exists. Deleted
conversations and messages are left out the same way (gateway/access/visibility.py); the trash
(gateway/api/trash.py) is where they can be found and restored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, NotFoundException, TooManyRequestsException
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Body, QueryParameter
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError

from gateway.inbox import reading
from gateway.inbox.reads import mark_read
from gateway.api.errors import api_error, validation_failed
from gateway.api.ids import RowId
from gateway.api.json_bodies import decode_strict, require_json
from gateway.api.unavailable import DATABASE_UNAVAILABLE, RETRY_AFTER
from gateway.api.auth import support_read
from gateway.api.idempotency import Idempotent
from gateway.api.trash import DeletedOut, deleted_answer
from gateway.store.batching import WriteUnavailable
from gateway.store.db import read_tx, write_tx
from gateway.store.models import utcnow
from gateway.inbox.reading import (ConversationDetailOut, ConversationList, MessageList, MessageOut, attachment_out, message_out)
from gateway.api.conditional import ETAG_HEADERS, NOT_MODIFIED, tagged
from gateway.api.created import LOCATION, accepted
from gateway.api.paging import DEFAULT_LIMIT, Cursor, Limit, cursor_checked
from gateway.outbound.replies import (MAX_TEXT, TEXT_PATTERN, ReplyError, ReplyTooLarge, Upload, check_text, check_uploads, create_reply)
from gateway.outbound.reply_brake import RepliesBraked, check_reply_brake
from gateway.access.studios import Caller
from gateway.store.tables import ATTACHMENT
from gateway.lifecycle.trash import delete_conversation
from gateway.lifecycle.deletion_log import deletion_log


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
    # An empty text is check_text's `reply_text_empty`, like a blank one, not a generic length error.
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


async def _uploads(files: list[UploadFile], state: State) -> list[Upload]:
    uploads = [Upload(f.filename or "attachment", f.content_type or "application/octet-stream", await f.read())
               for f in files]
    try:
        return check_uploads(uploads, state.settings)
    except ReplyTooLarge as exc:
        raise api_error(413, exc.code, str(exc)) from None
    except ReplyError as exc:
        raise validation_failed([("files", str(exc))], code=exc.code) from None


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


def _timestamp(value: str, name: str) -> datetime:
    """An ISO-8601 time in UTC (UTC when it has no offset), or 400 naming the parameter.

    Parsed here rather than by the framework, which also takes plain numbers as Unix times and
    answered 500 for times that leave the calendar once moved to UTC (year 1 at +05:00)."""
    text = value.upper()  # RFC 3339 allows "t" and "z"
    if text[17:19] == "60":  # a leap second (RFC 3339 5.6): the second before is as good here
        text = f"{text[:17]}59{text[19:]}"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ClientException(f"{name} must be an ISO-8601 time such as 2026-12-06T10:00:00Z",
                              extra={"code": f"bad_{name}"}) from None


_TEXT = Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_TEXT, pattern=TEXT_PATTERN)


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

    @get("/", sync_to_thread=True, opt=support_read("conversation.list", "conversations"),
         responses=NOT_MODIFIED, response_headers=ETAG_HEADERS)
    def list_conversations(
        self, request: Request[Any, Any, Any], state: State, caller: NamedDependency[Caller],
        limit: Limit = DEFAULT_LIMIT,
        status: Annotated[str | None, QueryParameter(pattern="^(open|closed)$")] = None,
        unread: Annotated[bool | None, QueryParameter()] = None,
        q: Annotated[str | None, QueryParameter(min_length=1, max_length=200)] = None,
        cursor: Cursor = None,
        updated_since: Annotated[str | None, QueryParameter(format=OpenAPIFormat.DATE_TIME, max_length=64, description=(
            "ISO-8601 time: only conversations changed at or after it (a message, read or unread, "
            "closed or reopened, deleted or restored), deleted ones included with `deleted: true`. "
            "Pass the newest `updated_at` seen; without an offset it is UTC."))] = None,
    ) -> Response[ConversationList]:
        """Newest activity first; `next_cursor` fetches the page after this one. Answers carry
        an ETag: with `If-None-Match` the unchanged list is `304` with no body."""
        since = None if updated_since is None else _timestamp(updated_since, "updated_since")
        with cursor_checked(), read_tx(state.engine) as conn:
            page = reading.list_conversations(conn, caller.studio_id, limit=limit, status=status, unread=unread,
                                              q=q, cursor=cursor, updated_since=since)
        return tagged(request, page)

    @post("/{conversation_id:str}/read", sync_to_thread=True, status_code=200)
    def mark_read(self, state: State, caller: NamedDependency[Caller], conversation_id: RowId) -> ReadOut:
        """Mark the conversation read now (it turns unread again when new mail arrives)."""
        now = utcnow()
        with write_tx(state.engine) as conn:
            found = mark_read(conn, caller.studio_id, conversation_id, now)
        if not found:
            raise NotFoundException("conversation not found")
        return ReadOut(id=conversation_id, unread=False, read_at=now)

    @get("/{conversation_id:str}", sync_to_thread=True,
         opt=support_read("conversation.read", "conversation {conversation_id}"),
         responses=NOT_MODIFIED, response_headers=ETAG_HEADERS)
    def get_conversation(
        self, request: Request[Any, Any, Any], state: State, caller: NamedDependency[Caller],
        conversation_id: RowId, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None,
        images: Annotated[str, QueryParameter(pattern="^(blocked|remote)$")] = "blocked",
    ) -> Response[ConversationDetailOut]:
        """The conversation and a page of its messages: the newest `limit` first time, oldest
        first within the page; `next_cursor` fetches the older page (here or on .../messages).
        Remote images in the guests' HTML are left out (`remote_images_blocked` says where)
        unless `images=remote`. With `If-None-Match` an unchanged answer is `304`."""
        with cursor_checked(), read_tx(state.engine) as conn:
            detail = reading.conversation_detail(conn, caller.studio_id, conversation_id, limit=limit,
                                                 cursor=cursor, remote_images=images == "remote")
        if detail is None:
            raise NotFoundException("conversation not found")
        return tagged(request, detail)

    @get("/{conversation_id:str}/messages", sync_to_thread=True,
         opt=support_read("conversation.read", "conversation {conversation_id}"))
    def list_messages(
        self, state: State, caller: NamedDependency[Caller], conversation_id: RowId,
        limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None,
        images: Annotated[str, QueryParameter(pattern="^(blocked|remote)$")] = "blocked",
    ) -> MessageList:
        """The conversation's visible messages a page at a time: the newest page first, oldest
        first within a page, `next_cursor` for the older page (as in the conversation's detail)."""
        with cursor_checked(), read_tx(state.engine) as conn:
            if reading.find_conversation(conn, caller.studio_id, conversation_id) is None:
                raise NotFoundException("conversation not found")
            return reading.message_page(conn, caller.studio_id, conversation_id, limit=limit, cursor=cursor,
                                        remote_images=images == "remote")

    @delete("/{conversation_id:str}", sync_to_thread=True, status_code=200, raises=[NotFoundException])
    def remove(self, state: State, caller: NamedDependency[Caller], conversation_id: RowId) -> DeletedOut:
        """Hide the conversation with all its messages at once (404 from then on, as if gone);
        restorable from the trash for 30 days on a paid plan, then erased for good. A guest's
        new mail opens a new conversation; replies still queued are not sent while deleted.
        (Here, not beside restore in gateway/api/trash.py: Litestar wants one controller per path.)"""
        with write_tx(state.engine) as conn:
            deleted = delete_conversation(conn, caller.studio_id, conversation_id, caller.profile_id, utcnow(),
                                          log=deletion_log(state.settings))
        return deleted_answer(deleted, "conversation")

    @post("/{conversation_id:str}/replies/upload", status_code=202, request_max_body_size=UPLOAD_MAX_BODY,
          response_headers=[LOCATION])
    async def reply_with_attachments(
        self, state: State, caller: NamedDependency[Caller], conversation_id: RowId,
        data: Annotated[ReplyUpload, Body(media_type=RequestEncodingType.MULTI_PART)], idempotent: Idempotent,
    ) -> Response[MessageOut]:
        """The same reply with attachments: multipart/form-data with `text` and `files` parts.

        /replies takes this form as well; this path stays for the clients that use it."""
        return await self._queue_reply(state, caller, conversation_id, data.text, await _uploads(data.files, state))

    @post("/{conversation_id:str}/replies", status_code=202, request_max_body_size=UPLOAD_MAX_BODY,
          operation_class=ReplyOperation, response_headers=[LOCATION])
    async def reply(self, request: Request[Any, Any, Any], state: State, caller: NamedDependency[Caller],
                    conversation_id: RowId, idempotent: Idempotent) -> Response[MessageOut]:
        """Queue a reply to the guest: 202 with the outbound message (delivery `queued`) and its
        URL as `Location` (GET it to follow the delivery).

        JSON `{"text": ...}`, or multipart/form-data with a `text` part and `files` parts for
        attachments (as /replies/upload takes it). The row and its outbox job are written in a
        group commit shared with concurrent replies (gateway/store/batching.py)."""
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            form = await request.form()
            text = form.get("text")
            if not isinstance(text, str):
                raise validation_failed([("text", "a multipart reply needs a text part")])
            parts = form.getall("files", [])
            files = [f for f in parts if isinstance(f, UploadFile)]
            if len(files) != len(parts):  # a text part where the client meant a file: not dropped silently
                raise validation_failed([("files", "a multipart reply's files parts must be files (with a filename)")])
            return await self._queue_reply(state, caller, conversation_id, text, await _uploads(files, state))
        require_json(request.headers.get("content-type"))  # 415 for text/plain; none at all is JSON
        data = decode_strict(await _read_at_most(request, REPLY_MAX_BODY), ReplyIn)
        return await self._queue_reply(state, caller, conversation_id, data.text, [])

    async def _queue_reply(self, state: State, caller: Caller, conversation_id: int, text: str,
                           uploads: list[Upload]) -> Response[MessageOut]:
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
            raise validation_failed([("text", str(exc))], code=exc.code) from None
        except (WriteUnavailable, OperationalError):
            raise api_error(503, DATABASE_UNAVAILABLE, "temporary problem storing the reply, please retry",
                            headers={"Retry-After": RETRY_AFTER}) from None
        if written is None:
            raise NotFoundException("conversation not found")
        wake = getattr(state, "wake_outbox", None)
        if wake is not None:
            wake()  # same process (gateway serve): send now rather than at the next poll
        message = message_out(written[0], written[1], None)
        return accepted(message, f"/api/v1/messages/{message.id}")
