"""What the helpdesk does with a mail beyond filing it: LÖSCHEN asks for an account deletion.

The FAQ's promise: "write us an email with the subject LÖSCHEN to the helpdesk and we delete
your account and your data irrevocably". The mail is threaded into the helpdesk studio like
any other (one pipeline) and stays there as an ordinary conversation a person can read and
answer. In the same transaction, this asks for the deletion of every studio whose registered
owner address (studio.owner_email) the mail is from (gateway/lifecycle/account_deletion.py mails that
address a code; nothing is deleted before it is used). One address that owns several studios
gets one confirmation per studio, each naming its studio, so the owner confirms exactly the
ones that should go.

From any other address (a guest, a studio member, a stranger) nothing more happens: nothing is
deleted and nothing is mailed back, so the sender cannot learn whether an account exists (if
the operator switches on acknowledgements for the helpdesk, everyone gets the same one). A
retried delivery is a duplicate for the threader and asks nothing again; automatic mail
(auto-replies, bounces) never asks.

The subject: LÖSCHEN, Löschen, LOESCHEN or loeschen in any case, after any number of reply and
forward prefixes (Re:, AW:, Fwd:, WG:, ... as the threader's subject rule knows them) and white
space; an RFC 2047-encoded subject arrives decoded from the parser. Anything more ("Löschen
bitte") is an ordinary helpdesk mail for a person to read.
"""
from __future__ import annotations

import logging
import unicodedata

from sqlalchemy import Connection, func, select

from gateway.lifecycle.account_deletion import DeletionRefused, request_deletion
from gateway.mail.subjects import normalize_subject
from gateway.store.tables import MESSAGE, STUDIO
from gateway.store.models import utcnow
from gateway.events import Chunk, Threaded
from gateway.settings import Settings

log = logging.getLogger(__name__)
_DELETION_SUBJECTS = frozenset({"löschen", "loeschen"})


def is_deletion_subject(subject: str) -> bool:
    """Whether a subject asks for the account's deletion (see the module docstring)."""
    return normalize_subject(unicodedata.normalize("NFC", subject or "")) in _DELETION_SUBJECTS


def helpdesk_commands(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction (gateway/events.py): act on what reached the helpdesk.

    `chunk.studio_ids` is the threader's slug → id cache for the chunk, so mail for other
    studios costs a dictionary lookup here."""
    helpdesk = chunk.studio_ids.get(settings.helpdesk_slug) if settings.helpdesk_slug else None
    if helpdesk is not None and event.studio_id == helpdesk:
        _ask_for_deletion(conn, settings, helpdesk, event.message_id, event.conversation_id)


def _ask_for_deletion(conn: Connection, settings: Settings, helpdesk: int, message_id: int,
                      conversation_id: int) -> None:
    message = conn.execute(select(MESSAGE.c.from_email, MESSAGE.c.subject, MESSAGE.c.full_text, MESSAGE.c.automatic)
                           .where(MESSAGE.c.id == message_id)).one()
    if message.automatic or not is_deletion_subject(message.subject):
        return
    owned = list(conn.execute(select(STUDIO.c.id).where(
        func.lower(STUDIO.c.owner_email) == message.from_email.lower(), STUDIO.c.id != helpdesk)
        .order_by(STUDIO.c.id)).scalars())
    if not owned:
        log.info("helpdesk message %d asks for a deletion, but its sender owns no studio", message_id)
        return
    now = utcnow()
    for studio_id in owned:
        try:
            request_deletion(conn, settings, studio_id=studio_id, channel="email", reason=message.full_text,
                             helpdesk=helpdesk, conversation_id=conversation_id, now=now)
        except DeletionRefused as exc:  # raised before anything was written
            log.info("deletion of studio %d by mail not requested: %s", studio_id, exc)
