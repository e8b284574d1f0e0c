"""What a studio reads: its conversation list and one conversation with its messages, in the
shapes the API answers with. Plain functions on a connection, scoped to one studio.

The HTTP API and the operators' `gateway support read` both call these, so support sees
exactly what the studio sees and no more: held and rejected messages stay out of a
conversation, and another studio's ids are simply not found. Deleted conversations and
messages are left out everywhere (gateway/access/visibility.py).
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any

import msgspec
from sqlalchemy import Connection, func, select

from gateway.store.tables import CONVERSATION, GUEST, MESSAGE
from gateway.store.tables import OUTBOUND_JOB
from gateway.store.tables import ATTACHMENT
from gateway.access.visibility import LIVE_CONVERSATION, LIVE_MESSAGE
from gateway.inbox.html_view import html_view


class BadCursor(ValueError):
    """A pagination cursor this API did not hand out."""


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


class ConversationDetailOut(ConversationOut):
    held_count: int
    messages: list[MessageOut]      # one page, oldest first; the newest page comes first
    next_cursor: str | None = None  # the page of older messages, when there is one


class ConversationList(msgspec.Struct):
    items: list[ConversationOut]
    next_cursor: str | None = None


def _encode_cursor(last_message_at: datetime, conversation_id: int) -> str:
    return base64.urlsafe_b64encode(f"{last_message_at.isoformat()}|{conversation_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, _, conversation_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        parsed = datetime.fromisoformat(at)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)), int(conversation_id)
    except (ValueError, UnicodeDecodeError):
        raise BadCursor("cursor is not one this API handed out") from None


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
                           unread=row.read_at is None or row.last_message_at > row.read_at)


_CONVERSATION_COLUMNS = (CONVERSATION.c.id, CONVERSATION.c.subject, CONVERSATION.c.status,
                         CONVERSATION.c.message_count, CONVERSATION.c.last_message_at,
                         CONVERSATION.c.created_at, CONVERSATION.c.read_at, CONVERSATION.c.guest_id,
                         GUEST.c.email.label("guest_email"),
                         GUEST.c.name.label("guest_name"))


def list_conversations(conn: Connection, studio_id: int, *, limit: int = 50, status: str | None = None,
                       unread: bool | None = None, q: str | None = None,
                       cursor: str | None = None) -> ConversationList:
    """Newest activity first; `next_cursor` fetches the page after this one (BadCursor if forged)."""
    query = (select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
             .where(CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION))
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
    rows = conn.execute(query.order_by(CONVERSATION.c.last_message_at.desc(), CONVERSATION.c.id.desc())
                        .limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(rows[-1].last_message_at, rows[-1].id) if more else None
    return ConversationList(items=[_conversation(r) for r in rows], next_cursor=next_cursor)


def conversation_detail(conn: Connection, studio_id: int, conversation_id: int, *, limit: int | None = None,
                        cursor: str | None = None, remote_images: bool = False) -> ConversationDetailOut | None:
    """The conversation with its visible messages, or None when it is not the studio's.

    A conversation can grow to thousands of messages, so they come in pages of `limit`
    (all of them when None): the newest page first, each page oldest first as a messenger
    shows it, and `next_cursor` for the page of older messages, in the conversation list's
    cursor style (BadCursor if forged)."""
    row = conn.execute(
        select(*_CONVERSATION_COLUMNS).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
        .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.studio_id == studio_id, LIVE_CONVERSATION)
    ).first()
    if row is None:
        return None
    query = select(MESSAGE).where(MESSAGE.c.conversation_id == conversation_id,
                                  MESSAGE.c.studio_id == studio_id, MESSAGE.c.state == "visible", LIVE_MESSAGE)
    if cursor is not None:
        before_at, before_id = _decode_cursor(cursor)
        query = query.where((MESSAGE.c.received_at < before_at)
                            | ((MESSAGE.c.received_at == before_at) & (MESSAGE.c.id < before_id)))
    query = query.order_by(MESSAGE.c.received_at.desc(), MESSAGE.c.id.desc())
    if limit is not None:
        query = query.limit(limit + 1)
    messages = conn.execute(query).all()
    more = limit is not None and len(messages) > limit
    messages = messages[:limit][::-1] if limit is not None else messages[::-1]
    next_cursor = _encode_cursor(messages[0].received_at, messages[0].id) if more else None
    held = conn.execute(select(func.count()).select_from(MESSAGE).where(
        MESSAGE.c.conversation_id == conversation_id, MESSAGE.c.studio_id == studio_id,
        MESSAGE.c.state == "held", LIVE_MESSAGE)).scalar_one()
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
    base = _conversation(row)
    return ConversationDetailOut(
        **msgspec.structs.asdict(base), held_count=held,
        messages=[message_out(m, attachments.get(m.id, []), errors.get(m.id), remote_images=remote_images)
                  for m in messages],
        next_cursor=next_cursor,
    )
