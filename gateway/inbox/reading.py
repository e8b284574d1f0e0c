"""What a studio reads: its conversation list and one conversation with its messages, in the
shapes the API answers with. Plain functions on a connection, scoped to one studio.

The HTTP API and the operators' `gateway support read` both call these, so support sees
exactly what the studio sees and no more: held and rejected messages stay out of a
conversation, and another studio's ids are simply not found. Deleted conversations and
messages are left out everywhere (gateway/access/visibility.py).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, Connection, Integer, Select, and_, bindparam, func, literal_column, or_, select

from gateway.store.db import result_processor
from gateway.store.paging import BadCursor, Order, decode_cursor, encode_cursor, keyset_page  # noqa: F401 (BadCursor: callers' import)
from gateway.store.prepared import Prepared
from gateway.store.tables import CONVERSATION, GUEST, MESSAGE
from gateway.store.tables import OUTBOUND_JOB
from gateway.store.tables import ATTACHMENT
from gateway.access.visibility import LIVE_CONVERSATION, LIVE_MESSAGE, SHOWN_MESSAGE
from gateway.inbox.html_view import html_view


CONVERSATIONS = Order(id=CONVERSATION.c.id, sort=CONVERSATION.c.last_message_at)
MESSAGES = Order(id=MESSAGE.c.id, sort=MESSAGE.c.received_at)
_ALL = 2**31  # "no limit" for one page of messages


class PersonOut(msgspec.Struct):
    email: str
    name: str


class GuestOut(msgspec.Struct):
    id: int             # for GET /api/v1/guests/{id} and the guest's erasure
    email: str
    name: str


class AttachmentOut(msgspec.Struct):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool


class AuthenticationOut(msgspec.Struct):
    spf: str
    dkim: str
    dmarc: str
    results: str                    # the Authentication-Results value (RFC 8601)


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
    # `html` left out the sources of remote images (tracking pixels); ask with ?images=remote
    remote_images_blocked: bool = False
    # Who sent it (inbound only): SPF, DKIM and DMARC as checked on receipt or as the provider
    # reported them, and the RFC 8601 Authentication-Results summary they were read from.
    authentication: AuthenticationOut | None = None


class ConversationOut(msgspec.Struct):
    id: int
    subject: str
    status: str
    guest: GuestOut
    message_count: int
    last_message_at: datetime
    created_at: datetime
    unread: bool
    # Anything in this answer changed then (new message, read, status, deleted or restored):
    # the newest `updated_at` a client holds is the `updated_since` of its next catch-up.
    updated_at: datetime
    deleted: bool                   # true only with updated_since: it went into the trash since


class ConversationDetailOut(ConversationOut):
    held_count: int
    messages: list[MessageOut]      # one page, oldest first; the newest page comes first
    next_cursor: str | None = None  # the page of older messages, when there is one


class ConversationList(msgspec.Struct):
    items: list[ConversationOut]
    next_cursor: str | None = None


class MessageList(msgspec.Struct):
    items: list[MessageOut]         # one page, oldest first; the newest page comes first
    next_cursor: str | None = None  # the page of older messages, when there is one


def message_out(m: Any, attachments: list[AttachmentOut], error: str | None, *,
                remote_images: bool = False) -> MessageOut:
    """A message row as the API shows it; `remote_images` lets the HTML load them."""
    html = html_view(m.html, remote_images=remote_images)
    return MessageOut(
        id=m.id, direction=m.direction, state=m.state, from_=PersonOut(email=m.from_email, name=m.from_name),
        to=_people(m.to_json), cc=_people(m.cc_json), subject=m.subject, text=m.text, full_text=m.full_text,
        html=html.html, message_id=m.message_id, in_reply_to=m.in_reply_to, received_at=m.received_at,
        sent_at=m.sent_at, thread_rule=m.thread_rule, automatic=m.automatic, auto_kind=m.auto_kind,
        delivery=m.delivery, delivery_error=error, attachments=attachments,
        remote_images_blocked=html.remote_images_blocked,
        authentication=authentication_out(getattr(m, "authentication_results", None)))


def authentication_out(results: str | None) -> AuthenticationOut | None:
    """The method results of a summary we wrote (gateway/inbound/authentication.Verdicts.summary):
    "id; spf=pass smtp.mailfrom=...; dkim=none; dmarc=fail (...) header.from=..."."""
    if not results:
        return None
    found = {"spf": "none", "dkim": "none", "dmarc": "none"}
    for clause in results.split(";")[1:]:
        method, _, rest = clause.strip().partition("=")
        if method in found:
            found[method] = rest.split(" ", 1)[0].strip()
    return AuthenticationOut(spf=found["spf"], dkim=found["dkim"], dmarc=found["dmarc"], results=results)


def attachment_out(a: Any) -> AttachmentOut:
    return AttachmentOut(id=a.id, filename=a.filename, content_type=a.content_type, size=a.size,
                         sha256=a.sha256, inline=a.inline)


def _people(raw: str) -> list[PersonOut]:
    return [PersonOut(email=p.get("email", ""), name=p.get("name", "")) for p in json.loads(raw or "[]")]


def _conversation(row: Any) -> ConversationOut:
    return ConversationOut(id=row.id, subject=row.subject, status=row.status,
                           guest=GuestOut(id=row.guest_id, email=row.guest_email, name=row.guest_name),
                           message_count=row.message_count, last_message_at=row.last_message_at,
                           created_at=row.created_at,
                           unread=row.read_at is None or row.last_message_at > row.read_at,
                           updated_at=row.updated_at, deleted=row.deleted_at is not None)


_CONVERSATION_COLUMNS = (CONVERSATION.c.id, CONVERSATION.c.subject, CONVERSATION.c.status,
                         CONVERSATION.c.message_count, CONVERSATION.c.last_message_at,
                         CONVERSATION.c.created_at, CONVERSATION.c.read_at, CONVERSATION.c.guest_id,
                         CONVERSATION.c.updated_at, CONVERSATION.c.deleted_at,
                         GUEST.c.email.label("guest_email"),
                         GUEST.c.name.label("guest_name"))


def list_conversations(conn: Connection, studio_id: int, *, limit: int = 50, status: str | None = None,
                       unread: bool | None = None, q: str | None = None, cursor: str | None = None,
                       updated_since: datetime | None = None) -> ConversationList:
    """Newest activity first; `next_cursor` fetches the page after this one (BadCursor if forged).

    With `updated_since`, only conversations changed at or after it (a client catching up
    after being offline), and deleted ones among them too, marked `deleted`: otherwise the
    client could never learn that a conversation it holds went into the trash."""
    if q is None:  # every list but a search: one prepared statement per shape of the query
        return _listed(conn, studio_id, limit=limit, status=status, unread=unread, cursor=cursor,
                       updated_since=updated_since)
    query = _filtered(select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                      .where(CONVERSATION.c.studio_id == studio_id),
                      live=updated_since is None, unread=unread)
    if updated_since is not None:
        query = query.where(CONVERSATION.c.updated_at >= updated_since)
    if status is not None:
        query = query.where(CONVERSATION.c.status == status)
    needle = q.lower()
    query = query.where(func.lower(CONVERSATION.c.subject).contains(needle, autoescape=True)
                        | func.lower(GUEST.c.email).contains(needle, autoescape=True)
                        | func.lower(GUEST.c.name).contains(needle, autoescape=True))
    page = keyset_page(conn, query, CONVERSATIONS, limit=limit, cursor=cursor)
    return ConversationList(items=[_conversation(r) for r in page.items], next_cursor=page.next_cursor)


def _filtered(query: Select[Any], *, live: bool, unread: bool | None) -> Select[Any]:
    """The filters both ways of listing write alike: they take no value."""
    if live:
        query = query.where(LIVE_CONVERSATION)
    if unread is not None:
        query = query.where(_UNREAD if unread else ~_UNREAD)
    return query


_UNREAD = CONVERSATION.c.read_at.is_(None) | (CONVERSATION.c.last_message_at > CONVERSATION.c.read_at)
_DATETIMES = ("last_message_at", "created_at", "read_at", "updated_at", "deleted_at")


@lru_cache(maxsize=64)
def _list_statement(live: bool, status: bool, unread: bool | None, after: bool) -> Prepared:
    """The list without a search, built and compiled once per shape (gateway/store/prepared.py):
    the inbox page and the API's list run it on every request, and building, keying and
    processing it in SQLAlchemy cost several times what the database took (bench/web_inbox.py).
    The same filters and order as keyset_page writes, with the values as parameters."""
    query = _filtered(select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                      .where(CONVERSATION.c.studio_id == bindparam("studio_id")),
                      live=live, unread=unread)
    if not live:
        query = query.where(CONVERSATION.c.updated_at >= bindparam("updated_since", type_=CONVERSATION.c.updated_at.type))
    if status:
        query = query.where(CONVERSATION.c.status == bindparam("status"))
    if after:
        at = bindparam("at", type_=CONVERSATION.c.last_message_at.type)
        query = query.where(or_(CONVERSATION.c.last_message_at < at,
                                and_(CONVERSATION.c.last_message_at == at, CONVERSATION.c.id < bindparam("row_id"))))
    return Prepared(query.order_by(CONVERSATION.c.last_message_at.desc(), CONVERSATION.c.id.desc())
                    .limit(bindparam("limit", type_=Integer)))


def _listed(conn: Connection, studio_id: int, *, limit: int, status: str | None, unread: bool | None,
            cursor: str | None, updated_since: datetime | None) -> ConversationList:
    params: dict[str, Any] = {"studio_id": studio_id, "limit": limit + 1}
    if cursor is not None:
        params["row_id"], params["at"] = decode_cursor(CONVERSATIONS, cursor)
    if status is not None:
        params["status"] = status
    if updated_since is not None:
        params["updated_since"] = updated_since
    statement = _list_statement(updated_since is None, status is not None, unread, cursor is not None)
    rows = statement.execute(conn, **params).fetchall()
    read = [result_processor(conn, CONVERSATION.c[name]) for name in _DATETIMES]
    items = [_conversation(_Row(row, read)) for row in rows[:limit]]
    return ConversationList(items=items, next_cursor=encode_cursor(CONVERSATIONS, items[-1]) if len(rows) > limit else None)


class _Row:
    """A driver row of the list statement with the attributes `_conversation` reads, its times
    read as SQLAlchemy would (store/db.result_processor)."""

    __slots__ = ("created_at", "deleted_at", "guest_email", "guest_id", "guest_name", "id", "last_message_at",
                 "message_count", "read_at", "status", "subject", "updated_at")

    def __init__(self, row: Any, read: list[Any]) -> None:
        (self.id, self.subject, self.status, self.message_count, last_message_at, created_at, read_at,
         self.guest_id, updated_at, deleted_at, self.guest_email, self.guest_name) = row
        self.last_message_at = read[0](last_message_at)
        self.created_at = read[1](created_at)
        self.read_at = read[2](read_at)
        self.updated_at = read[3](updated_at)
        self.deleted_at = read[4](deleted_at)


def _of_conversation(studio_id: int, conversation_id: int) -> ColumnElement[bool]:
    """The messages of one conversation of the studio, read by ix_message_conversation. The
    studio's condition carries a unary plus, which keeps it but takes it off any index
    (sqlite.org/optoverview.html, "disqualifying WHERE clause terms"): SQLite, which keeps no
    statistics unless ANALYZE runs, preferred ix_message_studio_deleted's two equalities to the
    conversation index's one and read every message of the studio (9-12 ms a statement at
    10,000 messages, bench/web_inbox.py's conversation page). PostgreSQL plans by statistics
    and reads it the same; the conversation index is what it chose already."""
    return and_(MESSAGE.c.conversation_id == conversation_id,
                literal_column("+message.studio_id", Integer) == studio_id)


def message_page(conn: Connection, studio_id: int, conversation_id: int, *, limit: int,
                 cursor: str | None = None, remote_images: bool = False) -> MessageList:
    """One page of the conversation's visible messages: the newest page first, each page
    oldest first as a messenger shows it; `next_cursor` for the page of older messages
    (BadCursor if forged). The caller has checked that the conversation is the studio's."""
    query = select(MESSAGE).where(_of_conversation(studio_id, conversation_id), MESSAGE.c.state == "visible",
                                  LIVE_MESSAGE)
    page = keyset_page(conn, query, MESSAGES, limit=limit, cursor=cursor)
    return MessageList(items=_messages_out(conn, studio_id, page.items[::-1], remote_images),
                       next_cursor=page.next_cursor)


def find_message(conn: Connection, studio_id: int, message_id: int) -> MessageOut | None:
    """One visible message of a shown conversation of the studio (a reply's `Location`), or None."""
    row = conn.execute(select(MESSAGE).where(MESSAGE.c.id == message_id, MESSAGE.c.studio_id == studio_id,
                                             MESSAGE.c.state == "visible", SHOWN_MESSAGE)).first()
    return None if row is None else _messages_out(conn, studio_id, [row], False)[0]


def _messages_out(conn: Connection, studio_id: int, messages: list[Any], remote_images: bool) -> list[MessageOut]:
    """Message rows as the API shows them, with their attachments and delivery errors."""
    errors: dict[int, str | None] = {}
    outbound = [m.id for m in messages if m.direction == "outbound"]
    if outbound:
        errors = dict(conn.execute(select(OUTBOUND_JOB.c.message_id, OUTBOUND_JOB.c.last_error).where(
            OUTBOUND_JOB.c.studio_id == studio_id, OUTBOUND_JOB.c.message_id.in_(outbound))).all())
    attachments: dict[int, list[AttachmentOut]] = {}
    if messages:
        for a in conn.execute(select(ATTACHMENT).where(
                ATTACHMENT.c.studio_id == studio_id,
                ATTACHMENT.c.message_id.in_([m.id for m in messages])).order_by(ATTACHMENT.c.id)):
            attachments.setdefault(a.message_id, []).append(attachment_out(a))
    return [message_out(m, attachments.get(m.id, []), errors.get(m.id), remote_images=remote_images)
            for m in messages]


def find_conversation(conn: Connection, studio_id: int, conversation_id: int) -> ConversationOut | None:
    """The studio's shown conversation, or None (another studio's, deleted, or no such id)."""
    row = conn.execute(
        select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
        .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION)
    ).first()
    return None if row is None else _conversation(row)


def conversation_detail(conn: Connection, studio_id: int, conversation_id: int, *, limit: int | None = None,
                        cursor: str | None = None, remote_images: bool = False) -> ConversationDetailOut | None:
    """The conversation with the newest page of its visible messages (message_page), or None
    when it is not the studio's. A conversation can grow to thousands of messages, so they
    come in pages; `next_cursor` continues on GET .../messages as well. `limit` None: all of
    them (an operator's `gateway support read`)."""
    base = find_conversation(conn, studio_id, conversation_id)
    if base is None:
        return None
    page = message_page(conn, studio_id, conversation_id, limit=_ALL if limit is None else limit, cursor=cursor,
                        remote_images=remote_images)
    held = conn.execute(select(func.count()).select_from(MESSAGE).where(
        _of_conversation(studio_id, conversation_id), MESSAGE.c.state == "held", LIVE_MESSAGE)).scalar_one()
    return ConversationDetailOut(
        **msgspec.structs.asdict(base), held_count=held, messages=page.items, next_cursor=page.next_cursor)
