"""Thread a parsed message into its studios' conversations and persist it.

Rules, in order (each message records the one that placed it, so a misfiled message can be
explained): the signed reply address, In-Reply-To, References (newest first), a DSN's
original Message-ID for bounces, then the subject fallback for clients that drop headers
(same guest, same normalised subject, active in the last N days), else a new conversation.

Header matches are looked up only among the Message-IDs stored for the same studio, so a
forged or guessed id from another studio never attaches anything; and a reply whose sender is
not a participant of the conversation it names is held for the studio to accept or reject
instead of being shown as the guest's; so is a reply in a participant's name that explicitly
fails DMARC (gateway/inbound/authentication.py), and automatic mail from a non-participant.

A deleted conversation (gateway/lifecycle/trash.py) is never threaded into, by any rule: the guest's new
mail opens a new conversation the studio sees at once, while the deleted one stays deleted,
restorable as it was and purged on time. Threading it into the deleted conversation would hide
new mail from the studio (for good, on the free plan, which cannot restore).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from gateway.inbound.authentication import NONE, Verdicts
from gateway.inbound.automatic import HUMAN, AutoInfo, classify, website_form_guest
from gateway.store.blobs import blob_store
from gateway.mail.addresses import (DIGEST_DETAIL, StudioAddress, is_notification_token, parse_studio_address,
                                    verify_notification_token, verify_reply_token)
from gateway.mail.subjects import normalize_subject
from gateway.store.db import DriverSQL, bind_processor
from gateway.inbound.headers import fingerprint, normalize_email
from gateway.store.tables import AUTOMATIC_MAIL, CONVERSATION, GUEST, MESSAGE, PROFILE, STUDIO
from gateway.inbound.mime import Address, ParsedMessage
from gateway.store.models import utcnow
from gateway.inbound.quotes import new_text, split_reply
from gateway.events import Threaded
from gateway.inbound.records import ChunkLookups, guest_of, name_guest, open_guest_conversation, seen_before
from gateway.settings import Settings
from gateway.access.visibility import LIVE_CONVERSATION
from gateway.store.tables import ATTACHMENT



class Unprocessable(Exception):
    """The message can never be threaded as it is: quarantine it at once with this reason."""


class StudiosGone(Unprocessable):
    """Every studio the mail was accepted for was deleted after RCPT (another process's directory
    still knew it for a few seconds, or the mail waited in the queue). It must not be kept: not
    even the quarantine may hold bytes for an erased account. The processor discards it."""


@dataclass
class Outcome:
    studio_id: int
    message_id: int | None      # None: duplicate or not stored (automatic mail with no thread)
    conversation_id: int | None
    rule: str                   # thread rule, or "duplicate" / "erased" / "unthreaded-automatic"
    threaded: Threaded | None = None  # the event to announce, when a message was stored


@dataclass
class Inbound:
    id: int
    mail_from: str
    rcpt_to: list[str]
    raw: bytes
    raw_sha256: str
    authentication: Verdicts | None = None   # set by gateway/inbound/authentication.py


def synthesize_message_id(print_: str, domain: str) -> str:
    """A stable id for mail without one, so a retried delivery still dedupes."""
    return f"synth.{print_[:32]}@{domain}"


# Statements are built once: building SQLAlchemy expressions costs more than SQLite takes to
# run them. The ones every new inquiry runs (seen? guest? new guest, conversation, message)
# go to the driver directly (gateway/store/db.DriverSQL); the rest run on some replies only.
_STUDIO_BY_SLUG = select(STUDIO.c.id).where(STUDIO.c.slug == bindparam("slug"))
_BY_MESSAGE_IDS = select(MESSAGE.c.message_id, MESSAGE.c.conversation_id).where(
    MESSAGE.c.studio_id == bindparam("studio_id"), MESSAGE.c.message_id.in_(bindparam("ids", expanding=True)),
    MESSAGE.c.conversation_id.is_not(None))
_BOUNCED = select(MESSAGE.c.id, MESSAGE.c.conversation_id, MESSAGE.c.direction).where(
    MESSAGE.c.studio_id == bindparam("studio_id"), MESSAGE.c.message_id.in_(bindparam("ids", expanding=True)))
_CONVERSATION = select(CONVERSATION).where(CONVERSATION.c.id == bindparam("conversation_id"),
                                           CONVERSATION.c.studio_id == bindparam("studio_id"), LIVE_CONVERSATION)
_BY_SUBJECT = select(CONVERSATION).where(
    CONVERSATION.c.studio_id == bindparam("studio_id"), CONVERSATION.c.guest_id == bindparam("guest_id"),
    CONVERSATION.c.subject_key == bindparam("subject_key"), CONVERSATION.c.last_message_at >= bindparam("since"),
    LIVE_CONVERSATION,
).order_by(CONVERSATION.c.last_message_at.desc()).limit(1)
_GUEST_EMAIL = select(GUEST.c.email).where(GUEST.c.id == bindparam("guest_id"))
# A participant's mail is shown there now: one the studio deleted (in the trash, or purged)
# no longer vouches for its sender, as a rejected one never did; restored, it does again.
_SENT_BEFORE = select(MESSAGE.c.id).where(
    MESSAGE.c.conversation_id == bindparam("conversation_id"), MESSAGE.c.direction == "inbound",
    MESSAGE.c.state == "visible", MESSAGE.c.deleted_at.is_(None),
    MESSAGE.c.from_email == bindparam("email")).limit(1)
# Every column but deleted_at/deleted_by, which stay NULL for new mail.
_MESSAGE_COLUMNS = (
    "studio_id", "conversation_id", "inbound_mail_id", "direction", "state", "from_email", "from_name",
    "to_json", "cc_json", "subject", "text", "full_text", "html", "message_id", "in_reply_to",
    "references_json", "sent_at", "received_at", "thread_rule", "automatic", "auto_kind", "delivery",
    "bounce_of_id", "raw_sha256", "dedupe_key", "parser", "defects_json", "authentication_results")
_NEW_MESSAGE = DriverSQL(f"INSERT INTO message ({', '.join(_MESSAGE_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))}) RETURNING id")
_CONVERSATION_ACTIVITY = update(CONVERSATION).where(CONVERSATION.c.id == bindparam("conversation_id"))


def thread_message(conn: Connection, inbound: Inbound, parsed: ParsedMessage, settings: Settings,
                   secret: bytes, studios: dict[str, int | None] | None = None,
                   lookups: ChunkLookups | None = None) -> list[Outcome]:
    """Thread into every recipient studio; `studios` caches slug lookups across a chunk, and
    `lookups` the chunk's prefetched duplicates and guests (see `lookup_keys`). Each outcome
    that stored a message carries its "message threaded" event (gateway/events.py) for the
    processor to announce."""
    studios = {} if studios is None else studios
    targets = _recipient_studios(conn, inbound.rcpt_to, settings, studios)
    if not targets:
        if any(parse_studio_address(rcpt, settings.mail_domain) for rcpt in inbound.rcpt_to):
            raise StudiosGone("every studio it was accepted for has been deleted since")
        raise Unprocessable("no known studio among the recipients " + ", ".join(inbound.rcpt_to)[:300])
    if parsed.parser == "headers-only":
        raise Unprocessable("MIME structure unreadable: " + "; ".join(parsed.defects[:3]))
    sender = _sender(parsed, inbound.mail_from)
    if not sender.email:
        raise Unprocessable("no sender address in From or the envelope")
    auto = classify(parsed, inbound.mail_from)
    message_id, dedupe_key = _identity(parsed, inbound.raw, sender.email, settings)
    form_guest = website_form_guest(parsed, auto, settings.mail_domain)
    if form_guest is not None:
        # A website's contact form: the visitor in Reply-To is the guest, and it is an inquiry,
        # not automatic mail (gateway/inbound/automatic.website_form_guest).
        sender, auto = Address(email=normalize_email(form_guest.email), name=form_guest.name), HUMAN

    outcomes = []
    for studio_id, address in targets:
        outcomes.append(_thread_for_studio(conn, studio_id, address.detail, inbound, parsed, sender,
                                           auto, message_id, dedupe_key, settings, secret, lookups,
                                           form=form_guest is not None))
    return outcomes


def lookup_keys(conn: Connection, inbound: Inbound, parsed: ParsedMessage, settings: Settings,
                studios: dict[str, int | None]) -> list[tuple[int, str, str]]:
    """(studio id, dedupe key, sender) that thread_message will look up first, for
    ChunkLookups.prefetch; none for mail it will refuse before looking anything up."""
    sender = _sender(parsed, inbound.mail_from)
    if parsed.parser == "headers-only" or not sender.email:
        return []
    targets = _recipient_studios(conn, inbound.rcpt_to, settings, studios)
    _, dedupe_key = _identity(parsed, inbound.raw, sender.email, settings)
    return [(studio_id, dedupe_key, sender.email) for studio_id, _ in targets]


def _recipient_studios(conn: Connection, rcpt_to: list[str], settings: Settings,
                       studios: dict[str, int | None]) -> list[tuple[int, StudioAddress]]:
    """The existing studios among the recipients, each once (slug and slug+x are one studio)."""
    found: list[tuple[int, StudioAddress]] = []
    for rcpt in rcpt_to:
        address = parse_studio_address(rcpt, settings.mail_domain)
        if address is None:
            continue
        if address.slug not in studios:
            studios[address.slug] = conn.execute(_STUDIO_BY_SLUG, {"slug": address.slug}).scalar()
        studio_id = studios[address.slug]
        if studio_id is not None and all(studio_id != known for known, _ in found):
            found.append((studio_id, address))  # a studio deleted since RCPT is simply absent
    return found


def _identity(parsed: ParsedMessage, raw: bytes, sender: str, settings: Settings) -> tuple[str, str]:
    """The message's id and the key that makes a second delivery of it a duplicate.

    With a Message-ID the key is that id with the sender, subject and date as parsed: the same
    mail received over SMTP and through a provider webhook (whose raw bytes, or MIME rebuilt
    from parsed fields, differ from ours) is stored once, as is a relay's retry, while a client
    that reuses one Message-ID for different mail (they exist) still gets each one stored.
    Without an id, one is synthesised from a fingerprint of the identifying headers and body,
    which is stable across retries of the same transport.
    """
    if parsed.message_id:
        date = parsed.date.isoformat() if parsed.date else ""
        subject = " ".join(parsed.subject.split())
        key = f"id\n{parsed.message_id}\n{sender}\n{subject}\n{date}"
        return parsed.message_id, hashlib.sha256(key.encode()).hexdigest()
    print_ = fingerprint(raw)
    message_id = synthesize_message_id(print_, settings.mail_domain)
    return message_id, hashlib.sha256(f"{message_id}\n{print_}".encode()).hexdigest()


def _sender(parsed: ParsedMessage, mail_from: str) -> Address:
    if parsed.from_ and parsed.from_.email and "@" in parsed.from_.email:
        return Address(email=normalize_email(parsed.from_.email), name=parsed.from_.name)
    return Address(email=normalize_email(mail_from), name="")


def _thread_for_studio(conn: Connection, studio_id: int, detail: str, inbound: Inbound,
                       parsed: ParsedMessage, sender: Address, auto: AutoInfo, message_id: str,
                       dedupe_key: str, settings: Settings, secret: bytes,
                       lookups: ChunkLookups | None = None, *, form: bool = False) -> Outcome:
    seen = seen_before(conn, lookups, studio_id, dedupe_key)
    if seen is not None:
        return Outcome(studio_id, None, None, seen)

    guest = guest_of(conn, lookups, studio_id, sender.email)
    verdicts = inbound.authentication or NONE
    if detail == DIGEST_DETAIL:
        # An answer to a digest through a provider (SMTP refuses it at RCPT): it belongs to no
        # one conversation and must never reach a guest; listed, like automatic mail.
        _record_automatic(conn, studio_id, inbound, parsed, sender, auto, message_id, dedupe_key,
                          None if inbound.authentication is None else verdicts.summary(
                              settings.smtp_hostname or settings.mail_domain))
        return Outcome(studio_id, None, None, "unthreaded-automatic")
    if is_notification_token(detail):
        # A profile's answer to a notification: never a guest's mail, whatever it says.
        conversation, rule = _notification_answer(conn, studio_id, detail, sender, auto, verdicts, secret)
        if conversation is None:
            _record_automatic(conn, studio_id, inbound, parsed, sender, auto, message_id, dedupe_key,
                              None if inbound.authentication is None else verdicts.summary(
                                  settings.smtp_hostname or settings.mail_domain))
            return Outcome(studio_id, None, None, "unthreaded-automatic")
    else:
        conversation, rule = _find_conversation(conn, studio_id, detail, parsed, guest, auto, settings, secret)
    bounced: list[Any] = []
    if auto.kind == "bounce" and auto.bounced_message_ids:
        bounced = list(conn.execute(_BOUNCED, {"studio_id": studio_id,
                                               "ids": list(auto.bounced_message_ids)[:50]}))
        if conversation is None and bounced and bounced[0].conversation_id is not None:
            conversation = _load_conversation(conn, studio_id, bounced[0].conversation_id)
            rule = "bounce"

    results = None if inbound.authentication is None else verdicts.summary(
        settings.smtp_hostname or settings.mail_domain)
    if conversation is None and auto.automatic:
        # Automatic mail never opens a conversation; its raw bytes stay in inbound_mail, and the
        # studio can list it (GET /api/v1/automatic): nothing accepted is invisible.
        if bounced:
            # A bounce of mail in no conversation (a notification to a profile): marked, so that
            # repeated bounces pause that profile's notifications (gateway/outbound/notify_preferences.py).
            conn.execute(update(MESSAGE).where(
                MESSAGE.c.id.in_([b.id for b in bounced]), MESSAGE.c.direction == "outbound",
                MESSAGE.c.conversation_id.is_(None)).values(delivery="bounced"))
        _record_automatic(conn, studio_id, inbound, parsed, sender, auto, message_id, dedupe_key, results)
        return Outcome(studio_id, None, None, "unthreaded-automatic")

    now = utcnow()
    opened = conversation is None
    if opened:
        conversation_id, guest_id = open_guest_conversation(conn, studio_id, sender, guest, parsed.subject or "",
                                                            now, lookups, message_count=1)
        state = "visible"
        if form:
            rule = "website_form"
    else:
        conversation_id = conversation.id
        if guest is not None and not guest.name and sender.name:
            name_guest(conn, lookups, studio_id, guest, sender.name)
        if rule.startswith(NOTIFY_ANSWER):
            state = "held"   # sent on by the notify_answers reaction if the check passed, else held
        else:
            state = _reply_state(conn, conversation, rule, sender, auto, verdicts,
                                 bounced_ours=any(b.direction == "outbound" for b in bounced))

    when = bind_processor(conn, MESSAGE.c.received_at)
    row = {
        "studio_id": studio_id, "conversation_id": conversation_id, "inbound_mail_id": inbound.id,
        "direction": "inbound", "state": state, "from_email": sender.email[:320],
        "from_name": sender.name[:200], "to_json": _addresses(parsed.to), "cc_json": _addresses(parsed.cc),
        "subject": parsed.subject or "", "text": _new_text(parsed.text, rule), "full_text": parsed.text,
        "html": parsed.html, "message_id": message_id[:998],
        "in_reply_to": parsed.in_reply_to[0] if parsed.in_reply_to else None,
        "references_json": json.dumps(parsed.references[-100:]), "sent_at": when(parsed.date),
        "received_at": when(now), "thread_rule": rule, "automatic": bind_processor(conn, MESSAGE.c.automatic)(
            auto.automatic), "auto_kind": auto.kind,
        "delivery": None, "bounce_of_id": None,
        "raw_sha256": inbound.raw_sha256, "dedupe_key": dedupe_key, "parser": parsed.parser,
        "defects_json": json.dumps(parsed.defects[:50]),
        "authentication_results": results,
    }
    try:
        inserted = int(_NEW_MESSAGE(conn, [row[name] for name in _MESSAGE_COLUMNS]).fetchone()[0])
    except IntegrityError as exc:  # a concurrent processor stored the same delivery first
        raise _RaceLost(str(exc.orig)[:200]) from exc
    if lookups is not None:
        lookups.seen[(studio_id, dedupe_key)] = "duplicate"
    _store_attachments(conn, studio_id, inserted, parsed, settings)
    if state == "visible" and not opened:
        values: dict[str, Any] = {"message_count": CONVERSATION.c.message_count + 1, "last_message_at": now,
                                  "updated_at": now}
        if not auto.automatic:
            values["status"] = "open"  # a reply to a closed conversation reopens it
        conn.execute(_CONVERSATION_ACTIVITY.values(**values), {"conversation_id": conversation_id})
    elif not opened:  # held: the conversation's held count changed (its detail shows it)
        conn.execute(_CONVERSATION_ACTIVITY.values(updated_at=now), {"conversation_id": conversation_id})
    if bounced:
        conn.execute(update(MESSAGE).where(
            MESSAGE.c.id.in_([b.id for b in bounced]), MESSAGE.c.direction == "outbound"
        ).values(delivery="bounced", bounce_of_id=inserted))
    event = Threaded(studio_id=studio_id, message_id=inserted, conversation_id=conversation_id, rule=rule,
                     opened=opened, visible=state == "visible", automatic=auto.automatic,
                     guest_id=guest_id if opened else None, sender_name=sender.name,
                     sender_aligned=verdicts.aligned, guest_from_reply_to=form)
    return Outcome(studio_id, inserted, conversation_id, rule, event)


class _RaceLost(Exception):
    """Another processor inserted this message first; the message is retried and then found
    to be a duplicate."""


def _find_conversation(conn: Connection, studio_id: int, detail: str, parsed: ParsedMessage,
                       guest: Any, auto: AutoInfo, settings: Settings, secret: bytes) -> tuple[Any, str]:
    if detail:
        conversation_id = verify_reply_token(secret, studio_id, detail)
        if conversation_id is not None:
            conversation = _load_conversation(conn, studio_id, conversation_id)
            if conversation is not None:
                return conversation, "reply_address"
    for rule, ids in (("in_reply_to", parsed.in_reply_to[:20]), ("references", parsed.references[::-1][:100])):
        if not ids:
            continue
        found = {r.message_id: r.conversation_id
                 for r in conn.execute(_BY_MESSAGE_IDS, {"studio_id": studio_id, "ids": ids})}
        for candidate in ids:  # references newest first
            if candidate in found:
                conversation = _load_conversation(conn, studio_id, found[candidate])
                if conversation is not None:
                    return conversation, rule
    if guest is not None and not auto.automatic:  # a guest we never saw has no conversation yet
        row = conn.execute(_BY_SUBJECT, {
            "studio_id": studio_id, "guest_id": guest.id, "subject_key": normalize_subject(parsed.subject or ""),
            "since": utcnow() - timedelta(days=settings.subject_fallback_days)}).first()
        if row is not None:
            return row, "subject"
    return None, "new"


NOTIFY_ANSWER = "notify_answer"   # thread_rule of a profile's answer, with its check's outcome after it


def _notification_answer(conn: Connection, studio_id: int, detail: str, sender: Address, auto: AutoInfo,
                         verdicts: Verdicts, secret: bytes) -> tuple[Any, str]:
    """The conversation a profile's answer to a notification belongs to, and the rule saying how
    its sender check went: `notify_answer` (send it to the guest), or `notify_answer_<reason>`
    (held for the studio). No conversation: automatic mail (an auto-reply, a bounce: never to
    the guest) or a forged address (wrong signature, another studio's): listed, never sent.

    The sender check: From must be the profile's address, the profile still connected, and the
    message must not explicitly fail authentication for that domain (a DMARC fail, or an SPF
    fail with no passing DKIM signature): no verdict at all decides nothing, as for guests."""
    named = verify_notification_token(secret, studio_id, detail)
    if named is None or auto.automatic:
        return None, "new"
    conversation_id, profile_id = named
    conversation = _load_conversation(conn, studio_id, conversation_id)
    if conversation is None:
        return None, "new"
    profile = conn.execute(select(PROFILE.c.email, PROFILE.c.disconnected_at).where(
        PROFILE.c.id == profile_id, PROFILE.c.studio_id == studio_id)).first()
    if profile is None or profile.disconnected_at is not None:
        return conversation, f"{NOTIFY_ANSWER}_disconnected"
    if normalize_email(profile.email) != sender.email:
        return conversation, f"{NOTIFY_ANSWER}_stranger"
    if verdicts.dmarc_fails or (verdicts.spf == "fail" and verdicts.dkim != "pass"):
        return conversation, f"{NOTIFY_ANSWER}_unauthenticated"
    return conversation, NOTIFY_ANSWER


def _new_text(text: str, rule: str) -> str:
    """What the messenger shows as a message's new text. A profile's answer to a notification
    keeps nothing when it holds nothing but the quoted notification: its text is what is sent
    to the guest (gateway/outbound/notify_answers.py), and quotes.split_reply's fallback to the
    whole mail would send them the notification. Empty, the answer stays held, saying why."""
    return new_text(text) if rule.startswith(NOTIFY_ANSWER) else split_reply(text)


def _load_conversation(conn: Connection, studio_id: int, conversation_id: int) -> Any:
    return conn.execute(_CONVERSATION, {"conversation_id": conversation_id, "studio_id": studio_id}).first()


def _reply_state(conn: Connection, conversation: Any, rule: str, sender: Address, auto: AutoInfo,
                 verdicts: Verdicts, *, bounced_ours: bool) -> str:
    """"visible" or "held" for a message into an existing conversation.

    Held, for the studio to accept or reject: mail from someone who is not a participant
    (automatic mail too: an auto-reply or bounce from a stranger names the conversation only by
    headers anyone can copy), and mail whose From is a participant but which explicitly fails
    DMARC for that domain (a forged reply). No verdict (temperror, permerror, no DMARC record)
    decides nothing: the participant check alone applies, as before authentication existed.
    A delivery report for the studio's own reply stays visible: it names a Message-ID we made.
    """
    if verdicts.dmarc_fails:
        return "held"
    if auto.automatic and auto.kind == "bounce" and bounced_ours:
        return "visible"
    if rule == "subject" or _is_participant(conn, conversation, sender.email):
        return "visible"
    return "held"


def _record_automatic(conn: Connection, studio_id: int, inbound: Inbound, parsed: ParsedMessage, sender: Address,
                      auto: AutoInfo, message_id: str, dedupe_key: str, results: str | None) -> None:
    """List automatic mail that opened no conversation; once per studio, as messages are."""
    if conn.execute(_AUTOMATIC_SEEN, {"studio_id": studio_id, "dedupe_key": dedupe_key}).first() is not None:
        return
    conn.execute(insert(AUTOMATIC_MAIL).values(
        studio_id=studio_id, inbound_mail_id=inbound.id, received_at=utcnow(), auto_kind=auto.kind or "auto-generated",
        from_email=sender.email[:320], from_name=sender.name[:200], subject=(parsed.subject or "")[:2000],
        message_id=message_id[:998], dedupe_key=dedupe_key,
        authentication_results=results))


_AUTOMATIC_SEEN = select(AUTOMATIC_MAIL.c.id).where(AUTOMATIC_MAIL.c.studio_id == bindparam("studio_id"),
                                                     AUTOMATIC_MAIL.c.dedupe_key == bindparam("dedupe_key"))


def _is_participant(conn: Connection, conversation: Any, email: str) -> bool:
    if conn.execute(_GUEST_EMAIL, {"guest_id": conversation.guest_id}).scalar() == email:
        return True
    return conn.execute(_SENT_BEFORE, {"conversation_id": conversation.id, "email": email}).first() is not None


def _addresses(addresses: list[Address]) -> str:
    return json.dumps([{"email": a.email, "name": a.name} for a in addresses[:100]])


def _store_attachments(conn: Connection, studio_id: int, message_id: int, parsed: ParsedMessage,
                       settings: Settings) -> None:
    kept = [a for a in parsed.attachments if a.size <= settings.max_attachment_size]
    if not kept:
        return
    digests = blob_store.put_many(conn, [a.data for a in kept])
    conn.execute(insert(ATTACHMENT), [
        {"studio_id": studio_id, "message_id": message_id, "filename": a.filename[:255],
         "content_type": a.content_type[:255], "size": a.size, "sha256": digest,
         "inline": a.inline, "content_id": a.content_id}
        for a, digest in zip(kept, digests)
    ])
