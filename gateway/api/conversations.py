"""Conversations of the caller's studio: list and read.

Every query filters on the caller's studio id; an id of another studio is simply not found
(404), so the API never confirms that someone else's conversation exists. Deleted
conversations and messages are left out the same way (gateway/visibility.py); the trash
(gateway/api/trash.py) is where they can be found and restored.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException, ServiceUnavailableException

from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, JSONBody, QueryParameter
from sqlalchemy import Connection, Engine, func, select, update
from sqlalchemy.exc import OperationalError

from gateway.api.people import GuestOut, PersonOut
from gateway.api.trash import DeletedOut, deleted_answer
from gateway.batching import WriteUnavailable
from gateway.db import read_tx, write_tx
from gateway.ingest import CONVERSATION, GUEST, MESSAGE
from gateway.replies import (MAX_TEXT, OUTBOUND_JOB, ReplyError, ReplyTooLarge, Upload, check_uploads,
                             create_reply)
from gateway.models import utcnow
from gateway.studios import Caller
from gateway.threader import ATTACHMENT
from gateway.trash import delete_conversation
from gateway.visibility import LIVE_CONVERSATION, LIVE_MESSAGE


class AttachmentOut(msgspec.Struct):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool


class MessageOut(msgspec.Struct):
    id: int
    direction: str
    state: str
    from_: PersonOut = msgspec.field(name="from")
    to: list[PersonOut]
    cc: list[PersonOut]
    subject: str
    text: str
    full_text: str
    html: str | None
    message_id: str
    in_reply_to: str | None
    received_at: datetime
    sent_at: datetime | None
    thread_rule: str
    automatic: bool
    auto_kind: str | None
    delivery: str | None
    delivery_error: str | None      # the relay's answer when delivery failed (or is being retried)
    attachments: list[AttachmentOut]


class ConversationOut(msgspec.Struct):
    id: int
    subject: str
    status: str
    guest: GuestOut
    message_count: int
    last_message_at: datetime
    created_at: datetime
    unread: bool


class ConversationDetailOut(ConversationOut):
    held_count: int
    messages: list[MessageOut]


class ConversationList(msgspec.Struct):
    items: list[ConversationOut]
    next_cursor: str | None = None


class ReadOut(msgspec.Struct):
    id: int
    unread: bool
    read_at: datetime


def _encode_cursor(last_message_at: datetime, conversation_id: int) -> str:
    return base64.urlsafe_b64encode(f"{last_message_at.isoformat()}|{conversation_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, _, conversation_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)), int(conversation_id)
    except (ValueError, UnicodeDecodeError):
        raise ClientException("cursor is not one this API handed out") from None


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


def _message_out(m, attachments: list[AttachmentOut], error: str | None) -> MessageOut:  # type: ignore[no-untyped-def]
    return MessageOut(
        id=m.id, direction=m.direction, state=m.state, from_=PersonOut(email=m.from_email, name=m.from_name),
        to=_people(m.to_json), cc=_people(m.cc_json), subject=m.subject, text=m.text, full_text=m.full_text,
        html=m.html, message_id=m.message_id, in_reply_to=m.in_reply_to, received_at=m.received_at,
        sent_at=m.sent_at, thread_rule=m.thread_rule, automatic=m.automatic, auto_kind=m.auto_kind,
        delivery=m.delivery, delivery_error=error, attachments=attachments)


def _people(raw: str) -> list[PersonOut]:
    return [PersonOut(email=p.get("email", ""), name=p.get("name", "")) for p in json.loads(raw or "[]")]


def _conversation(row) -> ConversationOut:  # type: ignore[no-untyped-def]
    return ConversationOut(id=row.id, subject=row.subject, status=row.status,
                           guest=GuestOut(id=row.guest_id, email=row.guest_email, name=row.guest_name),
                           message_count=row.message_count, last_message_at=row.last_message_at,
                           created_at=row.created_at,
                           unread=row.read_at is None or row.last_message_at > row.read_at)


_CONVERSATION_COLUMNS = (CONVERSATION.c.id, CONVERSATION.c.subject, CONVERSATION.c.status,
                         CONVERSATION.c.message_count, CONVERSATION.c.last_message_at,
                         CONVERSATION.c.created_at, CONVERSATION.c.read_at, CONVERSATION.c.guest_id,
                         GUEST.c.email.label("guest_email"),
                         GUEST.c.name.label("guest_name"))


class ConversationController(Controller):
    path = "/api/v1/conversations"

    @get("/", sync_to_thread=True)
    def list_conversations(
        self, state: State, caller: NamedDependency[Caller],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        status: Annotated[str | None, QueryParameter(pattern="^(open|closed)$")] = None,
        unread: Annotated[bool | None, QueryParameter()] = None,
        q: Annotated[str | None, QueryParameter(min_length=1, max_length=200)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> ConversationList:
        """Newest activity first; `next_cursor` fetches the page after this one."""
        query = (select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                 .where(CONVERSATION.c.studio_id == caller.studio_id, LIVE_CONVERSATION))
        if status is not None:
            query = query.where(CONVERSATION.c.status == status)
        if unread is not None:
            is_unread = CONVERSATION.c.read_at.is_(None) | (CONVERSATION.c.last_message_at > CONVERSATION.c.read_at)
            query = query.where(is_unread if unread else ~is_unread)
        if q is not None:
            needle = q.lower()
            query = query.where(func.lower(CONVERSATION.c.subject).contains(needle, autoescape=True)
                                | func.lower(GUEST.c.email).contains(needle, autoescape=True)
                                | func.lower(GUEST.c.name).contains(needle, autoescape=True))
        if cursor is not None:
            after_at, after_id = _decode_cursor(cursor)
            query = query.where((CONVERSATION.c.last_message_at < after_at)
                                | ((CONVERSATION.c.last_message_at == after_at) & (CONVERSATION.c.id < after_id)))
        with read_tx(state.engine) as conn:
            rows = conn.execute(query.order_by(CONVERSATION.c.last_message_at.desc(), CONVERSATION.c.id.desc())
                                .limit(limit + 1)).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = _encode_cursor(rows[-1].last_message_at, rows[-1].id) if more else None
        return ConversationList(items=[_conversation(r) for r in rows], next_cursor=next_cursor)

    @post("/{conversation_id:int}/read", sync_to_thread=True, status_code=200)
    def mark_read(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int]) -> ReadOut:
        """Mark the conversation read now (it turns unread again when new mail arrives)."""
        now = utcnow()
        with write_tx(state.engine) as conn:
            found = conn.execute(update(CONVERSATION).where(
                CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == caller.studio_id,
                LIVE_CONVERSATION).values(read_at=now)).rowcount
        if not found:
            raise NotFoundException("conversation not found")
        return ReadOut(id=conversation_id, unread=False, read_at=now)

    @get("/{conversation_id:int}", sync_to_thread=True)
    def get_conversation(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int]) -> ConversationDetailOut:
        engine: Engine = state.engine
        with read_tx(engine) as conn:
            row = conn.execute(
                select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == caller.studio_id,
                       LIVE_CONVERSATION)
            ).first()
            if row is None:
                raise NotFoundException("conversation not found")
            messages = conn.execute(
                select(MESSAGE).where(MESSAGE.c.conversation_id == conversation_id,
                                      MESSAGE.c.studio_id == caller.studio_id, MESSAGE.c.state == "visible",
                                      LIVE_MESSAGE)
                .order_by(MESSAGE.c.received_at, MESSAGE.c.id)
            ).all()
            held = conn.execute(select(func.count()).select_from(MESSAGE).where(
                MESSAGE.c.conversation_id == conversation_id, MESSAGE.c.studio_id == caller.studio_id,
                MESSAGE.c.state == "held", LIVE_MESSAGE)).scalar_one()
            errors: dict[int, str | None] = {}
            outbound = [m.id for m in messages if m.direction == "outbound"]
            if outbound:
                errors = dict(conn.execute(select(OUTBOUND_JOB.c.message_id, OUTBOUND_JOB.c.last_error).where(
                    OUTBOUND_JOB.c.studio_id == caller.studio_id, OUTBOUND_JOB.c.message_id.in_(outbound))).all())
            attachments: dict[int, list[AttachmentOut]] = {}
            if messages:
                for a in conn.execute(select(ATTACHMENT).where(
                        ATTACHMENT.c.studio_id == caller.studio_id,
                        ATTACHMENT.c.message_id.in_([m.id for m in messages])).order_by(ATTACHMENT.c.id)):
                    attachments.setdefault(a.message_id, []).append(AttachmentOut(
                        id=a.id, filename=a.filename, content_type=a.content_type, size=a.size,
                        sha256=a.sha256, inline=a.inline))
        base = _conversation(row)
        return ConversationDetailOut(
            **msgspec.structs.asdict(base), held_count=held,
            messages=[_message_out(m, attachments.get(m.id, []), errors.get(m.id)) for m in messages],
        )

    @delete("/{conversation_id:int}", sync_to_thread=True, status_code=200, raises=[NotFoundException])
    def remove(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int]) -> DeletedOut:
        """Hide the conversation with all its messages at once (404 from then on, as if gone);
        restorable from the trash for 30 days on a paid plan, then erased for good. A guest's
        new mail opens a new conversation; replies still queued are not sent while deleted.
        (Here, not beside restore in gateway/api/trash.py: Litestar wants one controller per path.)"""
        with write_tx(state.engine) as conn:
            deleted = delete_conversation(conn, caller.studio_id, conversation_id, caller.profile_id, utcnow())
        return deleted_answer(deleted, "conversation")

    @post("/{conversation_id:int}/replies/upload", status_code=202, request_max_body_size=UPLOAD_MAX_BODY)
    async def reply_with_attachments(
        self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int],
        data: Annotated[ReplyUpload, Body(media_type=RequestEncodingType.MULTI_PART)],
    ) -> MessageOut:
        """The same reply with attachments: multipart/form-data with `text` and `files` parts."""
        uploads = [Upload(f.filename or "attachment", f.content_type or "application/octet-stream", await f.read())
                   for f in data.files]
        try:
            uploads = check_uploads(uploads, state.settings)
        except ReplyTooLarge as exc:
            raise ClientException(str(exc), status_code=413) from None
        except ReplyError as exc:
            raise ClientException(str(exc)) from None
        return await self._queue_reply(state, caller, conversation_id, data.text, uploads)

    @post("/{conversation_id:int}/replies", status_code=202, request_max_body_size=REPLY_MAX_BODY)
    async def reply(self, state: State, caller: NamedDependency[Caller], conversation_id: FromPath[int],
                    data: JSONBody[ReplyIn]) -> MessageOut:
        """Queue a reply to the guest: 202 with the outbound message (delivery `queued`).

        The row and its outbox job are written in a group commit shared with concurrent
        replies (gateway/batching.py)."""
        return await self._queue_reply(state, caller, conversation_id, data.text, [])

    async def _queue_reply(self, state: State, caller: Caller, conversation_id: int, text: str,
                           uploads: list[Upload]) -> MessageOut:
        settings = state.settings

        def write(conn: Connection) -> Any:
            created = create_reply(conn, studio_id=caller.studio_id, conversation_id=conversation_id,
                                   text=text, settings=settings, uploads=uploads)
            if created is None:
                return None
            row = conn.execute(select(MESSAGE).where(MESSAGE.c.id == created.message_row_id)).one()
            files = conn.execute(select(ATTACHMENT).where(ATTACHMENT.c.message_id == row.id)
                                 .order_by(ATTACHMENT.c.id)).all()
            return row, [AttachmentOut(id=a.id, filename=a.filename, content_type=a.content_type, size=a.size,
                                       sha256=a.sha256, inline=a.inline) for a in files]

        try:
            written = await state.writes.run(write)
        except ReplyError as exc:
            raise ClientException(str(exc)) from None
        except (WriteUnavailable, OperationalError):
            raise ServiceUnavailableException("temporary problem storing the reply, please retry") from None
        if written is None:
            raise NotFoundException("conversation not found")
        wake = getattr(state, "wake_outbox", None)
        if wake is not None:
            wake()  # same process (gateway serve): send now rather than at the next poll
        return _message_out(written[0], written[1], None)
