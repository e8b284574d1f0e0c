"""Hard erasure: rows, raw mail and attachment bytes of a message, conversation, guest or studio.

Soft deletion (hide now, restore within 30 days) is a flag on the rows; this module is what
happens when data must really go: the purge after 30 days, a guest's erasure, an account's
deletion, and replaying the deletion log after a restore. Every function is idempotent
(erasing what is gone already is a no-op), so a replay or a retry after a crash is safe.

Bytes are content-addressed and shared: the same photo sent to two studios is one blob. A
blob is deleted only when no row anywhere refers to it any more, so erasing one studio
never touches another's data. The dedupe key of each erased inbound message stays behind as
a tombstone (a hash, no personal data): a late or retried delivery of the same mail must not
bring the conversation back. The callers append to the deletion log (gateway/lifecycle/deletion_log.py)
before they call in here.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses

from sqlalchemy import ColumnElement, Connection, Table, delete, func, insert, select, update

from gateway.mail.addresses import parse_studio_address
from gateway.store.models import (SQLModel, utcnow)
from gateway.access.idempotency import forget_conversation
from gateway.access.visibility import recount
from gateway.store.blobs import blob_store
from gateway.store.tables import (AUTOMATIC_MAIL, STUDIO, INBOUND, GUEST, CONVERSATION, MESSAGE, ATTACHMENT, OUTBOUND_JOB, TOMBSTONE,
                                  FORM_SUBMISSION)

_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits


def erase_message(conn: Connection, studio_id: int, message_id: int) -> bool:
    """One message of the studio with its attachments and bytes; its conversation stays."""
    ids = conn.execute(select(MESSAGE.c.id, MESSAGE.c.conversation_id).where(
        MESSAGE.c.studio_id == studio_id, MESSAGE.c.id == message_id)).all()
    if not ids:
        return False
    _erase_messages(conn, studio_id, [message_id])
    conversation_id = ids[0].conversation_id
    if conversation_id is not None:  # keep the conversation's count and activity honest
        recount(conn, conversation_id)
        forget_conversation(conn, studio_id, conversation_id)  # a kept reply answer holds the text
    return True


def erase_conversation(conn: Connection, studio_id: int, conversation_id: int) -> bool:
    """A conversation with all its messages, attachments and bytes; the guest stays."""
    found = conn.execute(select(CONVERSATION.c.id).where(
        CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.id == conversation_id)).first()
    if found is None:
        return False
    message_ids = list(conn.execute(select(MESSAGE.c.id).where(
        MESSAGE.c.studio_id == studio_id, MESSAGE.c.conversation_id == conversation_id)).scalars())
    _erase_messages(conn, studio_id, message_ids)
    forget_conversation(conn, studio_id, conversation_id)  # a kept reply answer holds the text
    conn.execute(delete(CONVERSATION).where(CONVERSATION.c.id == conversation_id))
    return True


def erase_guest(conn: Connection, studio_id: int, guest_id: int, mail_domain: str) -> bool:
    """A guest of the studio: every conversation with them, every mail they wrote into another
    guest's conversation (see guest_messages), their mail that never became a message
    (quarantined, automatic, waiting: rows and raw bytes), their address in the To and Cc of
    the studio's other messages, and their contact. `mail_domain` tells which inbound mail was
    addressed to this studio."""
    found = conn.execute(select(GUEST.c.id, GUEST.c.email).where(
        GUEST.c.studio_id == studio_id, GUEST.c.id == guest_id)).first()
    if found is None:
        return False
    for conversation_id in list(conn.execute(select(CONVERSATION.c.id).where(
            CONVERSATION.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id)).scalars()):
        erase_conversation(conn, studio_id, conversation_id)
    for message_id in list(conn.execute(select(MESSAGE.c.id).where(
            guest_messages(studio_id, guest_id, found.email))).scalars()):
        erase_message(conn, studio_id, message_id)
    _erase_unthreaded_inbound(conn, studio_id, found.email, mail_domain)
    _scrub_address(conn, studio_id, found.email)
    conn.execute(delete(GUEST).where(GUEST.c.id == guest_id))
    return True


def _erase_unthreaded_inbound(conn: Connection, studio_id: int, email: str, mail_domain: str) -> None:
    """The guest's mail that never became a message: quarantined, automatic mail that opened no
    conversation, or still waiting. Its raw bytes are all there is of it, so the rows and the
    bytes go. Theirs is mail addressed to this studio alone (mail also addressed to another
    studio is that studio's data too) whose envelope sender, From or Reply-To is their address."""
    studio = conn.execute(select(STUDIO.c.slug).where(STUDIO.c.id == studio_id)).scalar()
    if studio is None:
        return
    address = email.lower()
    candidates = _inbound_addressed_to(conn, studio, mail_domain)
    threaded = set()
    for chunk in _chunks(sorted(candidates)):
        threaded.update(conn.execute(select(MESSAGE.c.inbound_mail_id).where(
            MESSAGE.c.inbound_mail_id.in_(chunk))).scalars())
    theirs: set[int] = set()
    for chunk in _chunks(sorted(candidates - threaded)):
        for row in conn.execute(select(INBOUND.c.id, INBOUND.c.mail_from, INBOUND.c.raw_sha256).where(
                INBOUND.c.id.in_(chunk))):
            if row.mail_from.lower() == address or address in _header_senders(blob_store.get(conn, row.raw_sha256)):
                theirs.add(row.id)
    # Their automatic mail's listing (sender, subject) is theirs too, whether or not its raw
    # bytes are still here: the listing names them as much as the bytes do.
    conn.execute(delete(AUTOMATIC_MAIL).where(AUTOMATIC_MAIL.c.studio_id == studio_id,
                                              func.lower(AUTOMATIC_MAIL.c.from_email) == address))
    for chunk in _chunks(sorted(theirs)):
        conn.execute(delete(AUTOMATIC_MAIL).where(AUTOMATIC_MAIL.c.studio_id == studio_id,
                                                  AUTOMATIC_MAIL.c.inbound_mail_id.in_(chunk)))
    if theirs:
        shas = _inbound_shas(conn, theirs)
        for chunk in _chunks(sorted(theirs)):
            conn.execute(delete(INBOUND).where(INBOUND.c.id.in_(chunk)))
        blob_store.drop_unreferenced(conn, shas)


def _header_senders(raw: bytes | None) -> set[str]:
    """Lower-cased addresses in From, Sender and Reply-To of raw mail (headers only, and only
    the first 256 KB: the headers of mail that was accepted fit well within that)."""
    if not raw:
        return set()
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:256 * 1024])
    found: set[str] = set()
    for name in ("from", "sender", "reply-to"):
        for value in headers.get_all(name) or []:
            found.update(addr.lower() for _, addr in getaddresses([str(value)]) if addr)
    return found


def _scrub_address(conn: Connection, studio_id: int, email: str) -> None:
    """Take the guest's address out of the To and Cc lists of the studio's other messages (a
    friend's inquiry that copied them in stays, without them)."""
    address = email.lower()
    stored = json.dumps(address)[1:-1]   # as the lists are stored: JSON, non-ASCII escaped
    pattern = "%" + stored.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = conn.execute(select(MESSAGE.c.id, MESSAGE.c.to_json, MESSAGE.c.cc_json).where(
        MESSAGE.c.studio_id == studio_id,
        func.lower(MESSAGE.c.cc_json).like(pattern, escape="\\") | func.lower(MESSAGE.c.to_json).like(
            pattern, escape="\\"))).all()
    for row in rows:
        values = {}
        for column in ("to_json", "cc_json"):
            try:
                people = json.loads(getattr(row, column))
            except ValueError:
                continue
            kept = [p for p in people if not (isinstance(p, dict) and str(p.get("email", "")).lower() == address)]
            if len(kept) != len(people):
                values[column] = json.dumps(kept)
        if values:
            conn.execute(update(MESSAGE).where(MESSAGE.c.id == row.id).values(**values))


def guest_messages(studio_id: int, guest_id: int, email: str) -> ColumnElement[bool]:
    """A guest's messages at the studio: everything in their conversations, and the mail they
    wrote into other conversations (a friend's inquiry they wrote in, held or accepted there).
    That mail is theirs as much as their own inquiries are."""
    theirs = select(CONVERSATION.c.id).where(CONVERSATION.c.studio_id == studio_id,
                                             CONVERSATION.c.guest_id == guest_id)
    return (MESSAGE.c.studio_id == studio_id) & (
        MESSAGE.c.conversation_id.in_(theirs) | ((MESSAGE.c.direction == "inbound") & (MESSAGE.c.from_email == email)))


def erase_studio(conn: Connection, studio_id: int, mail_domain: str) -> bool:
    """The studio and everything of it: every row of every table that has a studio_id (found
    from the schema, so a table added later is included without touching this), the inbound
    mail addressed only to it (quarantined and pending included) and the bytes nobody else
    refers to. Other studios' rows and shared blobs stay."""
    studio = conn.execute(select(STUDIO.c.id, STUDIO.c.slug).where(STUDIO.c.id == studio_id)).first()
    if studio is None:
        return False
    message_ids = list(conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.studio_id == studio_id)).scalars())
    shas = _message_shas(conn, message_ids)
    inbound_ids = _inbound_ids(conn, message_ids) | _inbound_addressed_to(conn, studio.slug, mail_domain)
    shas |= _inbound_shas(conn, inbound_ids)
    for table in reversed(SQLModel.metadata.sorted_tables):  # children before parents
        if table.name != "studio" and "studio_id" in table.c:
            if table is MESSAGE:  # a bounce refers to the message it reports
                conn.execute(update(MESSAGE).where(MESSAGE.c.studio_id == studio_id).values(bounce_of_id=None))
            conn.execute(delete(table).where(table.c.studio_id == studio_id))
    conn.execute(delete(STUDIO).where(STUDIO.c.id == studio_id))
    _drop_unreferenced_inbound(conn, inbound_ids)
    blob_store.drop_unreferenced(conn, shas)
    return True


# --- the shared part -------------------------------------------------------------------------

def _erase_messages(conn: Connection, studio_id: int, message_ids: list[int]) -> None:
    if not message_ids:
        return
    shas = _message_shas(conn, message_ids)
    inbound_ids = _inbound_ids(conn, message_ids)
    for chunk in _chunks(message_ids):
        keys = [k for k in conn.execute(select(MESSAGE.c.dedupe_key).where(
            MESSAGE.c.id.in_(chunk), MESSAGE.c.dedupe_key.is_not(None))).scalars()]
        _tombstone(conn, studio_id, keys)
        conn.execute(delete(OUTBOUND_JOB).where(OUTBOUND_JOB.c.message_id.in_(chunk)))
        conn.execute(delete(ATTACHMENT).where(ATTACHMENT.c.message_id.in_(chunk)))
        # A form submission's answers (and consent) go with the message they became.
        conn.execute(delete(FORM_SUBMISSION).where(FORM_SUBMISSION.c.message_id.in_(chunk)))
        conn.execute(update(MESSAGE).where(MESSAGE.c.bounce_of_id.in_(chunk)).values(bounce_of_id=None))
        conn.execute(delete(MESSAGE).where(MESSAGE.c.id.in_(chunk)))
    _drop_unreferenced_inbound(conn, inbound_ids)
    blob_store.drop_unreferenced(conn, shas | _inbound_shas(conn, inbound_ids))


def _tombstone(conn: Connection, studio_id: int, keys: list[str]) -> None:
    if not keys:
        return
    have = set(conn.execute(select(TOMBSTONE.c.dedupe_key).where(
        TOMBSTONE.c.studio_id == studio_id, TOMBSTONE.c.dedupe_key.in_(keys))).scalars())
    now = utcnow()
    rows = [{"studio_id": studio_id, "dedupe_key": k, "erased_at": now} for k in sorted(set(keys) - have)]
    if rows:
        conn.execute(insert(TOMBSTONE), rows)


def _message_shas(conn: Connection, message_ids: list[int]) -> set[str]:
    shas: set[str] = set()
    for chunk in _chunks(message_ids):
        shas.update(s for s in conn.execute(select(MESSAGE.c.raw_sha256).where(MESSAGE.c.id.in_(chunk))).scalars() if s)
        shas.update(conn.execute(select(ATTACHMENT.c.sha256).where(ATTACHMENT.c.message_id.in_(chunk))).scalars())
    return shas


def _inbound_ids(conn: Connection, message_ids: list[int]) -> set[int]:
    ids: set[int] = set()
    for chunk in _chunks(message_ids):
        ids.update(i for i in conn.execute(select(MESSAGE.c.inbound_mail_id).where(
            MESSAGE.c.id.in_(chunk))).scalars() if i is not None)
    return ids


def _inbound_shas(conn: Connection, inbound_ids: Iterable[int]) -> set[str]:
    shas: set[str] = set()
    for chunk in _chunks(list(inbound_ids)):
        shas.update(conn.execute(select(INBOUND.c.raw_sha256).where(INBOUND.c.id.in_(chunk))).scalars())
    return shas


def _inbound_addressed_to(conn: Connection, slug: str, mail_domain: str) -> set[int]:
    """Inbound mail whose every studio recipient is this studio (a mail also addressed to
    another studio is that studio's data too, and stays)."""
    pattern = f"%{slug}%@%"
    found: set[int] = set()
    for row in conn.execute(select(INBOUND.c.id, INBOUND.c.rcpt_to).where(INBOUND.c.rcpt_to.like(pattern))):
        try:
            recipients = json.loads(row.rcpt_to)
        except ValueError:
            continue
        slugs = {a.slug for a in (parse_studio_address(str(r), mail_domain) for r in recipients) if a}
        if slugs == {slug}:
            found.add(row.id)
    return found


def _drop_unreferenced_inbound(conn: Connection, inbound_ids: set[int]) -> None:
    for chunk in _chunks(sorted(inbound_ids)):
        still = set(conn.execute(select(MESSAGE.c.inbound_mail_id).where(
            MESSAGE.c.inbound_mail_id.in_(chunk))).scalars())
        gone = [i for i in chunk if i not in still]
        if gone:
            conn.execute(delete(INBOUND).where(INBOUND.c.id.in_(gone)))


def _chunks(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start:start + _CHUNK]


def studio_tables() -> list[Table]:
    """Every table holding a studio's rows (for the proof that nothing of an erased studio remains)."""
    return [t for t in SQLModel.metadata.sorted_tables if "studio_id" in t.c or t.name == "studio"]
