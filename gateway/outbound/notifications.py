"""Telling a studio's profiles about guest mail: a mail at once, or an hourly digest.

Two steps, in two places:

1. `notify`, a "message threaded" reaction (gateway/events.py), decides inside the transaction
   that stored the guest's message who hears of it and how: one `notification` row per
   connected profile that wants to hear, `immediate` when it is to be told at once, else left
   for the digest. That is all it writes: the processor's transaction is intake's, and mail in
   is what must not slow down.
2. `queue_told`, run by the outbox before each of its rounds (an outbox "feed":
   gateway/outbound/outbox.py), makes the mails of the immediate rows, in the worker's own
   transactions: an outbound message in no conversation with its outbox job per row (the same
   retries and DKIM as a reply, and a Message-ID chosen before the first attempt, so a send
   repeated after a crash carries the same one). The digest makes its mails the same way
   (`send_digests`, hourly).

Intake first: while guest mail waits to be threaded (a burst), `queue_told` leaves the rows
alone, up to HOLD_WHILE_BUSY; once nothing waits it queues them all, and the outbox sends them
in the same round. Three profiles mean three mails to compose, sign and send per guest message,
on the cores the processor needs (bench/notifications.py measured end to end at 0.59-0.65 of the
figure without notifications when they were queued and sent during the burst). A studio hears
of a burst when it has been threaded, and never more than HOLD_WHILE_BUSY late. Nothing is sent
by either step itself: a relay outage delays notifications, never mail intake.

Never a loop, never spam:
- nothing for automatic mail (auto-replies, bounces, lists) or mail held for the studio;
- the mails carry `Auto-Submitted: auto-generated` (RFC 3834; gateway/outbound/compose.py);
- at most one mail per profile per conversation per STORM_WINDOW: the rest waits for the digest
  (the immediate rows are the record, written at once, so a storm in one chunk counts too);
- quiet hours (in the studio's time zone) and a paused profile hold everything back.

A notification mail belongs to no conversation (its message row has no conversation_id), so it
never shows in the studio's threads, and a bounce of it opens none (gateway/inbound/threader.py
marks it bounced; gateway/outbound/notify_preferences.py pauses the profile after a few). Its
Reply-To is the profile's signed notification address for the conversation
(gateway/mail/addresses.py); what comes back there is handled by gateway/outbound/notify_answers.py.

The bodies are rendered only when the outbox composes them (a LateBodies hook wired by
gateway/runtime.py), from the guest's message as it is then: a message erased meanwhile is not
mailed out, and the mail is withdrawn (`cancelled`), which is no failure of the profile's
mailbox (gateway/outbound/compose.Withdrawn). Rows whose message was erased before their mail
was queued are dropped without one.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, and_, bindparam, insert, select, update

from gateway.events import Chunk, Threaded
from gateway.mail.addresses import digest_address, notification_address
from gateway.outbound.notify_preferences import PAUSE_AFTER_BOUNCES, bounced_since, default_mode, in_quiet_hours
from gateway.outbound.render import Rendered, Renderer
from gateway.outbound.replies import INSERT_JOB, MESSAGE_COLUMNS, new_message_id
from gateway.settings import Settings
from gateway.store.db import read_tx, result_processor, write_tx
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import (ATTACHMENT, CONVERSATION, GUEST, INBOUND, MESSAGE, NOTIFICATION,
                                  NOTIFICATION_PREFERENCE, PROFILE, STUDIO)

log = logging.getLogger(__name__)
NOTIFICATION_MAIL = "notification"          # Message.auto_kind of a notification
DIGEST_MAIL = "notification_digest"         # ... and of a digest
STORM_WINDOW = timedelta(minutes=5)
DROPPED = 0   # mail_ref of a row nobody will be told of: its profile chose "off" or left, its message is gone
_SUBJECTS = {"de": "Neue Nachricht von {guest}: {subject}", "en": "New message from {guest}: {subject}"}
_DIGEST_SUBJECTS = {"de": "{studio}: {count} Unterhaltungen mit neuer Post",
                    "en": "{studio}: {count} conversations with new mail"}
_MEMO = "notifications"
HOLD_WHILE_BUSY = timedelta(seconds=30)
QUEUE_BATCH = 96   # immediate rows made into mails per transaction: SQLite's write lock is held a few ms

_AUDIENCE = (
    select(PROFILE.c.id, PROFILE.c.email, PROFILE.c.name, PROFILE.c.role, NOTIFICATION_PREFERENCE.c.mode,
           NOTIFICATION_PREFERENCE.c.quiet_from, NOTIFICATION_PREFERENCE.c.quiet_to,
           NOTIFICATION_PREFERENCE.c.resumed_at)
    .select_from(PROFILE.outerjoin(NOTIFICATION_PREFERENCE, NOTIFICATION_PREFERENCE.c.profile_id == PROFILE.c.id))
)


# The statements `notify` runs for every guest message, inside the processor's write transaction:
# bound by gateway/store/prepared.Prepared, as the reply's are (Core's cache keys and parameter
# processing cost more than SQLite takes to run them).
_INSERT_NOTIFICATIONS = Prepared(insert(NOTIFICATION).values(
    {name: bindparam(name, type_=NOTIFICATION.c[name].type)
     for name in ("studio_id", "profile_id", "conversation_id", "message_ref", "created_at", "immediate")}))
_TOLD_SINCE = Prepared(select(NOTIFICATION.c.id).where(
    NOTIFICATION.c.profile_id == bindparam("profile_id"),
    NOTIFICATION.c.conversation_id == bindparam("conversation_id"),
    NOTIFICATION.c.immediate.is_(True),
    NOTIFICATION.c.created_at > bindparam("since", type_=NOTIFICATION.c.created_at.type)).limit(1))


# ... and once per chunk and studio: the studio, and its connected profiles with their preferences.
_STUDIO = Prepared(select(STUDIO.c.slug, STUDIO.c.time_zone).where(STUDIO.c.id == bindparam("studio_id")))
_LISTENERS = Prepared(_AUDIENCE.where(PROFILE.c.studio_id == bindparam("studio_id"), PROFILE.c.disconnected_at.is_(None)))


class _Listener(NamedTuple):
    id: int
    email: str
    name: str | None
    role: str
    mode: str | None
    quiet_from: str | None
    quiet_to: str | None
    resumed_at: datetime | None


def _audience(conn: Connection, studio_id: int, mail_domain: str) -> list[_Listener]:
    """The studio's connected profiles that want to hear anything, with their preferences, and
    not paused (their notifications keep bouncing: gateway/outbound/notify_preferences.py)."""
    resumed = result_processor(conn, NOTIFICATION_PREFERENCE.c.resumed_at)
    # Never to an address of our own mail domain: the notification would come back in as mail.
    own = "@" + mail_domain.lower()
    listeners = [_Listener(*row[:7], resumed(row[7])) for row in _LISTENERS.execute(conn, studio_id=studio_id)]
    return [p for p in listeners if (p.mode or default_mode(p.role)) != "off" and not p.email.lower().endswith(own)
            and bounced_since(conn, p.id, p.resumed_at) < PAUSE_AFTER_BOUNCES]


def notify(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction: note which profiles hear of a guest's message, and which
    of them at once (their mails are made later, by `queue_told`).

    Only with GATEWAY_PUBLIC_URL: a notification links to the conversation in the web messenger,
    and without the messenger's address there is nowhere to link (as for sign-in links)."""
    if event.automatic or not event.visible or not settings.public_url:
        return
    memo = chunk.memo.setdefault(_MEMO, {})
    if event.studio_id not in memo:   # one look at the studio's profiles (and their pauses) per chunk
        studio = _STUDIO.execute(conn, studio_id=event.studio_id).fetchone()
        # The helpdesk's mail is commands it answers itself (gateway/lifecycle/helpdesk_mail.py).
        audience = [] if studio is None or studio[0] == settings.helpdesk_slug else \
            _audience(conn, event.studio_id, settings.mail_domain)
        memo[event.studio_id] = (studio, audience)
    studio, audience = memo[event.studio_id]
    if not audience:
        return
    now = utcnow()
    _INSERT_NOTIFICATIONS.execute_many(conn, [
        {"studio_id": event.studio_id, "profile_id": profile.id, "conversation_id": event.conversation_id,
         "message_ref": event.message_id, "created_at": now,
         "immediate": (profile.mode or default_mode(profile.role)) == "immediately"
         and not in_quiet_hours(now, studio[1], profile.quiet_from, profile.quiet_to)
         and (event.opened or not _told_recently(conn, profile.id, event.conversation_id, now))}
        for profile in audience])


def _told_recently(conn: Connection, profile_id: int, conversation_id: int, now: datetime) -> bool:
    """The storm limit: a profile was told at once about this conversation lately (its mail
    queued or not yet)."""
    return _TOLD_SINCE.execute(conn, profile_id=profile_id, conversation_id=conversation_id,
                               since=now - STORM_WINDOW).fetchone() is not None


# --- the mails of the immediate rows (an outbox feed: gateway/outbound/outbox.Feed) -------------

# Immediate rows without their mail yet, oldest first (ix_notification_mail: a look per outbox
# round finds none at once in the steady state).
_UNMAILED = (NOTIFICATION.c.mail_ref.is_(None), NOTIFICATION.c.immediate.is_(True))
_OLDEST_UNMAILED = select(NOTIFICATION.c.created_at).where(*_UNMAILED).order_by(NOTIFICATION.c.id).limit(1)
# Guest mail stored and not yet threaded (ix_inbound_mail_status_id).
_MAIL_WAITING = select(INBOUND.c.id).where(INBOUND.c.status.in_(("pending", "processing"))).limit(1)
# SKIP LOCKED (PostgreSQL): rows another worker is queueing are its own; this one takes the next.
_TAKE = (select(NOTIFICATION.c.id)
         .where(*_UNMAILED, NOTIFICATION.c.created_at <= bindparam("due", type_=NOTIFICATION.c.created_at.type))
         .order_by(NOTIFICATION.c.id).limit(QUEUE_BATCH).with_for_update(skip_locked=True))
# What the mails need of each taken row; outer joins: a guest message or conversation erased
# meanwhile leaves the row to be dropped, not stuck.
_TAKEN = (select(NOTIFICATION.c.id, NOTIFICATION.c.studio_id, NOTIFICATION.c.profile_id,
                 NOTIFICATION.c.conversation_id, NOTIFICATION.c.message_ref, PROFILE.c.email, PROFILE.c.name,
                 PROFILE.c.disconnected_at, STUDIO.c.slug, STUDIO.c.locale, MESSAGE.c.id.label("message"),
                 MESSAGE.c.from_name, CONVERSATION.c.subject, GUEST.c.email.label("guest_email"))
          .select_from(NOTIFICATION.outerjoin(PROFILE, PROFILE.c.id == NOTIFICATION.c.profile_id)
                       .outerjoin(STUDIO, STUDIO.c.id == NOTIFICATION.c.studio_id)
                       .outerjoin(MESSAGE, and_(MESSAGE.c.id == NOTIFICATION.c.message_ref,
                                                MESSAGE.c.deleted_at.is_(None)))
                       .outerjoin(CONVERSATION, CONVERSATION.c.id == NOTIFICATION.c.conversation_id)
                       .outerjoin(GUEST, GUEST.c.id == CONVERSATION.c.guest_id))
          .where(NOTIFICATION.c.id.in_(bindparam("ids", expanding=True))).order_by(NOTIFICATION.c.id))
_SET_MAIL = Prepared(update(NOTIFICATION).where(NOTIFICATION.c.id == bindparam("row_id"))
                     .values(mail_ref=bindparam("mail_ref")))


def queue_told(engine: Engine, settings: Settings, now: datetime) -> int:
    """Queue the mails of the immediate rows (the outbox sends them next); how many.

    Held while guest mail waits to be threaded, up to HOLD_WHILE_BUSY (see the module's
    docstring). Repeatable and shared: each row is taken by one transaction (SKIP LOCKED on
    PostgreSQL; SQLite has one writer) and marked in the one that queues its mail."""
    with read_tx(engine) as conn:
        oldest = conn.execute(_OLDEST_UNMAILED).scalar()
        if oldest is None:
            return 0
        due = now - HOLD_WHILE_BUSY if conn.execute(_MAIL_WAITING).first() is not None else now
        if oldest > due:
            return 0
    secret = settings.secret()
    queued = 0
    for _ in range(10_000):   # bounded: a round never runs away
        with write_tx(engine) as conn:
            ids = list(conn.execute(_TAKE, {"due": due}).scalars())
            if ids:
                queued += _queue_rows(conn, settings, secret, ids, conn.execute(_TAKEN, {"ids": ids}).all(), now)
        if len(ids) < QUEUE_BATCH:
            break
    return queued


def _queue_rows(conn: Connection, settings: Settings, secret: bytes, ids: list[int], rows: list[Any],
                now: datetime) -> int:
    """A mail and its job for each of the rows `ids` (one statement for each kind, however many
    rows), or DROPPED for a row nobody is to be told of any more; the number of mails."""
    mails, told = [], []
    for row in rows:
        if row.message is None or row.email is None or row.slug is None \
                or row.disconnected_at is not None:
            continue   # erased meanwhile, or the profile left: marked DROPPED below
        language = "en" if row.locale.lower().startswith("en") else "de"
        subject = _SUBJECTS[language].format(guest=row.from_name or row.guest_email or "", subject=row.subject or "–")
        reply_to = notification_address(secret, row.slug, row.studio_id, row.conversation_id, row.profile_id,
                                        settings.mail_domain)
        mails.append(_mail_row(settings, row.studio_id, row.slug, NOTIFICATION_MAIL, now, subject,
                               {"email": row.email, "name": row.name or "", "reply_to": reply_to}))
        told.append(row)
    mail_ids = _insert_mails(conn, mails)
    if mail_ids:
        INSERT_JOB.execute_many(conn, [{"studio_id": row.studio_id, "message_id": mail_id, "created_at": now,
                                        "next_attempt_at": now} for row, mail_id in zip(told, mail_ids)])
    refs = {row.id: mail_id for row, mail_id in zip(told, mail_ids)}
    _SET_MAIL.execute_many(conn, [{"row_id": row_id, "mail_ref": refs.get(row_id, DROPPED)} for row_id in ids])
    return len(mail_ids)


def _mail_row(settings: Settings, studio_id: int, slug: str, kind: str, now: datetime, subject: str,
              recipient: dict[str, str]) -> dict[str, Any]:
    """An outbound message in no conversation to one profile; its body is rendered at compose
    time (`render_notifications`, `render_digests`): the row keeps who, when and the subject."""
    return dict(
        studio_id=studio_id, conversation_id=None, direction="outbound", state="visible",
        from_email=f"{slug}@{settings.mail_domain}", from_name="", to_json=json.dumps([recipient]), cc_json="[]",
        subject=subject[:900], text="", full_text="", html=None, message_id=new_message_id(settings.mail_domain, 0),
        in_reply_to=None, references_json="[]", received_at=now, thread_rule=kind, automatic=True, auto_kind=kind,
        delivery="queued", parser="", defects_json="[]")


_MAILS_PER_INSERT = 32
_INSERT_MESSAGES: dict[int, Prepared] = {}


def _insert_mails(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the message rows, up to _MAILS_PER_INSERT a statement; their ids, in `rows`' order."""
    ids: dict[str, int] = {}
    for start in range(0, len(rows), _MAILS_PER_INSERT):
        part = rows[start:start + _MAILS_PER_INSERT]
        # RETURNING promises no order: the Message-IDs (new, unique) say which row is which.
        ids.update((message_id, int(row_id)) for row_id, message_id in _insert_messages(len(part)).execute(
            conn, **{f"{name}_{n}": value for n, row in enumerate(part) for name, value in row.items()}).fetchall())
    return [ids[row["message_id"]] for row in rows]


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
            .where(NOTIFICATION.c.mail_ref.is_(None), NOTIFICATION.c.immediate.is_(False))  # immediate: queue_told
            .order_by(NOTIFICATION.c.id)).all()
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
            recipient = {"email": profile.email, "name": profile.name or "",
                         "reply_to": digest_address(studio.slug, settings.mail_domain)}  # answers bounce: see there
            [mail] = _insert_mails(conn, [_mail_row(settings, studios[profile_id], studio.slug, DIGEST_MAIL, now,
                                                    subject, recipient)])
            INSERT_JOB.execute(conn, studio_id=studios[profile_id], message_id=mail, created_at=now, next_attempt_at=now)
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

