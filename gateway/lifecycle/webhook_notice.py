"""Telling a studio's owner by mail that one of its webhook endpoints was disabled.

The webhook sender (gateway/outbound/webhooks.py) disables an endpoint that has failed for 3
days; outbound may not reach the helpdesk (a lifecycle matter), so gateway/runtime.py hands it
`notify_disabled` here. The mail goes as the helpdesk's automatic reply in a conversation of
its own with the owner's registered address, through the outbox like every other mail, in the
transaction that disables the endpoint: disabled and told, or neither. Without a helpdesk
(GATEWAY_HELPDESK_ADDRESS unset) there is no sender to mail from: it is logged, and the
endpoint shows `disabled_at` in the API.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable

from sqlalchemy import Connection, select

from gateway.lifecycle.helpdesk import NoHelpdesk, open_helpdesk_conversation
from gateway.outbound.replies import create_reply
from gateway.settings import Settings
from gateway.store.tables import STUDIO

log = logging.getLogger(__name__)
KIND = "webhook_disabled"     # Message.auto_kind: sent with Auto-Submitted, never counted as read

_TEXTS = {
    "de": ("Webhook deaktiviert: {url}",
           "Guten Tag,\n\nder Webhook {url} von {name} antwortet seit drei Tagen nicht erfolgreich und wurde "
           "deaktiviert. Es werden keine Ereignisse mehr dorthin gesendet.\n\nPrüfen Sie den Empfänger und "
           "legen Sie den Endpunkt neu an (GET /api/v1/webhook-endpoints/{id}/deliveries zeigt die Antworten).\n"),
    "en": ("Webhook disabled: {url}",
           "Hello,\n\nthe webhook {url} of {name} has not answered successfully for three days and was "
           "disabled. No more events are sent to it.\n\nCheck the receiver and register the endpoint again "
           "(GET /api/v1/webhook-endpoints/{id}/deliveries shows its answers).\n"),
}


def notify_disabled(settings: Settings, conn: Connection, studio_id: int, endpoint_id: int, url: str) -> None:
    studio = conn.execute(select(STUDIO.c.name, STUDIO.c.owner_email, STUDIO.c.locale)
                          .where(STUDIO.c.id == studio_id)).first()
    if studio is None:
        return
    subject, text = _TEXTS["en" if (studio.locale or "").startswith("en") else "de"]
    values = {"url": url, "name": studio.name, "id": endpoint_id}
    try:
        helpdesk, conversation_id = open_helpdesk_conversation(
            conn, settings, email=studio.owner_email, name=studio.name, subject=subject.format(**values))
    except NoHelpdesk:
        log.warning("webhook endpoint %d of studio %d disabled; no helpdesk to mail the owner from",
                    endpoint_id, studio_id)
        return
    create_reply(conn, studio_id=helpdesk, conversation_id=conversation_id, text=text.format(**values),
                 settings=settings, auto_kind=KIND, subject=subject.format(**values),
                 recipient=(studio.owner_email, studio.name))


def owner_notice(settings: Settings) -> Callable[[Connection, int, int, str], None]:
    return partial(notify_disabled, settings)
