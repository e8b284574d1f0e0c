"""Building test messages the way mail clients write them (CRLF, RFC 5322 headers)."""
from __future__ import annotations

import uuid
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone


def make_mail(*, subject: str = "Tattoo Anfrage", body: str = "Hallo, ich hätte gern einen Termin.",
              from_: str = "Lena Müller <guest@example.org>", to: str = "inkwell@mail.test",
              message_id: str | None = None, in_reply_to: str | None = None,
              references: list[str] | None = None, headers: dict[str, str] | None = None,
              attachments: list[tuple[str, str, bytes]] | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = from_
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc))
    msg["Message-ID"] = message_id if message_id is not None else make_msgid(domain="example.org")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    for filename, ctype, data in attachments or []:
        maintype, subtype = ctype.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    if message_id == "":
        del msg["Message-ID"]
    return msg.as_bytes(policy=SMTP)


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@example.org>"
