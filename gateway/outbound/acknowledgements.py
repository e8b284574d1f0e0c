"""The automatic "thanks for your inquiry" a studio can switch on for new inquiries.

Automatic mail must never start a loop between two auto-responders (RFC 3834): none is sent
for automatic mail, bounces or mailing lists (`acknowledge` reacts only to a new, visible,
non-automatic conversation), it carries Auto-Submitted and X-Auto-Response-Suppress, and a
guest gets at most one acknowledgement from a studio per day, however many inquiries.

An acknowledgement is also mail we send to an address we did not choose, which makes it the
tool of backscatter: forge a victim's address as the sender, and the studio mails the victim.
So (RFC 3834 section 2, and what the big receivers treat as spam):

- it goes only to a sender whose SPF or DKIM passed for the From domain (aligned, RFC 7489
  section 3.1): the domain vouched for this mail. No verdict (a DNS timeout, no record, a
  provider that reports nothing) sends nothing;
- never to a guest taken from Reply-To (a website form, gateway/inbound/automatic.py): anyone
  can type any address into a form;
- it echoes nothing of the sender's: a generic greeting, no display name in the text or the
  To header, and the studio's own subject instead of "Re: <their subject>";
- a studio sends at most GATEWAY_ACKNOWLEDGEMENTS_PER_HOUR of them in any hour, so a flood of
  new senders (each within the per-sender brake) cannot turn it into a mail cannon.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from gateway.store.db import DriverSQL
from gateway.store.tables import CONVERSATION, GUEST, MESSAGE
from gateway.store.models import utcnow
from gateway.outbound.render import shared_renderer
from gateway.outbound.replies import create_reply
from gateway.events import Chunk, Threaded
from gateway.settings import Settings

log = logging.getLogger(__name__)

ACKNOWLEDGEMENT = "acknowledgement"
PER_GUEST_WINDOW = timedelta(days=1)
STUDIO_WINDOW = timedelta(hours=1)
# The studio's own subject, never the guest's (by template language, gateway/outbound/render.py).
SUBJECTS = {"de": "Deine Anfrage bei {studio}", "en": "Your inquiry to {studio}"}
_STUDIO = DriverSQL("SELECT acknowledge_inquiries, name, locale FROM studio WHERE id = ?")


def acknowledge(conn: Connection, event: Threaded, settings: Settings, chunk: Chunk) -> None:
    """The "message threaded" reaction (gateway/events.py): a new inquiry may be acknowledged.

    The one door from inbound mail into the outbox: it queues a reply like the studio's own."""
    if event.opened and event.visible and not event.automatic and event.guest_id is not None \
            and event.sender_aligned and not event.guest_from_reply_to:
        maybe_acknowledge(conn, studio_id=event.studio_id, conversation_id=event.conversation_id,
                          guest_id=event.guest_id, settings=settings,
                          studios=chunk.memo.setdefault(ACKNOWLEDGEMENT, {}))


def maybe_acknowledge(conn: Connection, *, studio_id: int, conversation_id: int, guest_id: int,
                      settings: Settings, studios: dict[int, Any] | None = None) -> int | None:
    """Queue an acknowledgement for a new inquiry if the studio wants them; its message row id.

    `studios` caches the studio's answer for the caller's transaction (the processor's chunk of
    a few messages): every new inquiry asks, and a studio switching acknowledgements on or off
    while a chunk runs sees it apply from the next chunk, milliseconds later.
    """
    if studios is not None and studio_id in studios:
        studio = studios[studio_id]
    else:
        studio = _STUDIO(conn, (studio_id,)).fetchone()
        if studios is not None:
            studios[studio_id] = studio
    if studio is None or not studio[0]:
        return None
    _, name, locale = studio
    now = utcnow()
    recent = conn.execute(
        select(MESSAGE.c.id).join(CONVERSATION, CONVERSATION.c.id == MESSAGE.c.conversation_id)
        .where(MESSAGE.c.studio_id == studio_id, CONVERSATION.c.guest_id == guest_id,
               MESSAGE.c.direction == "outbound", MESSAGE.c.automatic.is_(True),
               MESSAGE.c.received_at >= now - PER_GUEST_WINDOW).limit(1)
    ).first()
    if recent is not None:
        return None
    if sent_this_hour(conn, studio_id) >= settings.acknowledgements_per_hour:
        log.warning("studio %d sent %d acknowledgements this hour (GATEWAY_ACKNOWLEDGEMENTS_PER_HOUR); "
                    "no more until the hour has passed", studio_id, settings.acknowledgements_per_hour)
        return None
    guest_email = conn.execute(select(GUEST.c.email).where(GUEST.c.id == guest_id)).scalar()
    if not guest_email:
        return None
    renderer = shared_renderer()
    text = renderer.acknowledgement(locale=locale, studio_name=name).text
    subject = SUBJECTS.get(renderer.language(locale), SUBJECTS["en"]).format(studio=" ".join(name.split()))
    created = create_reply(conn, studio_id=studio_id, conversation_id=conversation_id, text=text,
                           settings=settings, auto_kind=ACKNOWLEDGEMENT, subject=subject,
                           recipient=(guest_email, ""))
    return created.message_row_id if created else None


def sent_this_hour(conn: Connection, studio_id: int) -> int:
    """Acknowledgements the studio queued in the last hour (ix_message_studio_auto)."""
    return int(conn.execute(
        select(func.count()).select_from(MESSAGE).where(
            MESSAGE.c.studio_id == studio_id, MESSAGE.c.auto_kind == ACKNOWLEDGEMENT,
            MESSAGE.c.received_at >= utcnow() - STUDIO_WINDOW)).scalar() or 0)
