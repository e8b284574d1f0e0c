"""Setting up who may act for a studio, the way the product does: members connected over the
API, support tokens issued as the operator command does, grants made by the owner."""
from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy import select

from gateway.store.db import read_tx, write_tx
from gateway.store.tables import MESSAGE
from gateway.store.models import utcnow
from gateway.access.support import issue_support_token
from gateway.store.tables import ATTACHMENT
from tests.conftest import RunningGateway, StudioInfo
from tests.mail import make_mail, new_id

PROFILES = "/api/v1/profiles"
GRANTS = "/api/v1/support-grants"
AUDIT = "/api/v1/audit"
CONVERSATIONS = "/api/v1/conversations"


def connect_member(gw: RunningGateway, studio: StudioInfo, email: str = "artist@inkwell.example",
                   name: str = "Artist") -> tuple[int, str]:
    """A member connected by the owner over the API: (profile id, their first token)."""
    response = gw.api(studio.token).post(PROFILES, json={"email": email, "name": name})
    assert response.status_code == 201, response.text
    created = response.json()
    return int(created["profile"]["id"]), str(created["token"]["token"])


def support_token(gw: RunningGateway, name: str = "alice") -> str:
    """A support token as `gateway support token --name NAME` issues it."""
    with write_tx(gw.engine) as conn:
        return issue_support_token(conn, name, utcnow()).token


def grant(gw: RunningGateway, studio: StudioInfo, **body: object) -> dict[str, object]:
    """The owner grants support access (24 hours unless `hours`/`days` say otherwise)."""
    response = gw.api(studio.token).post(GRANTS, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def as_support(gw: RunningGateway, token: str, slug: str, reason: str = "ticket 4711: reply not delivered"
               ) -> httpx.Client:
    """An HTTP client that reads as support: the token, the studio and the reason on every request."""
    client = gw.api(token)
    client.headers.update({"X-Support-Studio": slug, "X-Support-Reason": reason})
    return client


@dataclass
class Mail:
    conversation_id: int
    attachment_id: int
    guest_message_id: str


def open_conversation(gw: RunningGateway, studio: StudioInfo, subject: str = "Tattoo Anfrage",
                      body: str = "Hallo, ich hätte gern einen Termin.") -> Mail:
    """A guest's first mail with an attachment, processed: its conversation and attachment ids."""
    mid = new_id()
    reply = gw.send(make_mail(subject=subject, body=body, message_id=mid,
                              attachments=[("skizze.png", "image/png", b"\x89PNG\r\n\x1a\nsketch")]), studio.address)
    assert reply.code == 250
    [result] = gw.process()
    [outcome] = result.outcomes
    assert outcome.conversation_id is not None
    with read_tx(gw.engine) as conn:
        attachment_id = conn.execute(select(ATTACHMENT.c.id).join(MESSAGE, MESSAGE.c.id == ATTACHMENT.c.message_id)
                                     .where(MESSAGE.c.conversation_id == outcome.conversation_id)).scalar_one()
    return Mail(outcome.conversation_id, int(attachment_id), mid)



STRANGER = "Mallory Weiß <mallory@elsewhere.example>"


def held_message(gw: RunningGateway, studio: StudioInfo, guest_mid: str, *, from_: str = STRANGER,
                 body: str = "Ich schreibe für meine Freundin.",
                 attachments: list[tuple[str, str, bytes]] | None = None) -> int:
    """A reply to the guest's mail from someone who is not in the conversation: held, as the
    threader stores it (once accepted, the sender is a participant). Returns the message's id."""
    reply = gw.send(make_mail(subject="Re: Tattoo Anfrage", from_=from_, in_reply_to=guest_mid, body=body,
                              attachments=attachments), studio.address, mail_from=from_.split("<")[-1].rstrip(">"))
    assert reply.code == 250
    gw.process()
    with read_tx(gw.engine) as conn:
        row = conn.execute(select(MESSAGE.c.id, MESSAGE.c.state).where(
            MESSAGE.c.inbound_mail_id == reply.inbound_id)).one()
    assert row.state == "held"
    return int(row.id)
