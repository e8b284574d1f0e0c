"""A cheap look at a raw message's header block, before (and without) a full MIME parse.

The acceptor needs a handful of facts while the SMTP peer waits for its `250` (who sends,
is it a reply), and dedupe needs a fingerprint that ignores the trace headers each relay adds
on a retry. A full flanker parse costs ~0.5 ms; this costs a few microseconds per header.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import getaddresses

MAX_HEADER_BYTES = 256 * 1024
# The stdlib's address parser takes 0.35 s for a 256 KB From, and the peek runs on the event
# loop; a From longer than this is no address anyone types, and is read from its start only.
MAX_FROM_PEEK = 8192
_ID_RE = re.compile(r"<([^<>\s]{1,900})>")
# The domain side excludes "@": with "@" on both sides every "@" of "a@a@a@..." was a split
# point to try, and a 40 KB From (a webhook can send one) held the event loop for 8.7 s. The
# group is the whole address, so which "@" splits it never mattered; now only the last can.
_SIMPLE_ADDR = r'[^<>\s",;()]+@[^<>\s",;()@]+'
_SIMPLE_FROM_RE = re.compile(rf'^(?:[^<>",;@]*<({_SIMPLE_ADDR})>|({_SIMPLE_ADDR}))\s*$')
_FINGERPRINT_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "in-reply-to")


@dataclass
class HeaderPeek:
    fields: dict[str, str] = field(default_factory=dict)  # first value of each header, lower-case names
    body_offset: int = 0

    def get(self, name: str) -> str:
        return self.fields.get(name.lower(), "")

    @property
    def from_email(self) -> str:
        value = self.get("from")[:MAX_FROM_PEEK]
        simple = _SIMPLE_FROM_RE.match(value)  # "Name <a@b>" or "a@b": most mail, no full parse
        if simple:
            return normalize_email(simple.group(1) or simple.group(2))
        try:
            addresses = getaddresses([value])
        except Exception:  # the stdlib recurses once per "(" and ":": 1,000 of them raise RecursionError
            return ""
        return normalize_email(addresses[0][1]) if addresses else ""

    @property
    def message_id(self) -> str | None:
        ids = message_ids(self.get("message-id"))
        return ids[0] if ids else None

    @property
    def reply_ids(self) -> list[str]:
        return message_ids(self.get("in-reply-to")) + message_ids(self.get("references"))

    @property
    def subject(self) -> str:
        try:
            return str(make_header(decode_header(self.get("subject"))))
        except Exception:  # malformed RFC 2047 words: keep the raw text
            return self.get("subject")


def normalize_email(address: str) -> str:
    """Lower-cased address (domains are case-insensitive; in practice local parts are too)."""
    return address.strip().strip("<>").lower()


def message_ids(value: str) -> list[str]:
    """Ids from a Message-ID/In-Reply-To/References value; a bare id without brackets too."""
    found = _ID_RE.findall(value or "")
    if not found:
        bare = (value or "").strip()
        if bare and " " not in bare and "@" in bare:
            found = [bare.strip("<>")]
    return found


def peek(raw: bytes) -> HeaderPeek:
    """Unfolded first values of each header; tolerant of LF-only line ends and 8-bit bytes."""
    end = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
    sep = 4
    lf_end = raw.find(b"\n\n", 0, MAX_HEADER_BYTES)
    if end < 0 or (0 <= lf_end < end):
        end, sep = lf_end, 2
    if end < 0:
        end, sep = min(len(raw), MAX_HEADER_BYTES), 0
    # NUL is dropped: PostgreSQL refuses it in text and parameters, and it means nothing here.
    block = raw[:end].decode("utf-8", "replace").replace("\r\n", "\n").replace("\x00", "")
    fields: dict[str, str] = {}
    name = None
    for line in block.split("\n"):
        if line[:1] in (" ", "\t") and name is not None:
            if name in fields and len(fields[name]) < 8192:
                fields[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or " " in key:
            name = None
            continue
        name = key.strip().lower()
        if name not in fields:
            fields[name] = value.strip()
        else:
            name = None  # only the first occurrence counts
    return HeaderPeek(fields=fields, body_offset=end + sep)


def fingerprint(raw: bytes, head: HeaderPeek | None = None) -> str:
    """SHA-256 of the body and the identifying headers.

    Relays prepend Received/DKIM/ARC headers on each hop and retry, and a provider webhook
    re-serialises the headers, so the raw bytes of one email differ between deliveries; the
    body and these headers do not.
    """
    head = head or peek(raw)
    digest = hashlib.sha256()
    for name in _FINGERPRINT_HEADERS:
        digest.update(name.encode() + b":" + " ".join(head.get(name).split()).encode() + b"\n")
    body = raw[head.body_offset:]
    # Line endings differ between transports (CRLF on SMTP, often LF in webhook payloads).
    digest.update(body.replace(b"\r\n", b"\n").rstrip(b"\n"))
    return digest.hexdigest()
