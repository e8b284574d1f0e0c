"""A studio's reply: the outbound message row and its outbox job, committed together.

The API only calls `create_reply`; sending happens later in the outbox worker, so the studio's
app gets its answer (202) at once and a relay outage never loses a reply. The Message-ID is
chosen and stored here, before anything is sent: the guest's answer to it must thread back
even if the worker is restarted between sending and recording.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from gateway.eventlog import MESSAGE_CREATED, record as record_event
from gateway.store.blobs import blob_store
from gateway.mail.subjects import reply_subject
from gateway.store.tables import CONVERSATION, GUEST, MESSAGE, STUDIO
from gateway.mail.files import plain_media_type, sanitise_filename
from gateway.store.models import utcnow
from gateway.store.db import DriverSQL, bind_processor
from gateway.store.prepared import Prepared
from gateway.settings import Settings
from gateway.access.visibility import LIVE_CONVERSATION, LIVE_MESSAGE
from gateway.store.tables import ATTACHMENT, OUTBOUND_JOB

MAX_REFERENCES = 20
MAX_TEXT = 100_000
# check_text's rule as a JSON-schema pattern, for the API document: something besides white
# space, and no NUL.
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"


class ReplyError(ValueError):
    """The reply cannot be made as asked; the message is safe to show (answered 400).

    `code` is the stable name the API answers with (`reply_text_empty`): apps switch on it,
    so it never changes once released, whatever the wording of the message."""

    def __init__(self, message: str, code: str = "reply_invalid") -> None:
        super().__init__(message)
        self.code = code


class ReplyTooLarge(ReplyError):
    """An attachment, or all of them, beyond what a message may carry (answered 413)."""


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Reply:
    message_row_id: int
    message_id: str
    row: dict[str, Any]  # the message as stored (every column the API shows), without reading it back


@dataclass(frozen=True)
class Thread:
    """What a reply takes from its conversation and from the guest message it answers.

    create_reply reads it; a caller that wrote those rows a moment ago in the same transaction
    (the inquiry form opens the conversation and stores the guest's message, then confirms it)
    passes it instead: two reads fewer, each a round trip on PostgreSQL (bench/form_submit.py)."""

    subject: str
    guest: tuple[str, str]            # (address, name)
    studio: tuple[str, str]           # (slug, name)
    parent: tuple[str, str] | None    # (Message-ID, references_json) of the message answered
    # Set when the caller opened the conversation a moment ago already counting this reply
    # (message_count, last_message_at and updated_at at this time): the reply is stored at
    # that time and the conversation is left as it is, one UPDATE fewer.
    opened_at: datetime | None = None


# The statements of a reply, compiled once (gateway/store/prepared.py): at twenty studio apps replying
# at once, building them per call cost more CPU than SQLite took to run them.
_CONVERSATION = Prepared(
    select(CONVERSATION.c.id, CONVERSATION.c.subject, GUEST.c.email, GUEST.c.name, STUDIO.c.slug, STUDIO.c.name)
    .join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id).join(STUDIO, STUDIO.c.id == CONVERSATION.c.studio_id)
    .where(CONVERSATION.c.id == bindparam("conversation_id"), CONVERSATION.c.studio_id == bindparam("studio_id"),
           LIVE_CONVERSATION))
# The latest guest message, which the reply answers (index ix_message_conversation_inbound).
_PARENT = Prepared(
    select(MESSAGE.c.message_id, MESSAGE.c.references_json)
    .where(MESSAGE.c.conversation_id == bindparam("conversation_id"), MESSAGE.c.studio_id == bindparam("studio_id"),
           MESSAGE.c.direction == "inbound", MESSAGE.c.state == "visible", LIVE_MESSAGE)
    .order_by(MESSAGE.c.received_at.desc(), MESSAGE.c.id.desc()).limit(1))
_MESSAGE_COLUMNS = ("studio_id", "conversation_id", "direction", "state", "from_email", "from_name", "to_json",
                    "cc_json", "subject", "text", "full_text", "html", "message_id", "in_reply_to",
                    "references_json", "received_at", "thread_rule", "automatic", "auto_kind", "delivery",
                    "parser", "defects_json")
_INSERT_MESSAGE = Prepared(insert(MESSAGE).values({name: bindparam(name, type_=MESSAGE.c[name].type)
                                                   for name in _MESSAGE_COLUMNS}).returning(MESSAGE.c.id))
_INSERT_JOB = Prepared(insert(OUTBOUND_JOB).values(
    studio_id=bindparam("studio_id"), message_id=bindparam("message_id"), status="queued", attempts=0,
    created_at=bindparam("created_at", type_=OUTBOUND_JOB.c.created_at.type),
    next_attempt_at=bindparam("next_attempt_at", type_=OUTBOUND_JOB.c.next_attempt_at.type)))
# Shared with the other automatic mail queued in bulk (the notifications: gateway/outbound/notifications.py).
INSERT_JOB, MESSAGE_COLUMNS = _INSERT_JOB, _MESSAGE_COLUMNS
# PostgreSQL: the message and its outbound job in one statement, one round trip instead of two
# (each inquiry form post queues a confirmation in the API's group commit, whose statements
# run one after another on one connection: bench/form_submit.py).
_QUEUE_PG = DriverSQL(
    f"WITH m AS (INSERT INTO message ({', '.join(_MESSAGE_COLUMNS)}) VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))}) "
    "RETURNING id) INSERT INTO outbound_job (studio_id, message_id, status, attempts, created_at, next_attempt_at) "
    "SELECT ?, m.id, 'queued', 0, ?, ? FROM m RETURNING message_id")


def _activity(read: bool) -> Prepared:
    """The conversation's activity after a reply; `read` also marks it read (answering is reading)."""
    values = {"last_message_at": bindparam("now", type_=CONVERSATION.c.last_message_at.type),
              "updated_at": bindparam("now", type_=CONVERSATION.c.updated_at.type)}
    if read:
        values["read_at"] = bindparam("now", type_=CONVERSATION.c.read_at.type)
    return Prepared(update(CONVERSATION).where(CONVERSATION.c.id == bindparam("conversation_id"))
                    .values(**values, message_count=CONVERSATION.c.message_count + 1))


_ACTIVITY, _ACTIVITY_READ = _activity(read=False), _activity(read=True)


def new_message_id(domain: str, conversation_id: int) -> str:
    """A fresh, unguessable Message-ID under our domain (without angle brackets, as stored)."""
    return f"{secrets.token_hex(12)}.c{conversation_id}@{domain}"


def bounded_references(chain: list[str]) -> list[str]:
    """RFC 5322 3.6.4 allows trimming long chains; keep the first (the thread's root) and the
    most recent ones, which are what clients thread by."""
    if len(chain) <= MAX_REFERENCES:
        return chain
    return [chain[0], *chain[-(MAX_REFERENCES - 1):]]


def check_text(text: str) -> str:
    if "\x00" in text:
        raise ReplyError("text must not contain NUL characters", "reply_text_nul")
    if not text.strip():
        raise ReplyError("text must not be empty", "reply_text_empty")
    if len(text) > MAX_TEXT:
        raise ReplyError(f"text is longer than {MAX_TEXT} characters", "reply_text_too_long")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def check_uploads(uploads: list[Upload], settings: Settings) -> list[Upload]:
    """Attachments as they will be sent: safe names, plain media types, within the limits."""
    checked = []
    for index, upload in enumerate(uploads):
        if len(upload.data) > settings.max_attachment_size:
            raise ReplyTooLarge(f"attachment {upload.filename!r} is larger than {settings.max_attachment_size} bytes",
                               "attachment_too_large")
        media = plain_media_type(upload.content_type)
        checked.append(Upload(sanitise_filename(upload.filename, media, index + 1), media, upload.data))
    if sum(len(u.data) for u in checked) * 4 // 3 > settings.smtp_max_message_size:
        raise ReplyTooLarge("attachments together are larger than a message may be", "attachments_too_large")
    return checked


def read_thread(conn: Connection, studio_id: int, conversation_id: int) -> Thread | None:
    """The conversation's Thread; None if it is not the studio's (or is deleted)."""
    conversation = _CONVERSATION.execute(conn, conversation_id=conversation_id, studio_id=studio_id).fetchone()
    if conversation is None:
        return None
    _, subject, guest_email, guest_name, slug, studio_name = conversation
    parent = _PARENT.execute(conn, conversation_id=conversation_id, studio_id=studio_id).fetchone()
    return Thread(subject, (guest_email, guest_name), (slug, studio_name),
                  None if parent is None else (parent[0], parent[1]))


def create_reply(conn: Connection, *, studio_id: int, conversation_id: int, text: str,
                 settings: Settings, auto_kind: str | None = None,
                 uploads: list[Upload] | None = None, subject: str | None = None,
                 recipient: tuple[str, str] | None = None, thread: Thread | None = None,
                 events: list[tuple[str, datetime, dict[str, Any]]] | None = None) -> Reply | None:
    """Queue a reply in the caller's transaction; None if the conversation is not the studio's
    (or is deleted).

    `auto_kind` marks automatic mail (an acknowledgement): sent with Auto-Submitted, and not
    counted as the studio having read the conversation. `subject` replaces "Re: <the
    conversation's>", and `recipient` (address, name) the conversation's guest: an account
    deletion's code must reach the registered owner address whoever wrote the request.
    `thread`: the conversation as the caller has just written it (see Thread), else read.
    `events`: the reply's event is appended there for the caller to record with its own
    (gateway/eventlog.record_many), else recorded here."""
    text = check_text(text)
    known = thread or read_thread(conn, studio_id, conversation_id)
    if known is None:
        return None
    slug, studio_name = known.studio
    references: list[str] = []
    in_reply_to = None
    if known.parent is not None:
        in_reply_to, parent_references = known.parent
        references = bounded_references([*json.loads(parent_references or "[]"), in_reply_to])
    to_email, to_name = recipient or known.guest
    now = known.opened_at or utcnow()
    message_id = new_message_id(settings.mail_domain, conversation_id)
    row = {
        "studio_id": studio_id, "conversation_id": conversation_id, "direction": "outbound", "state": "visible",
        "from_email": f"{slug}@{settings.mail_domain}", "from_name": studio_name,
        "to_json": json.dumps([{"email": to_email, "name": to_name}]), "cc_json": "[]",
        "subject": reply_subject(known.subject) if subject is None else subject,
        "text": text, "full_text": text, "html": None,
        "message_id": message_id, "in_reply_to": in_reply_to,
        "references_json": json.dumps(references), "received_at": now,
        "thread_rule": auto_kind or "reply", "automatic": auto_kind is not None, "auto_kind": auto_kind,
        "delivery": "queued", "parser": "", "defects_json": "[]",
    }
    queued = conn.dialect.name == "postgresql"
    if queued:
        when = bind_processor(conn, OUTBOUND_JOB.c.created_at)(now)
        row_id = _QUEUE_PG(conn, [*(bind_processor(conn, MESSAGE.c[name])(row[name]) for name in _MESSAGE_COLUMNS),
                                  studio_id, when, when]).fetchone()[0]
    else:
        row_id = _INSERT_MESSAGE.execute(conn, **row).fetchone()[0]
    if uploads:
        digests = blob_store.put_many(conn, [u.data for u in uploads])
        conn.execute(insert(ATTACHMENT), [
            {"studio_id": studio_id, "message_id": row_id, "filename": u.filename[:255],
             "content_type": u.content_type[:255], "size": len(u.data), "sha256": digest, "inline": False,
             "content_id": None} for u, digest in zip(uploads, digests)])
    if not queued:
        _INSERT_JOB.execute(conn, studio_id=studio_id, message_id=row_id, created_at=now, next_attempt_at=now)
    # Answering is reading; an automatic message is not the studio having read anything.
    if known.opened_at is None:
        (_ACTIVITY if auto_kind is not None else _ACTIVITY_READ).execute(conn, conversation_id=conversation_id, now=now)
    event = {"conversation_id": conversation_id, "message_id": row_id, "direction": "outbound"}
    if events is None:
        record_event(conn, studio_id, MESSAGE_CREATED, now, **event)
    else:
        events.append((MESSAGE_CREATED, now, event))
    return Reply(row_id, message_id, row | {"id": row_id, "sent_at": None})
