"""Composing the email a queued outbound message becomes: headers, both bodies, signature.

Everything that reaches a header is ours or was checked: CR, LF, NUL, U+2028/U+2029 and other
control characters in names and subjects (which arrive from guests' mail) are replaced by
spaces before they get near a header, so no value can start a header of its own; non-ASCII
text is RFC 2047-encoded (email.header / email.utils.formataddr).

Guests write from internationalised addresses (RFC 6530). A non-ASCII domain is sent in its
ASCII form (IDNA 2008, RFC 5891), which every relay carries; a non-ASCII local part
(`jürgen.müller@...`) has no ASCII form, so that message carries the address in UTF-8 in its
To header (RFC 6532 §3.2) and can only travel over SMTPUTF8 (RFC 6531): the relay module asks
for it, and a relay without it fails the reply permanently with a reason the studio sees.
"""
from __future__ import annotations

import base64
import binascii
import json
import random
import re
import secrets
from dataclasses import dataclass
from email import base64mime, quoprimime
from email.charset import RFC2047_CHROME_LEN, Charset
from email.header import Header
from functools import lru_cache
from email.utils import encode_rfc2231, format_datetime, formataddr
from typing import Any, Iterator, Mapping, NamedTuple, Protocol

import idna
from sqlalchemy import Connection, bindparam, select

from gateway.mail.addresses import reply_address
from gateway.store.tables import BLOB
from gateway.store.db import result_processor
from gateway.store.tables import MESSAGE, STUDIO
from gateway.store.prepared import Prepared
from gateway.store.tables import ATTACHMENT
from gateway.outbound.dates import zone
from gateway.outbound.render import Quoted, Rendered, Renderer
from gateway.settings import Settings
from gateway.outbound.signing import DkimSigner

_UNSAFE = re.compile("[\x00-\x1f\x7f\u0085\u2028\u2029]")


@dataclass(frozen=True)
class OutgoingMail:
    envelope_from: str
    recipients: list[str]
    data: bytes


class Undeliverable(ValueError):
    """An address that no relay can carry; its text is the reason the studio sees."""


class Withdrawn(LookupError):
    """An automatic mail with nothing left to say: what it was to tell of was erased meanwhile
    (a notification whose guest message is gone). Not sent, and no failure: a failed
    notification counts towards its profile's pause (gateway/outbound/notify_preferences.py),
    and a guest's erasure says nothing about the profile's mailbox."""


def header_safe(value: str) -> str:
    """A value that cannot break out of its header: line breaks and controls become spaces."""
    return " ".join(_UNSAFE.sub(" ", value or "").split())


# Cached: a worker sends for few studios and conversations at a time, and each reply repeats
# their From, To and Reply-To (formataddr, RFC 2047 and the reply token's HMAC cost about
# 40 us a message together). Pure functions of their arguments, so a cache cannot go stale;
# an address that raises is not cached and raises again.
@lru_cache(maxsize=4096)
def _address(name: str, email: str) -> str:
    """`"Name" <local@domain>` with the name quoted or RFC 2047-encoded as needed; `email` as
    `deliverable` made it (UTF-8 only in a local part that has no other form, RFC 6532)."""
    local, _, domain = email.rpartition("@")
    if not local or not domain or _UNSAFE.search(email) or any(c in email for c in " <>,;\"()[]\\"):
        raise Undeliverable("not a deliverable address")
    if email.isascii():
        return formataddr((header_safe(name), email), charset="utf-8")
    # formataddr refuses a non-ASCII address outright; the name is formatted exactly as it
    # would be (quoted or RFC 2047-encoded) and the address follows in UTF-8.
    shown = formataddr((header_safe(name), "x@x"), charset="utf-8")
    return shown[:-len("<x@x>")] + f"<{email}>"


@lru_cache(maxsize=4096)
def deliverable(email: str) -> str:
    """The guest's address as it goes on the envelope and in To: an internationalised domain in
    its ASCII form (IDNA 2008 with UTS #46 mapping, RFC 5891), so only a non-ASCII local part
    needs SMTPUTF8."""
    local, _, domain = email.rpartition("@")
    if domain.isascii():
        return email
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise Undeliverable(f"the domain of {email!r} is not a valid international domain name") from exc


@lru_cache(maxsize=4096)
def _reply_to(name: str, secret: bytes, slug: str, studio_id: int, conversation_id: int, domain: str) -> str:
    """The studio's name over the conversation's signed reply address."""
    return _address(name, reply_address(secret, slug, studio_id, conversation_id, domain))


@lru_cache(maxsize=4096)
def _own_reply_to(to_json: str) -> str | None:
    """A Reply-To chosen when the message was queued: a notification's signed per-profile
    address (gateway/outbound/notifications.py); None for every other message."""
    [recipient] = json.loads(to_json)
    return recipient.get("reply_to")


@lru_cache(maxsize=4096)
def _guest(to_json: str) -> tuple[str, str]:
    """(name, email) of an outbound message's one recipient, as the reply API stored it."""
    [guest] = json.loads(to_json)
    return guest.get("name", ""), guest["email"]


class _Utf8(Charset):
    """UTF-8 as the stdlib encodes it in headers, folded in linear time.

    `Charset.header_encode_lines` measures the encoded length of every prefix of the value to
    find where to fold, O(n²): 0.3 ms for a 90-character German subject, the largest part of
    composing a notification. The length of an encoded word only grows by each character's
    bytes (quoted-printable: each byte's escape; base64: four per three bytes), so a running
    count finds the same folds. tests/test_header_encoding.py compares the result with the
    stdlib's for generated values."""

    _QP = tuple(quoprimime.header_length(bytes([octet])) for octet in range(256))

    def __init__(self) -> None:
        super().__init__("utf-8")

    def header_encode_lines(self, string: str, maxlengths: Iterator[int]) -> list[str | None]:  # type: ignore[override]
        whole = string.encode("utf-8", "surrogateescape")
        qp = quoprimime.header_length(whole) <= base64mime.header_length(whole)   # SHORTEST, ties to QP
        encode = quoprimime.header_encode if qp else base64mime.header_encode
        extra = len("utf-8") + RFC2047_CHROME_LEN
        lines: list[str | None] = []
        start, size = 0, 0   # the current line's first character; its encoded length (QP) or bytes (base64)
        maxlen = next(maxlengths) - extra
        for i, character in enumerate(string):
            octets = character.encode("utf-8", "surrogateescape")
            grown = size + (sum(self._QP[o] for o in octets) if qp else len(octets))
            if (grown if qp else -(-grown // 3) * 4) > maxlen:
                if not lines and start == i:   # nothing fits on the first line
                    lines.append(None)
                else:
                    lines.append(encode(string[start:i].encode("utf-8", "surrogateescape"), charset="utf-8"))
                start, grown = i, grown - size
                maxlen = next(maxlengths) - extra
            size = grown
        lines.append(encode(string[start:].encode("utf-8", "surrogateescape"), charset="utf-8"))
        return lines


_UTF8 = _Utf8()


# Cached as well: a subject repeats, for each profile told about one guest message and each
# reply in a conversation.
@lru_cache(maxsize=1024)
def _encoded(name: str, value: str) -> str:
    """ASCII as is (long values folded by the caller's 998 limit), anything else RFC 2047."""
    if value.isascii() and len(value) < 900:
        return value
    return Header(value, _UTF8, header_name=name).encode(linesep="\r\n")


# MIME boundaries begin with "=_", which neither quoted-printable nor base64 output can contain
# (RFC 2045 6.7: in quoted-printable "=" is followed by two hex digits or a line break), so they
# cannot collide with a body and need not be unguessable: a generator seeded once from the OS
# is enough (secrets.token_hex per message, a getrandom() call each, showed in profiles).
_boundary_random = random.Random(secrets.randbits(128))


def _boundary(kind: str) -> str:
    return f"=_gw_{kind}_{_boundary_random.getrandbits(96):024x}"


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends; binascii does the work in C."""
    body = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8"), istext=True)
    return body.replace(b"\n", b"\r\n")


def _serialize(headers: list[tuple[str, str]], text: str, html: str | bytes, files: list[Any] = ()) -> bytes:  # type: ignore[assignment]
    """The message as multipart/alternative (text, then HTML), inside multipart/mixed with the
    attachments when there are any; CRLF throughout.

    Written directly rather than through email.message: the stdlib's header registry and
    folding cost about 2 ms per reply (measured), most of the outbox's CPU, for a structure
    that never varies. Every value was made single-line (header_safe) or encoded above; the
    result is checked by the stdlib and flanker parsers and by DKIM verification in tests.
    `html` as bytes is already quoted-printable (the renderer's html_qp).
    """
    alternative = _boundary("alt")
    part = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    body = [
        f"--{alternative}\r\n".encode(), part.format("plain").encode(), _qp(text), b"\r\n",
        f"--{alternative}\r\n".encode(), part.format("html").encode(),
        html if isinstance(html, bytes) else _qp(html), b"\r\n",
        f"--{alternative}--\r\n".encode(),
    ]
    content_type = f'multipart/alternative; boundary="{alternative}"'
    if files:
        mixed = _boundary("mix")
        outer = [f"--{mixed}\r\nContent-Type: {content_type}\r\n\r\n".encode(), *body]
        for f in files:
            name = _filename_params(f.filename)
            outer += [f"\r\n--{mixed}\r\nContent-Type: {f.content_type}\r\n"
                      f"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; {name}\r\n\r\n".encode(),
                      base64.encodebytes(f.data).replace(b"\n", b"\r\n")]
        outer.append(f"\r\n--{mixed}--\r\n".encode())
        body, content_type = outer, f'multipart/mixed; boundary="{mixed}"'
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n"
    # ASCII except for an address with a non-ASCII local part (RFC 6532: UTF-8, sent only
    # over SMTPUTF8, see _address).
    return head.encode("utf-8") + b"".join(body)


def _filename_params(filename: str) -> str:
    """filename="..." for ASCII names, RFC 2231 filename*=utf-8''... otherwise."""
    safe = header_safe(filename).replace("\\", "_").replace('"', "_")
    if safe.isascii():
        return f'filename="{safe}"'
    return f"filename*={encode_rfc2231(safe, 'utf-8')}"


class _Outgoing(NamedTuple):
    """An outbound message row with its studio, as _build reads it."""

    id: int
    studio_id: int
    conversation_id: int
    from_email: str
    to_json: str
    subject: str
    text: str
    message_id: str
    in_reply_to: str | None
    references_json: str
    received_at: Any
    automatic: bool
    auto_kind: str | None
    slug: str
    name: str
    locale: str
    time_zone: str


class _Parent(NamedTuple):
    from_name: str
    from_email: str
    received_at: Any
    text: str


# One row per statement through the driver (gateway/store/prepared.py): SQLAlchemy's IN-list
# statements and row objects cost more per message than SQLite takes to find the rows.
_TO_COMPOSE = Prepared(
    select(MESSAGE.c.id, MESSAGE.c.studio_id, MESSAGE.c.conversation_id, MESSAGE.c.from_email, MESSAGE.c.to_json,
           MESSAGE.c.subject, MESSAGE.c.text, MESSAGE.c.message_id, MESSAGE.c.in_reply_to, MESSAGE.c.references_json,
           MESSAGE.c.received_at, MESSAGE.c.automatic, MESSAGE.c.auto_kind, STUDIO.c.slug, STUDIO.c.name,
           STUDIO.c.locale, STUDIO.c.time_zone)
    .join(STUDIO, STUDIO.c.id == MESSAGE.c.studio_id)
    .where(MESSAGE.c.id == bindparam("id"))
)
# The message replied to (ix_message_studio_message_id); the oldest if a Message-ID came twice.
_PARENT = Prepared(
    select(MESSAGE.c.from_name, MESSAGE.c.from_email, MESSAGE.c.received_at, MESSAGE.c.text)
    .where(MESSAGE.c.studio_id == bindparam("studio_id"), MESSAGE.c.message_id == bindparam("message_id"))
    .order_by(MESSAGE.c.id).limit(1))
_FILES = (select(ATTACHMENT.c.message_id, ATTACHMENT.c.filename, ATTACHMENT.c.content_type, BLOB.c.data)
          .join(BLOB, BLOB.c.sha256 == ATTACHMENT.c.sha256)
          .where(ATTACHMENT.c.message_id.in_(bindparam("ids", expanding=True))).order_by(ATTACHMENT.c.id))


class LateBodies(Protocol):
    """Bodies an automatic message gets only when it is composed, because what they carry must
    never be stored (the account-deletion confirmation's code: its row holds a masked text).

    Called once per batch with the ids of that kind's messages (→ the name of the studio that
    sends each); a message left out has no body any more and is not sent (it fails); one mapped
    to None is withdrawn: not sent, and no failure (`Withdrawn`). The edge that runs
    the outbox registers one per `auto_kind` (gateway/runtime.py), so outbound never imports
    the domains that write such mail."""
    def __call__(self, conn: Connection, senders: dict[int, str], settings: Settings, secret: bytes,
                 renderer: Renderer) -> Mapping[int, Rendered | None]: ...


def compose(conn: Connection, message_row_id: int, settings: Settings, secret: bytes, renderer: Renderer,
            signer: DkimSigner | None, late_bodies: Mapping[str, LateBodies] | None = None) -> OutgoingMail:
    """The outbound message `message_row_id` as it goes to the relay."""
    return compose_many(conn, [message_row_id], settings, secret, renderer, signer, late_bodies)[message_row_id]


def compose_many(conn: Connection, message_row_ids: list[int], settings: Settings, secret: bytes,
                 renderer: Renderer, signer: DkimSigner | None,
                 late_bodies: Mapping[str, LateBodies] | None = None) -> dict[int, OutgoingMail | Exception]:
    """Several outbound messages (the outbox composes a batch at a time); a message that cannot
    be built maps to its exception, the others are unaffected."""
    received = result_processor(conn, MESSAGE.c.received_at)
    rows: list[_Outgoing] = []
    for row_id in message_row_ids:
        found = _TO_COMPOSE.execute(conn, id=row_id).fetchone()
        if found is not None:
            row = _Outgoing(*found)
            rows.append(row._replace(received_at=received(row.received_at), automatic=bool(row.automatic)))
    parents: dict[tuple[int, str], _Parent] = {}
    for key in {(r.studio_id, r.in_reply_to) for r in rows if r.in_reply_to}:
        found = _PARENT.execute(conn, studio_id=key[0], message_id=key[1]).fetchone()
        if found is not None:
            parent = _Parent(*found)
            parents[key] = parent._replace(received_at=received(parent.received_at))
    files: dict[int, list[Any]] = {}
    for a in conn.execute(_FILES, {"ids": [r.id for r in rows]}):
        files.setdefault(a.message_id, []).append(a)
    late_bodies = late_bodies or {}
    late: dict[int, Rendered | None] = {}
    for kind, render_late in late_bodies.items():
        senders = {r.id: r.name for r in rows if r.auto_kind == kind}
        if senders:
            late.update(render_late(conn, senders, settings, secret, renderer))
    out: dict[int, OutgoingMail | Exception] = {}
    for row in rows:
        try:
            out[row.id] = _build(row, parents.get((row.studio_id, row.in_reply_to)), files.get(row.id, []),
                                 settings, secret, renderer, signer, row.auto_kind in late_bodies,
                                 late.get(row.id, _LEFT_OUT))
        except Exception as exc:  # reported per message by the caller
            out[row.id] = exc
    for missing in set(message_row_ids) - set(out):
        out[missing] = LookupError(f"outbound message {missing} not found")
    return out


_LEFT_OUT = Rendered("", "")   # a late body the renderer left out (see LateBodies): compared by identity


def _build(m: Any, parent: Any, files: list[Any], settings: Settings, secret: bytes, renderer: Renderer,
           signer: DkimSigner | None, rendered_late: bool = False, late: Rendered | None = _LEFT_OUT) -> OutgoingMail:
    guest_name, stored_email = _guest(m.to_json)
    guest_email = deliverable(stored_email)
    quoted = None
    if parent is not None:
        quoted = Quoted(author=parent.from_name or parent.from_email, sent_at=parent.received_at, text=parent.text)
    if rendered_late:
        # Rendered with what exists only here (a confirmation's code: the stored text is masked).
        if late is None:
            raise Withdrawn("what it was to tell of was erased meanwhile")
        if late is _LEFT_OUT:
            raise LookupError("its deletion request was used, or its studio deleted, meanwhile")
        rendered = late
    elif m.auto_kind == "acknowledgement":
        rendered = renderer.acknowledgement(locale=m.locale, studio_name=m.name)
    elif m.automatic:
        # Other automatic mail (an inquiry form's confirmation, gateway/forms/submit.py) goes to an
        # address nobody verified: it echoes nothing of the guest's, no quote and no name.
        rendered = renderer.reply(locale=m.locale, studio_name=m.name, text=m.text, guest_name="", quoted=None,
                                  time_zone=m.time_zone)
    else:
        rendered = renderer.reply(locale=m.locale, studio_name=m.name, text=m.text,
                                  guest_name=guest_name, quoted=quoted, time_zone=m.time_zone)

    if m.conversation_id is not None:
        reply_to: str | None = _reply_to(m.name, secret, m.slug, m.studio_id, m.conversation_id, settings.mail_domain)
    else:  # a notification: its own signed address; a digest: the address that refuses answers
        own = _own_reply_to(m.to_json)
        reply_to = _address(m.name, own) if own else None
    headers = [
        ("From", _address(m.name, m.from_email)),
        ("To", _address(guest_name, guest_email)),
        *([("Reply-To", reply_to)] if reply_to else []),
        ("Subject", _encoded("Subject", header_safe(m.subject))),
        # The studio's local time and offset, as its own mail client would write it (RFC 5322
        # §3.3 allows any offset; readers' clients convert).
        ("Date", format_datetime(m.received_at.astimezone(zone(m.time_zone)))),
        ("Message-ID", f"<{m.message_id}>"),
    ]
    if m.in_reply_to:
        headers.append(("In-Reply-To", f"<{header_safe(m.in_reply_to)}>"))
    references = [header_safe(r) for r in json.loads(m.references_json or "[]") if r]
    if references:
        headers.append(("References", "\r\n ".join(f"<{r}>" for r in references)))
    if m.automatic:
        # RFC 3834: automatic mail says so, and asks Exchange not to answer it automatically.
        # Mail in no conversation (a notification to a profile) answers nobody: auto-generated.
        headers.append(("Auto-Submitted", "auto-replied" if m.conversation_id is not None else "auto-generated"))
        headers.append(("X-Auto-Response-Suppress", "All"))
    html = rendered.html_qp if rendered.html_qp is not None else rendered.html
    data = _serialize(headers, rendered.text, html, files)
    if signer is not None:
        data = signer.sign(data)
    return OutgoingMail(envelope_from=m.from_email, recipients=[guest_email], data=data)
