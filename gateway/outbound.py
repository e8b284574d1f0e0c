"""Composing the email a queued outbound message becomes: headers, both bodies, signature.

Everything that reaches a header is ours or was checked: CR, LF, NUL, U+2028/U+2029 and other
control characters in names and subjects (which arrive from guests' mail) are replaced by
spaces before they get near a header, so no value can start a header of its own; the
stdlib then encodes non-ASCII text (RFC 2047) and folds long lines.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from sqlalchemy import Connection, select

from gateway.conversations import reply_address
from gateway.ingest import CONVERSATION, GUEST, MESSAGE, STUDIO
from gateway.render import Quoted, Renderer
from gateway.settings import Settings
from gateway.signing import DkimSigner

_UNSAFE = re.compile("[\x00-\x1f\x7f\u0085\u2028\u2029]")


@dataclass(frozen=True)
class OutgoingMail:
    envelope_from: str
    recipients: list[str]
    data: bytes


def header_safe(value: str) -> str:
    """A value that cannot break out of its header: line breaks and controls become spaces."""
    return " ".join(_UNSAFE.sub(" ", value or "").split())


def _address(name: str, email: str) -> Address:
    local, _, domain = email.rpartition("@")
    if not local or not domain or _UNSAFE.search(email) or any(c in email for c in " <>,;\""):
        raise ValueError("not a deliverable address")
    return Address(display_name=header_safe(name), username=local, domain=domain)


def compose(conn: Connection, message_row_id: int, settings: Settings, secret: bytes, renderer: Renderer,
            signer: DkimSigner | None) -> OutgoingMail:
    """The outbound message `message_row_id` as it goes to the relay."""
    m = conn.execute(select(MESSAGE).where(MESSAGE.c.id == message_row_id)).one()
    conversation = conn.execute(
        select(CONVERSATION.c.id, STUDIO.c.id.label("studio_id"), STUDIO.c.slug, STUDIO.c.name, STUDIO.c.locale)
        .join(STUDIO, STUDIO.c.id == CONVERSATION.c.studio_id).where(CONVERSATION.c.id == m.conversation_id)
    ).one()
    [guest] = json.loads(m.to_json)
    quoted = None
    if m.in_reply_to:
        parent = conn.execute(select(MESSAGE.c.from_name, MESSAGE.c.from_email, MESSAGE.c.received_at, MESSAGE.c.text)
                              .where(MESSAGE.c.studio_id == m.studio_id, MESSAGE.c.message_id == m.in_reply_to)
                              .limit(1)).first()
        if parent is not None:
            quoted = Quoted(author=parent.from_name or parent.from_email, sent_at=parent.received_at, text=parent.text)
    rendered = renderer.reply(locale=conversation.locale, studio_name=conversation.name, text=m.text,
                              guest_name=guest.get("name", ""), quoted=quoted)

    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(conversation.name, m.from_email)
    msg["To"] = _address(guest.get("name", ""), guest["email"])
    msg["Reply-To"] = _address(conversation.name, reply_address(
        secret, conversation.slug, conversation.studio_id, conversation.id, settings.mail_domain))
    msg["Subject"] = header_safe(m.subject)
    msg["Date"] = format_datetime(m.received_at)
    msg["Message-ID"] = f"<{m.message_id}>"
    if m.in_reply_to:
        msg["In-Reply-To"] = f"<{header_safe(m.in_reply_to)}>"
    references = [header_safe(r) for r in json.loads(m.references_json or "[]") if r]
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    if m.automatic:
        # RFC 3834: automatic mail says so, and asks Exchange not to answer it automatically.
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(rendered.text, charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    data = msg.as_bytes()
    if signer is not None:
        data = signer.sign(data)
    return OutgoingMail(envelope_from=m.from_email, recipients=[guest["email"]], data=data)
