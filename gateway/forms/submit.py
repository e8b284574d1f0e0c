"""A checked submission becomes an inquiry: one transaction, the same rows a guest's mail makes.

In the caller's transaction: the guest (found or created by address), a new conversation with
`thread_rule` `form`, one inbound message whose text lists the answers under their labels in
the studio's language, the uploads as its attachments, the submission row (answers, version,
consent time, double-submit token), the "message threaded" announcement a guest's mail gets
(gateway/events.py: the studio's event log and so its webhooks, the profiles' notifications)
and, at most once per address per studio per day, the
confirmation mail through the outbox with the signed Reply-To every reply carries
(gateway/outbound/replies.create_reply), so the guest's answer by email joins the
conversation. The confirmation carries the studio's words and the form's labels, never what
the guest typed: the address is not verified, and whatever we echo could be spam to a stranger.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Sequence

from sqlalchemy import Connection, bindparam, insert, select

from gateway.eventlog import DEFERRED as DEFERRED_EVENTS, record_many as record_events
from gateway.events import Chunk, Reaction, Threaded, announce
from gateway.forms.answers import Checked
from gateway.forms.definition import Definition, text_in
from gateway.inbound.headers import normalize_email
from gateway.inbound.mime import Address
from gateway.inbound.records import ensure_known_guest, find_guest, open_conversation, open_new_guest_conversation
from gateway.outbound.replies import Thread, create_reply
from gateway.settings import Settings
from gateway.store.blobs import blob_store
from gateway.store.db import DriverSQL, bind_processor
from gateway.store.models import utcnow
from gateway.store.prepared import Prepared
from gateway.store.tables import ATTACHMENT, CONVERSATION, FORM_SUBMISSION, MESSAGE

THREAD_RULE = "form"
CONFIRMATION = "form_confirmation"
CONFIRMATION_WINDOW = timedelta(days=1)

# Every submission runs these; compiled once (gateway/store/prepared.py): built per call, the
# expressions cost more CPU than SQLite took to run them (bench/form_submit.py).
_SUBMITTED = Prepared(select(FORM_SUBMISSION.c.conversation_id, FORM_SUBMISSION.c.message_id).where(
    FORM_SUBMISSION.c.studio_id == bindparam("studio_id"), FORM_SUBMISSION.c.token == bindparam("token")))
_MESSAGE_COLUMNS = ("studio_id", "conversation_id", "direction", "state", "from_email", "from_name", "to_json",
                    "cc_json", "subject", "text", "full_text", "html", "message_id", "in_reply_to",
                    "references_json", "sent_at", "received_at", "thread_rule", "automatic", "auto_kind", "delivery",
                    "parser", "defects_json")
_INSERT_MESSAGE = Prepared(insert(MESSAGE).values({name: bindparam(name, type_=MESSAGE.c[name].type)
                                                   for name in _MESSAGE_COLUMNS}).returning(MESSAGE.c.id))
_ATTACHMENT_COLUMNS = ("studio_id", "message_id", "filename", "content_type", "size", "sha256", "inline", "content_id")
_INSERT_ATTACHMENT = Prepared(insert(ATTACHMENT).values({name: bindparam(name, type_=ATTACHMENT.c[name].type)
                                                         for name in _ATTACHMENT_COLUMNS}))
_SUBMISSION_COLUMNS = ("studio_id", "conversation_id", "message_id", "form_version", "answers_json", "token",
                       "consent_at", "created_at")
_INSERT_SUBMISSION = Prepared(insert(FORM_SUBMISSION).values(
    {name: bindparam(name, type_=FORM_SUBMISSION.c[name].type) for name in _SUBMISSION_COLUMNS}))
# Driven by the guest's conversations (ix_conversation_guest_created, then ix_message_conversation):
# from the studio's confirmations of the day instead (ix_message_studio_auto), every submission
# read all of them, a cost that grew with the day's inquiries (bench/form_submit.py).
_CONFIRMED = Prepared(
    select(MESSAGE.c.id).select_from(CONVERSATION).join(MESSAGE, MESSAGE.c.conversation_id == CONVERSATION.c.id)
    .where(CONVERSATION.c.studio_id == bindparam("studio_id"), CONVERSATION.c.guest_id == bindparam("guest_id"),
           MESSAGE.c.auto_kind == CONFIRMATION,
           MESSAGE.c.received_at >= bindparam("since", type_=MESSAGE.c.received_at.type)).limit(1))

# The studio's language for the message the studio reads; the guest's for the confirmation.
_WORDS = {
    "de": {"subject": "Anfrage über das Formular", "yes": "Ja", "no": "Nein", "files": "Dateien im Anhang",
           "confirm_subject": "Deine Anfrage bei {studio}",
           "confirm": "Hallo,\n\ndanke für deine Anfrage bei {studio}. Wir melden uns so bald wie möglich.\n",
           "confirm_fields": "\nDeine Angaben zu diesen Punkten sind bei uns angekommen:\n{labels}\n",
           "confirm_end": "\nMöchtest du noch etwas ergänzen? Antworte einfach auf diese E-Mail.\n\n{studio}\n"},
    "en": {"subject": "Inquiry through the form", "yes": "Yes", "no": "No", "files": "Files attached",
           "confirm_subject": "Your inquiry to {studio}",
           "confirm": "Hello,\n\nthank you for your inquiry to {studio}. We will answer as soon as we can.\n",
           "confirm_fields": "\nWe received your answers to:\n{labels}\n",
           "confirm_end": "\nWould you like to add something? Simply answer this email.\n\n{studio}\n"},
}


@dataclass(frozen=True)
class Studio:
    id: int
    slug: str
    name: str
    locale: str


@dataclass(frozen=True)
class Submission:
    studio: Studio
    version: int
    definition: Definition
    checked: Checked
    token: str
    consent_at: datetime
    guest_language: str
    bare: bool           # without our issued fields: the confirmation echoes nothing at all


@dataclass(frozen=True)
class Submitted:
    conversation_id: int
    message_id: int
    duplicate: bool          # the token was used before: nothing new was stored
    confirmation_id: int | None


def language(locale: str) -> str:
    return "en" if locale.lower().startswith("en") else "de"


def find_submitted(conn: Connection, studio_id: int, token: str) -> Submitted | None:
    row = _SUBMITTED.execute(conn, studio_id=studio_id, token=token).fetchone()
    return None if row is None else Submitted(row[0], row[1], True, None)


def store_submission(conn: Connection, submission: Submission, settings: Settings,
                     reactions: Sequence[Reaction]) -> Submitted:
    """The inquiry, in the caller's transaction (see the module docstring), for a token the
    caller found unused (gateway/forms/limits.FormLimits.read asks with the limits). Two posts
    racing with one token meet at the unique (studio_id, token) constraint, and the loser's
    transaction fails. `reactions`: what reacts to a guest's new message (gateway/runtime.REACTIONS)."""
    studio = submission.studio
    definition, values = submission.definition, submission.checked.values
    email = values[definition.email_key].lower()
    name = next((values[f.key] for f in definition.fields if f.type == "name" and values.get(f.key)), "")
    words = _WORDS[language(studio.locale)]
    now = utcnow()
    sender = Address(email=normalize_email(email), name=name)
    # A new guest first, with the conversation (one statement on PostgreSQL): a form is mostly a
    # guest's first contact, and a guest created now cannot have had a confirmation today, so
    # the conversation is opened counting the confirmation, stored at the same moment
    # (Thread.opened_at). A known guest is found after (and named, if unnamed).
    opened = open_new_guest_conversation(conn, studio.id, sender, words["subject"], now, message_count=2)
    if opened is not None:
        conversation_id, guest_id = opened
        confirm = True
    else:
        guest_id = ensure_known_guest(conn, studio.id, sender, find_guest(conn, studio.id, sender.email))
        confirm = _CONFIRMED.execute(
            conn, studio_id=studio.id, guest_id=guest_id, since=now - CONFIRMATION_WINDOW).fetchone() is None
        conversation_id = open_conversation(conn, studio.id, guest_id, words["subject"], now,
                                            message_count=2 if confirm else 1)
    text = answers_text(definition, values, submission.checked.upload_names, language(studio.locale))
    form_message_id = f"form.{submission.token}.{studio.id}@{settings.mail_domain}"
    message = {
        "studio_id": studio.id, "conversation_id": conversation_id, "direction": "inbound", "state": "visible",
        "from_email": email[:320], "from_name": name[:200],
        "to_json": json.dumps([{"email": f"{studio.slug}@{settings.mail_domain}", "name": studio.name}]),
        "cc_json": "[]", "subject": words["subject"], "text": text, "full_text": text, "html": None,
        "message_id": form_message_id, "in_reply_to": None, "references_json": "[]", "sent_at": now,
        "received_at": now, "thread_rule": THREAD_RULE, "automatic": False, "auto_kind": None, "delivery": None,
        "parser": "form", "defects_json": "[]"}
    uploads = submission.checked.uploads
    digests = blob_store.put_many(conn, [u.data for u in uploads]) if uploads else []
    attachments = [(u.filename[:255], u.content_type, len(u.data), digest) for u, digest in zip(uploads, digests)]
    answers_json = json.dumps({"values": values, "files": submission.checked.upload_names}, ensure_ascii=False)
    if conn.dialect.name == "postgresql":
        message_id = _insert_inquiry_pg(conn, message, attachments, submission, answers_json)
    else:
        message_id = int(_INSERT_MESSAGE.execute(conn, **message).fetchone()[0])
        if attachments:
            _INSERT_ATTACHMENT.execute_many(conn, [
                {"studio_id": studio.id, "message_id": message_id, "filename": filename, "content_type": content_type,
                 "size": size, "sha256": digest, "inline": False, "content_id": None}
                for filename, content_type, size, digest in attachments])
        _INSERT_SUBMISSION.execute(
            conn, studio_id=studio.id, conversation_id=conversation_id, message_id=message_id,
            form_version=submission.version, answers_json=answers_json, token=submission.token,
            consent_at=submission.consent_at, created_at=now)
    # Announced like a guest's mail, before the confirmation so the inquiry's events come first:
    # the studio's log (live inbox, webhooks) and the profiles' notifications. Not acknowledged
    # (the address is unverified, `sender_aligned` False): the confirmation below is the form's own.
    # The inquiry's event and the confirmation's (as of a reply, create_reply) are recorded
    # together at the end: one counter statement and one insert (one statement on PostgreSQL).
    events: list[tuple[str, datetime, dict[str, Any]]] = []
    announce(conn, Threaded(studio_id=studio.id, message_id=message_id, conversation_id=conversation_id,
                            rule=THREAD_RULE, opened=True, visible=True, automatic=False, guest_id=guest_id,
                            sender_name=name), settings,
             Chunk(studio_ids={studio.slug: studio.id}, memo={DEFERRED_EVENTS: events}), reactions)
    # The conversation as just written, so the confirmation need not read it back.
    thread = Thread(words["subject"], (sender.email[:320], ""), (studio.slug, studio.name), (form_message_id, "[]"),
                    opened_at=now)
    confirmation = _confirm(conn, submission, conversation_id, thread, settings, events) if confirm else None
    if events:
        record_events(conn, studio.id, events)
    return Submitted(conversation_id, message_id, False, confirmation)


def _inquiry_pg(count: int) -> DriverSQL:
    """PostgreSQL: the inquiry's message, its `count` attachments and its submission row in one
    statement (three round trips of the group commit's one connection before). Each attachment
    row's blob was written before it, in the same transaction."""
    found = _INQUIRY_PG.get(count)
    if found is None:
        attachments = ""
        if count:
            rows = ", ".join(["(?::integer, ?::varchar, ?::varchar, ?::integer, ?::varchar)"] * count)
            attachments = (
                "a AS (INSERT INTO attachment (studio_id, message_id, filename, content_type, size, sha256, inline, "
                "content_id) SELECT ?, m.id, v.filename, v.content_type, v.size, v.sha256, false, NULL "
                f"FROM m, (VALUES {rows}) AS v(n, filename, content_type, size, sha256) ORDER BY v.n), ")
        found = _INQUIRY_PG[count] = DriverSQL(
            f"WITH m AS (INSERT INTO message ({', '.join(_MESSAGE_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_MESSAGE_COLUMNS))}) RETURNING id), {attachments}"
            f"s AS (INSERT INTO form_submission ({', '.join(_SUBMISSION_COLUMNS)}) "
            "SELECT ?, ?, m.id, ?, ?, ?, ?, ? FROM m) SELECT id FROM m")
    return found


_INQUIRY_PG: dict[int, DriverSQL] = {}


def _insert_inquiry_pg(conn: Connection, message: dict[str, Any], attachments: list[tuple[str, str, int, str]],
                       submission: Submission, answers_json: str) -> int:
    """The inquiry's message id, its attachments and submission row written with it (_inquiry_pg)."""
    params: list[Any] = [bind_processor(conn, MESSAGE.c[name])(message[name]) for name in _MESSAGE_COLUMNS]
    if attachments:
        params.append(message["studio_id"])
        for n, row in enumerate(attachments):
            params += [n, *row]
    stamp = bind_processor(conn, FORM_SUBMISSION.c.created_at)
    params += [message["studio_id"], message["conversation_id"], submission.version, answers_json, submission.token,
               bind_processor(conn, FORM_SUBMISSION.c.consent_at)(submission.consent_at), stamp(message["received_at"])]
    return int(_inquiry_pg(len(attachments))(conn, params).fetchone()[0])


def answers_text(definition: Definition, values: dict[str, Any], files: dict[str, list[str]], lang: str) -> str:
    """The answers under their labels, in the form's order: what the studio reads. Used for a
    submission of any version with that version's definition."""
    words = _WORDS[lang]
    blocks = []
    for f in definition.fields:
        if f.type == "files":
            if files.get(f.key):
                blocks.append(f"{f.label_in(lang)}\n" + "\n".join(f"- {n}" for n in files[f.key])
                              + f"\n({words['files']})")
            continue
        value = values.get(f.key)
        if value is None or value == "" or value == []:
            continue
        if f.type == "checkbox":
            shown = words["yes"] if value else words["no"]
        elif f.type == "select":
            shown = f.option_label(value, lang)
        elif f.type == "multi_select":
            shown = ", ".join(f.option_label(v, lang) for v in value)
        elif f.type == "number":
            shown = str(int(value)) if float(value) == int(value) else str(value)
        else:
            shown = str(value)
        blocks.append(f"{f.label_in(lang)}\n{shown}")
    return "\n\n".join(blocks) + "\n"


def _confirm(conn: Connection, submission: Submission, conversation_id: int, thread: Thread,
             settings: Settings, events: list[tuple[str, datetime, dict[str, Any]]]) -> int | None:
    """The confirmation (the caller checked that this address had none from the studio in the
    last day)."""
    studio = submission.studio
    lang = submission.guest_language if submission.guest_language in _WORDS else language(studio.locale)
    words = _WORDS[lang]
    studio_name = " ".join(studio.name.split())
    text = words["confirm"].format(studio=studio_name)
    if not submission.bare:
        answered = set(submission.checked.values) | set(submission.checked.upload_names)
        labels = [f"- {text_in(f.label, lang) or f.key}" for f in submission.definition.fields
                  if f.key in answered and submission.checked.values.get(f.key, True) not in ("", [], False)]
        if labels:
            text += words["confirm_fields"].format(labels="\n".join(labels))
    text += words["confirm_end"].format(studio=studio_name)
    created = create_reply(conn, studio_id=studio.id, conversation_id=conversation_id, text=text,
                           settings=settings, auto_kind=CONFIRMATION, recipient=thread.guest,
                           subject=words["confirm_subject"].format(studio=studio_name), thread=thread,
                           events=events)
    return created.message_row_id if created else None
