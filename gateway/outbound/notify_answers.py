"""A profile's answer to a notification mail, sent on to the guest like an in-app reply.

The threader files the answer into its conversation as held mail and records in its
thread_rule how the sender check went (gateway/inbound/threader._notification_answer). This
"message threaded" reaction sends a passing one on through `create_reply`, the reply API's own
code: the guest gets it from the studio, threaded, with its attachments, and the quoted
notification already stripped (the threader keeps the new text only, gateway/inbound/quotes.py).
The profile's own copy is then set aside (`rejected`): the conversation shows the reply that
went out, not the mail it came in. A failing one stays held, its thread_rule naming the reason
(`notify_answer_stranger`, `_disconnected`, `_unauthenticated`), for the studio to see.

Accepting such a held answer (`confirm_held_answer`, called by the held-mail API and page
before the ordinary decision) sends it exactly as a passing one is sent, once: the state moves
from `held` in the same conditional update that claims it. Who may confirm: the profile the
notification was addressed to, and the owner. The answer speaks to the guest in the studio's
name, and it was held because we could not tell that this profile wrote it; only that profile
can say "this is mine", and the owner answers for everything the studio sends. Another member
can neither vouch for a colleague's words nor should be able to send them by a click; they may
still reject it (rejecting sends nothing, so anyone who sees held mail may).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from sqlalchemy import Connection, select, update

from gateway.access.studios import Caller
from gateway.access.visibility import SHOWN_MESSAGE
from gateway.eventlog import CONVERSATION_UPDATED, record as record_event
from gateway.events import Chunk, Threaded
from gateway.mail.addresses import parse_studio_address, verify_notification_token
from gateway.outbound.replies import ReplyError, Upload, create_reply
from gateway.settings import Settings
from gateway.store.models import utcnow
from gateway.store.tables import ATTACHMENT, BLOB, CONVERSATION, INBOUND, MESSAGE, STUDIO

log = logging.getLogger(__name__)
NOTIFY_ANSWER = "notify_answer"   # the thread_rule of an answer that passed the check


def answer_by_mail(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction: send a profile's checked answer on to the guest."""
    if event.rule != NOTIFY_ANSWER or event.automatic:
        return
    try:
        reply = _send(conn, settings, event.studio_id, event.conversation_id, event.message_id)
    except ReplyError as exc:   # an empty answer (only the quote), or too large: stays held
        log.info("a notification answer (message %d) was not sent: %s", event.message_id, exc)
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == event.message_id)
                     .values(thread_rule=f"{NOTIFY_ANSWER}_{exc.code}"[:32]))
        return
    if reply:
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == event.message_id).values(state="rejected"))


def _send(conn: Connection, settings: Settings, studio_id: int, conversation_id: int, message_id: int) -> bool:
    """Queue the answer's text and attachments as the studio's reply; False if the conversation
    is gone. ReplyError: nothing to send (only the quote) or too large."""
    text = conn.execute(select(MESSAGE.c.text).where(MESSAGE.c.id == message_id)).scalar_one()
    uploads = [Upload(a.filename, a.content_type, a.data) for a in conn.execute(
        select(ATTACHMENT.c.filename, ATTACHMENT.c.content_type, BLOB.c.data)
        .join(BLOB, BLOB.c.sha256 == ATTACHMENT.c.sha256)
        .where(ATTACHMENT.c.message_id == message_id, ATTACHMENT.c.inline.is_(False))
        .order_by(ATTACHMENT.c.id))]
    return create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=text,
                        settings=settings, uploads=uploads) is not None


# --- a held answer, confirmed in the messenger or the API -------------------------------------------

class NotYours(PermissionError):
    """A held notification answer may be confirmed only by the profile it answers for, or the owner."""


@dataclass(frozen=True)
class Confirmed:
    id: int
    state: str              # "sent": the answer went to the guest as the studio's reply
    conversation_id: int


def addressed_profile(conn: Connection, settings: Settings, studio_id: int, inbound_mail_id: int | None) -> int | None:
    """The profile whose notification address the answer came to, read back from the delivery's
    recipients and verified again (the token is the only record of it); None if not found."""
    if inbound_mail_id is None:
        return None
    rcpt = conn.execute(select(INBOUND.c.rcpt_to).where(INBOUND.c.id == inbound_mail_id)).scalar()
    slug = conn.execute(select(STUDIO.c.slug).where(STUDIO.c.id == studio_id)).scalar()
    for to in json.loads(rcpt or "[]"):
        address = parse_studio_address(to, settings.mail_domain)
        if address is not None and address.slug == slug:
            named = verify_notification_token(settings.secret(), studio_id, address.detail)
            if named is not None:
                return named[1]
    return None


def confirm_held_answer(conn: Connection, settings: Settings, caller: Caller, message_id: int) -> Confirmed | None:
    """Send a held notification answer to the guest, in the caller's transaction.

    None when the message is not a held notification answer of the caller's studio: the caller
    then decides it as any held mail (gateway/inbox/actions.decide_held), which also tells
    "already decided" from "not found". NotYours: the caller may not confirm it (see the module
    docstring). ReplyError: it cannot be sent (nothing but the quote, too large); the caller's
    transaction must roll back, and the answer stays held."""
    held = conn.execute(select(MESSAGE.c.conversation_id, MESSAGE.c.inbound_mail_id).where(
        MESSAGE.c.id == message_id, MESSAGE.c.studio_id == caller.studio_id, MESSAGE.c.state == "held",
        MESSAGE.c.direction == "inbound", MESSAGE.c.thread_rule.startswith(NOTIFY_ANSWER), SHOWN_MESSAGE)).first()
    if held is None:
        return None
    if caller.role != "owner" and caller.profile_id != addressed_profile(conn, settings, caller.studio_id,
                                                                           held.inbound_mail_id):
        raise NotYours("only the profile this answer is from, or the owner, may confirm it")
    # Claimed from `held` first: of two confirmations (a double tap, two people) one sends it.
    # Set aside as a passing answer is: the conversation shows the reply that went out.
    claimed = conn.execute(update(MESSAGE).where(MESSAGE.c.id == message_id, MESSAGE.c.state == "held")
                           .values(state="rejected")).rowcount
    if not claimed:
        return None
    _send(conn, settings, caller.studio_id, held.conversation_id, message_id)  # its conversation is live (above)
    now = utcnow()
    conn.execute(update(CONVERSATION).where(CONVERSATION.c.id == held.conversation_id).values(updated_at=now))
    record_event(conn, caller.studio_id, CONVERSATION_UPDATED, now, conversation_id=held.conversation_id,
                 change="held_accepted", message_id=message_id)
    return Confirmed(id=message_id, state="sent", conversation_id=held.conversation_id)
