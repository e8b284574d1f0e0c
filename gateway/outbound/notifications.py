"""Telling a studio's profiles about guest mail: a mail at once, or an hourly digest.

`notify` is a "message threaded" reaction (gateway/events.py): inside the transaction that
stored the guest's message it decides, per connected profile, whether to queue a notification
mail now (an outbound message with its outbox job: the same retries and DKIM as a reply, and a
Message-ID chosen before the first attempt, so a send repeated after a crash carries the same
one) or to leave a pending row for the digest. It never sends anything itself: a relay outage
delays notifications, never mail intake.

Never a loop, never spam:
- nothing for automatic mail (auto-replies, bounces, lists) or mail held for the studio;
- the mails carry `Auto-Submitted: auto-generated` (RFC 3834; gateway/outbound/compose.py);
- at most one mail per profile per conversation per STORM_WINDOW: the rest waits for the digest;
- quiet hours (in the studio's time zone) and a paused profile hold everything back.

Intake first: while guest mail is still waiting to be threaded (a burst), the notifications
of what was threaded are queued with their send time HOLD_WHILE_BUSY ahead, and the chunk that
finds nothing more waiting moves every held one to now. Mail in is what must not slow down
(three profiles mean three outgoing mails to compose, sign and send per guest message, on the
cores the processor needs: bench/notifications.py measured end to end at 0.59-0.65 of the
figure without notifications); a studio hears of a burst when it has been threaded, and never
more than HOLD_WHILE_BUSY late.

A notification mail belongs to no conversation (its message row has no conversation_id), so it
never shows in the studio's threads, and a bounce of it opens none (gateway/inbound/threader.py
marks it bounced; gateway/outbound/notify_preferences.py pauses the profile after a few). Its
Reply-To is the profile's signed notification address for the conversation
(gateway/mail/addresses.py); what comes back there is handled by gateway/outbound/notify_answers.py.

The bodies are rendered only when the outbox composes them (a LateBodies hook wired by
gateway/runtime.py), from the guest's message as it is then: a message erased meanwhile is not
mailed out.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update

from gateway.events import Chunk, Threaded
from gateway.mail.addresses import digest_address, notification_address
from gateway.outbound.notify_preferences import PAUSE_AFTER_BOUNCES, bounced_since, default_mode, in_quiet_hours
from gateway.outbound.render import Rendered, Renderer
from gateway.outbound.replies import INSERT_JOB, MESSAGE_COLUMNS, new_message_id
from gateway.settings import Settings
from gateway.store.db import write_tx
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import (ATTACHMENT, CONVERSATION, GUEST, INBOUND, MESSAGE, NOTIFICATION,
                                  NOTIFICATION_PREFERENCE, OUTBOUND_JOB, PROFILE, STUDIO)

log = logging.getLogger(__name__)
NOTIFICATION_MAIL = "notification"          # Message.auto_kind of a notification
DIGEST_MAIL = "notification_digest"         # ... and of a digest
STORM_WINDOW = timedelta(minutes=5)
DROPPED = 0   # mail_ref of a pending row whose profile chose "off" (or left) before its digest
_SUBJECTS = {"de": "Neue Nachricht von {guest}: {subject}", "en": "New message from {guest}: {subject}"}
_DIGEST_SUBJECTS = {"de": "{studio}: {count} Unterhaltungen mit neuer Post",
                    "en": "{studio}: {count} conversations with new mail"}
_MEMO = "notifications"
HOLD_WHILE_BUSY = timedelta(seconds=30)
_BUSY = "notifications.busy"

_AUDIENCE = (
    select(PROFILE.c.id, PROFILE.c.email, PROFILE.c.name, PROFILE.c.role, NOTIFICATION_PREFERENCE.c.mode,
           NOTIFICATION_PREFERENCE.c.quiet_from, NOTIFICATION_PREFERENCE.c.quiet_to,
           NOTIFICATION_PREFERENCE.c.resumed_at)
    .select_from(PROFILE.outerjoin(NOTIFICATION_PREFERENCE, NOTIFICATION_PREFERENCE.c.profile_id == PROFILE.c.id))
)


# The statements `notify` runs for every guest message, inside the processor's write transaction:
# bound by gateway/store/prepared.Prepared, as the reply's are (Core's cache keys and parameter
# processing cost more than SQLite takes to run them).
_ABOUT = Prepared(select(CONVERSATION.c.subject, GUEST.c.email)
                  .join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                  .where(CONVERSATION.c.id == bindparam("conversation_id")))
_INSERT_NOTIFICATIONS = Prepared(insert(NOTIFICATION).values(
    {name: bindparam(name, type_=NOTIFICATION.c[name].type)
     for name in ("studio_id", "profile_id", "conversation_id", "message_ref", "created_at", "mail_ref", "immediate")}))
_TOLD_SINCE = Prepared(select(NOTIFICATION.c.id).where(
    NOTIFICATION.c.profile_id == bindparam("profile_id"),
    NOTIFICATION.c.conversation_id == bindparam("conversation_id"),
    NOTIFICATION.c.immediate.is_(True),
    NOTIFICATION.c.created_at > bindparam("since", type_=NOTIFICATION.c.created_at.type)).limit(1))


# Guest mail stored and not yet claimed by a processor (ix_inbound_mail_status_id).
_MAIL_WAITING = Prepared(select(INBOUND.c.id).where(INBOUND.c.status == "pending").limit(1))
# The held notifications: never tried (a retry has attempts >= 1), due later, in no conversation.
# SKIP LOCKED (PostgreSQL): rows another processor's chunk is releasing are its to release; this
# chunk neither waits for them (it may hold conversation rows that one wants: a deadlock) nor
# needs them.
_HELD = (select(OUTBOUND_JOB.c.id).where(
    OUTBOUND_JOB.c.status == "queued", OUTBOUND_JOB.c.attempts == 0,
    OUTBOUND_JOB.c.next_attempt_at > bindparam("now", type_=OUTBOUND_JOB.c.next_attempt_at.type),
    OUTBOUND_JOB.c.message_id.in_(select(MESSAGE.c.id).where(MESSAGE.c.conversation_id.is_(None),
                                                             MESSAGE.c.auto_kind == NOTIFICATION_MAIL)))
         .with_for_update(skip_locked=True))
_RELEASE_HELD = Prepared(update(OUTBOUND_JOB).where(OUTBOUND_JOB.c.id.in_(_HELD.scalar_subquery()))
                         .values(next_attempt_at=bindparam("now")))


def _send_at(conn: Connection, chunk: Chunk, now: datetime) -> datetime:
    """When this chunk's notifications go out: later while mail waits (see the module's
    docstring), else now, and then the held ones go now too. Asked once per chunk."""
    if _BUSY not in chunk.memo:
        busy = _MAIL_WAITING.execute(conn).fetchone() is not None
        if not busy:
            _RELEASE_HELD.execute(conn, now=now)
        chunk.memo[_BUSY] = busy
    return now + HOLD_WHILE_BUSY if chunk.memo[_BUSY] else now


def _audience(conn: Connection, studio_id: int, mail_domain: str) -> list[Any]:
    """The studio's connected profiles that want to hear anything, with their preferences."""
    rows = conn.execute(_AUDIENCE.where(PROFILE.c.studio_id == studio_id, PROFILE.c.disconnected_at.is_(None)))
    # Never to an address of our own mail domain: the notification would come back in as mail.
    own = "@" + mail_domain.lower()
    return [r for r in rows if (r.mode or default_mode(r.role)) != "off" and not r.email.lower().endswith(own)]


def notify(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction: tell the profiles that want it about a guest's message.

    Only with GATEWAY_PUBLIC_URL: a notification links to the conversation in the web messenger,
    and without the messenger's address there is nowhere to link (as for sign-in links)."""
    if event.automatic or not event.visible or not settings.public_url:
        return
    now = utcnow()
    send_at = _send_at(conn, chunk, now)  # asked of every chunk with guest mail: it also releases
    memo = chunk.memo.setdefault(_MEMO, {})
    if event.studio_id not in memo:   # one look at the studio's profiles (and their pauses) per chunk
        studio = conn.execute(select(STUDIO.c.slug, STUDIO.c.time_zone, STUDIO.c.locale)
                              .where(STUDIO.c.id == event.studio_id)).first()
        audience = [] if studio is None or studio.slug == settings.helpdesk_slug else [
            # the helpdesk's mail is commands it answers itself (gateway/lifecycle/helpdesk_mail.py)
            p for p in _audience(conn, event.studio_id, settings.mail_domain)
            if bounced_since(conn, p.id, p.resumed_at) < PAUSE_AFTER_BOUNCES]
        memo[event.studio_id] = (studio, audience)
    studio, audience = memo[event.studio_id]
    if not audience:
        return
    rows = []
    told_now = [profile for profile in audience
                if (profile.mode or default_mode(profile.role)) == "immediately"
                and not in_quiet_hours(now, studio.time_zone, profile.quiet_from, profile.quiet_to)
                and (event.opened or not _told_recently(conn, profile.id, event.conversation_id, now))]
    mail_refs: dict[int, int] = {}
    if told_now:
        subject = _subject(conn, event, studio.locale)
        refs = _queue_mails(conn, settings, event.studio_id, studio.slug, NOTIFICATION_MAIL, now, subject, [
            (profile, notification_address(settings.secret(), studio.slug, event.studio_id, event.conversation_id,
                                           profile.id, settings.mail_domain)) for profile in told_now],
            send_at=send_at)
        mail_refs = {profile.id: ref for profile, ref in zip(told_now, refs)}
    for profile in audience:
        mail_ref = mail_refs.get(profile.id)
        rows.append({"studio_id": event.studio_id, "profile_id": profile.id, "conversation_id": event.conversation_id,
                     "message_ref": event.message_id, "created_at": now, "mail_ref": mail_ref,
                     "immediate": mail_ref is not None})
    _INSERT_NOTIFICATIONS.execute_many(conn, rows)


def _subject(conn: Connection, event: Threaded, locale: str) -> str:
    """"New message from <guest>: <the conversation's subject>", in the studio's language."""
    subject, email = _ABOUT.execute(conn, conversation_id=event.conversation_id).fetchone()
    language = "en" if locale.lower().startswith("en") else "de"
    return _SUBJECTS[language].format(guest=event.sender_name or email, subject=subject or "–")


def _told_recently(conn: Connection, profile_id: int, conversation_id: int, now: datetime) -> bool:
    """The storm limit: a notification mail about this conversation went to the profile lately."""
    return _TOLD_SINCE.execute(conn, profile_id=profile_id, conversation_id=conversation_id,
                               since=now - STORM_WINDOW).fetchone() is not None


def _queue_mail(conn: Connection, settings: Settings, studio_id: int, slug: str, profile: Any, kind: str,
                now: datetime, subject: str, reply_to: str | None) -> int:
    """An outbound message in no conversation, and its outbox job (one digest)."""
    return _queue_mails(conn, settings, studio_id, slug, kind, now, subject, [(profile, reply_to)])[0]


def _queue_mails(conn: Connection, settings: Settings, studio_id: int, slug: str, kind: str, now: datetime,
                 subject: str, to: list[tuple[Any, str | None]], send_at: datetime | None = None) -> list[int]:
    """An outbound message in no conversation and its outbox job for each (profile, Reply-To),
    in one statement each however many (the profiles told about one guest message); the
    messages' row ids, in `to`'s order. The bodies are rendered at compose time
    (`render_notifications`); the rows keep who, when and the subject."""
    rows = []
    for profile, reply_to in to:
        recipient: dict[str, str] = {"email": profile.email, "name": profile.name or ""}
        if reply_to:
            recipient["reply_to"] = reply_to
        rows.append(dict(
            studio_id=studio_id, conversation_id=None, direction="outbound", state="visible",
            from_email=f"{slug}@{settings.mail_domain}", from_name="", to_json=json.dumps([recipient]), cc_json="[]",
            subject=subject[:900], text="", full_text="", html=None, message_id=new_message_id(settings.mail_domain, 0),
            in_reply_to=None, references_json="[]", received_at=now, thread_rule=kind, automatic=True, auto_kind=kind,
            delivery="queued", parser="", defects_json="[]"))
    # RETURNING promises no order: the Message-IDs (new, unique) say which row is which.
    ids = dict((message_id, row_id) for row_id, message_id in _insert_messages(len(rows)).execute(
        conn, **{f"{name}_{n}": value for n, row in enumerate(rows) for name, value in row.items()}).fetchall())
    row_ids = [int(ids[row["message_id"]]) for row in rows]
    INSERT_JOB.execute_many(conn, [{"studio_id": studio_id, "message_id": row_id, "created_at": now,
                                    "next_attempt_at": send_at or now} for row_id in row_ids])
    return row_ids


_INSERT_MESSAGES: dict[int, Prepared] = {}


def _insert_messages(count: int) -> Prepared:
    """INSERT of `count` message rows returning (id, message_id), built once per count."""
    prepared = _INSERT_MESSAGES.get(count)
    if prepared is None:
        prepared = _INSERT_MESSAGES[count] = Prepared(insert(MESSAGE).values([
            {name: bindparam(f"{name}_{n}", type_=MESSAGE.c[name].type) for name in MESSAGE_COLUMNS}
            for n in range(count)]).returning(MESSAGE.c.id, MESSAGE.c.message_id))
    return prepared


# --- the hourly digest (run by the worker: gateway/runtime.py) -------------------------------------

def send_digests(engine: Engine, settings: Settings, now: datetime | None = None) -> int:
    """Queue one digest per profile with pending notifications, outside its quiet hours; how
    many. Repeatable: rows are marked in the transaction that queues their digest."""
    now = now or utcnow()
    sent = 0
    with write_tx(engine) as conn:
        pending = conn.execute(
            select(NOTIFICATION.c.id, NOTIFICATION.c.studio_id, NOTIFICATION.c.profile_id)
            .where(NOTIFICATION.c.mail_ref.is_(None)).order_by(NOTIFICATION.c.id)).all()
        by_profile: dict[int, list[int]] = defaultdict(list)
        studios: dict[int, int] = {}
        for row in pending:
            by_profile[row.profile_id].append(row.id)
            studios[row.profile_id] = row.studio_id
        for profile_id, ids in by_profile.items():
            profile = conn.execute(_AUDIENCE.add_columns(PROFILE.c.disconnected_at)
                                   .where(PROFILE.c.id == profile_id)).first()
            studio = conn.execute(select(STUDIO.c.slug, STUDIO.c.time_zone, STUDIO.c.name, STUDIO.c.locale)
                                  .where(STUDIO.c.id == studios[profile_id])).first()
            if profile is None or studio is None or profile.disconnected_at is not None \
                    or (profile.mode or default_mode(profile.role)) == "off":
                conn.execute(update(NOTIFICATION).where(NOTIFICATION.c.id.in_(ids)).values(mail_ref=DROPPED))
                continue
            if in_quiet_hours(now, studio.time_zone, profile.quiet_from, profile.quiet_to) \
                    or bounced_since(conn, profile_id, profile.resumed_at) >= PAUSE_AFTER_BOUNCES:
                continue   # waits for the next round outside quiet hours, or for a resume
            count = len(set(conn.execute(select(NOTIFICATION.c.conversation_id)
                                         .where(NOTIFICATION.c.id.in_(ids))).scalars()))
            language = "en" if studio.locale.lower().startswith("en") else "de"
            subject = _DIGEST_SUBJECTS[language].format(studio=studio.name, count=count)
            mail = _queue_mail(conn, settings, studios[profile_id], studio.slug, profile, DIGEST_MAIL, now, subject,
                               digest_address(studio.slug, settings.mail_domain))  # answers bounce: see there
            conn.execute(update(NOTIFICATION).where(NOTIFICATION.c.id.in_(ids)).values(mail_ref=mail))
            sent += 1
    return sent


# --- composing (gateway/outbound/compose.LateBodies, wired by gateway/runtime.py) -------------------

def conversation_link(settings: Settings, conversation_id: int) -> str:
    return f"{(settings.public_url or '').rstrip('/')}/app/c/{conversation_id}"


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB"):
        if size < 1024 or unit == "MB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return f"{size} MB"


def render_notifications(conn: Connection, senders: dict[int, str], settings: Settings, secret: bytes,
                         renderer: Renderer) -> dict[int, Rendered | None]:
    """The bodies of the notification mails among `senders` (message id → the studio's name):
    two statements for the whole batch the outbox composes."""
    found = {row.mail_ref: row for row in conn.execute(
        select(NOTIFICATION.c.mail_ref, MESSAGE.c.id, MESSAGE.c.text, MESSAGE.c.from_name, MESSAGE.c.from_email,
               MESSAGE.c.conversation_id, STUDIO.c.name, STUDIO.c.locale)
        .select_from(NOTIFICATION.join(MESSAGE, and_(MESSAGE.c.id == NOTIFICATION.c.message_ref,
                                                     MESSAGE.c.deleted_at.is_(None)))
                     .join(STUDIO, STUDIO.c.id == NOTIFICATION.c.studio_id))
        .where(NOTIFICATION.c.mail_ref.in_(list(senders))))}
    files: dict[int, list[str]] = defaultdict(list)
    if found:
        for a in conn.execute(select(ATTACHMENT.c.message_id, ATTACHMENT.c.filename, ATTACHMENT.c.size)
                              .where(ATTACHMENT.c.message_id.in_({r.id for r in found.values()}),
                                     ATTACHMENT.c.inline.is_(False)).order_by(ATTACHMENT.c.id)):
            files[a.message_id].append(f"{a.filename} ({_size(a.size)})")
    # The body names no profile: the profiles told about one message share one rendering.
    bodies: dict[int, Rendered] = {}
    for row in found.values():
        if row.id not in bodies:
            bodies[row.id] = renderer.notification(
                locale=row.locale, studio_name=row.name, guest_name=row.from_name or row.from_email, text=row.text,
                files="\n".join(files[row.id]), link=conversation_link(settings, row.conversation_id))
    # A guest message erased (or deleted) meanwhile has no row here: nothing to tell, so the mail
    # is withdrawn (None): not sent, and no failure that would count towards the profile's pause.
    return {mail_ref: bodies[found[mail_ref].id] if mail_ref in found else None for mail_ref in senders}


def render_digests(conn: Connection, senders: dict[int, str], settings: Settings, secret: bytes,
                   renderer: Renderer) -> dict[int, Rendered | None]:
    """The digests among `senders`: one line per conversation that changed, with its link; one
    whose every conversation was erased meanwhile is withdrawn (None), as a notification is."""
    rendered: dict[int, Rendered | None] = {}
    for mail_ref in senders:
        rows = conn.execute(
            select(CONVERSATION.c.id, CONVERSATION.c.subject, GUEST.c.name, GUEST.c.email, STUDIO.c.name.label("studio"),
                   STUDIO.c.locale)
            .select_from(NOTIFICATION.join(CONVERSATION, CONVERSATION.c.id == NOTIFICATION.c.conversation_id)
                         .join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
                         .join(STUDIO, STUDIO.c.id == NOTIFICATION.c.studio_id))
            .where(NOTIFICATION.c.mail_ref == mail_ref, CONVERSATION.c.deleted_at.is_(None))
            .distinct().order_by(CONVERSATION.c.id)).all()
        if not rows:
            rendered[mail_ref] = None
            continue
        items = "\n".join(f"{r.subject or '–'} ({r.name or r.email}): {conversation_link(settings, r.id)}"
                          for r in rows)
        rendered[mail_ref] = renderer.notification_digest(locale=rows[0].locale, studio_name=rows[0].studio,
                                                          items=items)
    return rendered

