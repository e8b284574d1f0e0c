"""What a parse gives back: the message, its attachments and its addresses, decoded."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Address:
    email: str          # lower-cased domain, local part as given; "" if unparseable
    name: str = ""      # decoded display name (RFC 2047), "" if none


@dataclass
class ParsedAttachment:
    filename: str       # decoded (RFC 2231 / 2047), sanitised of path separators and control chars
    content_type: str   # e.g. "image/jpeg", lower-case
    data: bytes
    inline: bool = False
    content_id: str | None = None   # without angle brackets

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class ParsedMessage:
    from_: Address | None
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    subject: str = ""
    date: datetime | None = None            # timezone-aware UTC
    message_id: str | None = None           # without angle brackets
    in_reply_to: list[str] = field(default_factory=list)   # ids without angle brackets
    references: list[str] = field(default_factory=list)    # ids without angle brackets, in order
    text: str = ""                          # full body text (text/plain preferred, else HTML->text)
    html: str | None = None                 # sanitised HTML (nh3), None if the mail had no HTML
    attachments: list[ParsedAttachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # top-level, decoded, in order
    content_type: str = "text/plain"        # top-level, lower-case
    dsn_original_message_ids: list[str] = field(default_factory=list)  # for multipart/report bounces
    dsn_failed_recipients: list[str] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    parser: str = "flanker"                 # "flanker" | "stdlib" | "headers-only"

    def header(self, name: str) -> str | None:
        """First value of a top-level header, case-insensitive."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None
