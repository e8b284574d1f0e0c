"""Mailing a one-time sign-in link to the web messenger (gateway/access/web_sessions.py).

The mail is the helpdesk's, like the account-deletion confirmation: an outbound message in a
helpdesk conversation with the address, sent through the ordinary outbox and rendered in the
profile's language. Its stored text shows the link masked; the real link exists only when the
outbox composes the mail (`render_links`, a LateBodies hook wired by gateway/runtime.py),
recomputed from the link's nonce. One conversation per address collects its sign-in mails, so
the operator's inbox gets one thread per person, not one per sign-in.

Only a connected profile's address gets a mail; any other address gets the same answer from
the page and nothing else. Without a helpdesk (GATEWAY_HELPDESK_ADDRESS) or GATEWAY_PUBLIC_URL
there is nothing to send from or link to: nothing is sent, and the operator's
`gateway studio login-link` prints a link instead.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Connection, Engine, select, update

from gateway.access.web_sessions import Recipient, create_link, link_token, link_url, recipients
from gateway.lifecycle.helpdesk import helpdesk_id, open_helpdesk_conversation
from gateway.outbound.render import Rendered, Renderer, shared_renderer
from gateway.outbound.replies import create_reply
from gateway.settings import Settings
from gateway.store.db import write_tx
from gateway.store.tables import CONVERSATION, GUEST, LOGIN_LINK, PROFILE, STUDIO

log = logging.getLogger(__name__)
LOGIN_MAIL = "login_link"      # Message.auto_kind of the sign-in mail
_MASKED = "••••••••"
_SUBJECTS = {"de": "Dein Anmeldelink für {name}", "en": "Your sign-in link for {name}"}


def mail_login_links(engine: Engine, settings: Settings, email: str, now: datetime) -> int:
    """Queue a sign-in mail for every connected profile with this address; how many (0 for any
    other address: the caller answers the same either way)."""
    if not settings.public_url:
        return 0
    with write_tx(engine) as conn:
        helpdesk = helpdesk_id(conn, settings)
        if helpdesk is None:
            log.warning("a sign-in link was asked for, but there is no helpdesk (GATEWAY_HELPDESK_ADDRESS) to mail it")
            return 0
        # The helpdesk would mail itself: its operator signs in with `gateway studio login-link`.
        found = [r for r in recipients(conn, email) if r.studio_id != helpdesk]
        for recipient in found:
            _queue(conn, settings, helpdesk, recipient, now)
    return len(found)


def _queue(conn: Connection, settings: Settings, helpdesk: int, recipient: Recipient, now: datetime) -> None:
    renderer = shared_renderer()
    link = create_link(conn, settings.secret(), recipient, now)
    helpdesk_name = conn.execute(select(STUDIO.c.name).where(STUDIO.c.id == helpdesk)).scalar_one()
    subject = _SUBJECTS[renderer.language(recipient.locale)].format(name=recipient.studio_name)
    masked = renderer.login_link(locale=recipient.locale, studio_name=recipient.studio_name,
                                 link=link_url(settings.public_url, _MASKED), expires_at=link.expires_at,
                                 sender_name=helpdesk_name, time_zone=recipient.time_zone)
    conversation_id = _conversation_with(conn, helpdesk, recipient.email, subject)
    if conversation_id is None:
        _, conversation_id = open_helpdesk_conversation(conn, settings, email=recipient.email,
                                                        name=recipient.studio_name, subject=subject)
    reply = create_reply(conn, studio_id=helpdesk, conversation_id=conversation_id, text=masked.text,
                         settings=settings, auto_kind=LOGIN_MAIL, subject=subject,
                         recipient=(recipient.email, ""))
    if reply is not None:
        conn.execute(update(LOGIN_LINK).where(LOGIN_LINK.c.id == link.link_id)
                     .values(message_ref=reply.message_row_id))


def _conversation_with(conn: Connection, helpdesk: int, email: str, subject: str) -> int | None:
    """The helpdesk's latest live sign-in conversation with this address, to add to."""
    found = conn.execute(
        select(CONVERSATION.c.id).join(GUEST, GUEST.c.id == CONVERSATION.c.guest_id)
        .where(CONVERSATION.c.studio_id == helpdesk, GUEST.c.email == email, CONVERSATION.c.subject == subject,
               CONVERSATION.c.deleted_at.is_(None))
        .order_by(CONVERSATION.c.id.desc()).limit(1)).scalar()
    return int(found) if found is not None else None


# --- composing the mail (gateway/outbound/compose.py) ---------------------------------------------

_LINKS = (
    select(LOGIN_LINK.c.message_ref, LOGIN_LINK.c.nonce, LOGIN_LINK.c.expires_at,
           STUDIO.c.name, STUDIO.c.locale, STUDIO.c.time_zone, PROFILE.c.locale.label("profile_locale"))
    .join(STUDIO, STUDIO.c.id == LOGIN_LINK.c.studio_id)
    .join(PROFILE, PROFILE.c.id == LOGIN_LINK.c.profile_id)
    .where(LOGIN_LINK.c.used_at.is_(None), PROFILE.c.disconnected_at.is_(None))
)


def render_links(conn: Connection, senders: dict[int, str], settings: Settings, secret: bytes,
                 renderer: Renderer) -> dict[int, Rendered]:
    """The bodies, with the real link, of the sign-in mails among `senders` (message id → the
    helpdesk's name). A link used meanwhile, or whose profile was disconnected, has none: its
    mail is not sent. An expired one is still sent and says until when it was valid: the page
    it opens explains that it expired."""
    if not senders:
        return {}
    rendered = {}
    for row in conn.execute(_LINKS.where(LOGIN_LINK.c.message_ref.in_(list(senders)))):
        link = link_url(settings.public_url, link_token(secret, row.nonce))
        rendered[row.message_ref] = renderer.login_link(
            locale=row.profile_locale or row.locale, studio_name=row.name, link=link, expires_at=row.expires_at,
            sender_name=senders[row.message_ref], time_zone=row.time_zone)
    return rendered
