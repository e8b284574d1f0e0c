"""Rebuild an RFC 5322 message from a provider's parsed-field webhook.

Why this exists: the pipeline stores the raw bytes of every email and reads them with
`gateway.inbound.mime.parse`, whichever door the mail came through. Mailgun, SendGrid and Postmark
can each be set up to post only *parsed fields* (their "raw MIME" options are preferred and are
used as they are). For those posts we build the message the fields describe, so that
`gateway.inbound.mime.parse` reads the same text, subject, ids, addresses and attachments as it would
from the original, and dedupe can match the Message-ID against an SMTP copy of the same mail.

One module for the three providers, longer than the ~400 lines a module should have: most of it
is the header and attachment safety the three share (what may pass into a header we write,
folding, charsets, file names), which must be one code path, and each provider's field map
is a few dozen lines on top of it, documented here beside the payload format it reads.

What the rebuilt message is:
- every original header the provider hands over (its raw header data first, its parsed
  fields only to fill a gap), minus the ones that describe the old body (`Content-Type`,
  `Content-Transfer-Encoding`, `MIME-Version`, `Content-Disposition` and friends): the body
  is new. Identifying and threading headers (`Message-ID`, `In-Reply-To`, `References`) and
  the automatic-mail markers `gateway.inbound.automatic` reads (`Auto-Submitted`, `Precedence`,
  `List-Id`, `X-Autoreply`, `Return-Path`, ...) come through with the rest. No `Message-ID`
  is invented: ingest synthesises a stable one.
- a UTF-8 body: text/plain, text/html, or multipart/alternative of both; attachments make
  it multipart/mixed; parts that have a Content-ID are `Content-Disposition: inline`.

Field handling follows these documentation pages (and, where they are thin, the payloads
django-anymail's test suite records from the live services):
- Mailgun, "Receiving Messages via HTTP through a forward() action"
  (https://documentation.mailgun.com/docs/mailgun/user-manual/receive-forward-store/receive-http):
  `message-headers` is "a list of MIME headers dumped to a JSON string (order of headers is
  preserved)", i.e. ``[["Name", "value"], ...]``; `body-plain` is "always present" (Mailgun
  writes one from the HTML when the mail had none); `body-html`; the parsed message is
  "encoded into UTF-8". Attachments are the files `attachment-1` .. `attachment-<count>` with
  `attachment-count`; `content-id-map` maps a Content-ID (with its angle brackets, e.g.
  ``{"<abc123>": "attachment-2"}``) to the file field of an inline part. `stripped-*` fields
  are Mailgun's guess at the reply without quotes; we keep the whole text, as SMTP would.
- SendGrid (Twilio), "Setting Up The Inbound Parse Webhook", sections "Default Parameters" and
  "Example Default Payload"
  (https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/setting-up-the-inbound-parse-webhook),
  and "Inbound Email Parse Webhook", section "Character Sets and Header Decoding"
  (https://www.twilio.com/docs/sendgrid/for-developers/parsing-email/inbound-email):
  `headers` holds "the raw headers of the email", one per line; `text` and `html` are
  present only when the mail had that body; `from`, `to`, `cc`, `subject` are decoded copies
  of those headers; `charsets` is JSON naming each field's charset (the fields are posted in
  it, e.g. ``"text": "iso-8859-1"``); `attachments` is the count, files are `attachment1` ..
  `attachment<count>`, and `attachment-info` is JSON ``{"attachment1": {"filename", "name",
  "type", "content-id"}}``. The table calls `content-ids` "the number of attachments" but the
  example shows JSON ``{"ii_1562e2169c132d83": "attachment1"}``; we only fall back on it.
- Postmark, "Inbound webhook" (https://postmarkapp.com/developer/webhooks/inbound-webhook) and
  "Parse an email" (https://postmarkapp.com/developer/user-guide/inbound/parse-an-email):
  `Headers` is a list of ``{"Name", "Value"}`` holding the original `Message-ID` (and
  `In-Reply-To`/`References`, `Return-Path`, spam headers). Current payloads leave From/To/
  Cc/Subject/Date/Reply-To out of it (older examples had some) and give them as the
  top-level `FromFull` (`From`, `FromName`), `ToFull`/`To`, `CcFull`/`Cc`, `Subject`, `Date`,
  `ReplyTo`; an entry in `Headers` still wins, being the raw value. `MessageID` is Postmark's own id, never the
  mail's. `Attachments` are ``{"Name", "Content" (base64), "ContentType", "ContentLength",
  "ContentID"}`` with `ContentID` "" for a plain attachment. `Bcc`/`BccFull` say which
  address got the mail without being in To; the original carried no Bcc header, so neither
  do we. Postmark JSON is Unicode already.

No I/O here: the receivers in webhooks/<provider>.py call these functions and answer `400`
with the `ComposeError` text, which names fields but never quotes payload content.
"""
from __future__ import annotations

import base64
import binascii
import email.policy
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.header import Header
from email.message import MIMEPart
from email.utils import formataddr
from typing import Any

from gateway.inbound.mime import decode_bytes
from gateway.mail.files import plain_media_type
from webhooks.forms import FilePart, Form

__all__ = ["ComposeError", "mime_from_mailgun", "mime_from_postmark", "mime_from_sendgrid"]


class ComposeError(ValueError):
    """The payload lacks what an email needs (the receiver answers 400 with this message)."""


# SMTP policy (CRLF, 78-column folding) with 7bit transfer: text bodies become 7bit only when
# they are ASCII with short lines, otherwise quoted-printable or base64 (whichever is shorter),
# so no body line ever gets near the 998-octet limit of RFC 5322 section 2.1.1.
_POLICY = email.policy.SMTP.clone(cte_type="7bit")
_FOLD_AT = 78

# Headers that describe the body's bytes. The body is rebuilt, so copying them would lie
# about it (or, for Content-Type, break the parse outright).
_BODY_HEADERS = frozenset({
    "content-type", "content-transfer-encoding", "mime-version", "content-disposition",
    "content-length", "content-md5", "content-id",
})
# msg-id headers have no encoded-word form (RFC 2047 section 5); non-ASCII ids stay raw
# UTF-8 (RFC 6532 section 3.2) so the id keeps its bytes.
_ID_HEADERS = frozenset({"message-id", "in-reply-to", "references", "resent-message-id"})

# RFC 5322 section 3.6.8: field-name = 1*ftext, printable US-ASCII except ":".
_FIELD_NAME = re.compile(r"[!-9;-~]+")
# RFC 5322 section 2.2.3 unfolding: a line break followed by whitespace is folding.
_FOLDING = re.compile(r"\r?\n(?=[ \t])")
# Anything that could end a header line for some reader: C0 controls and DEL (CR, LF, NUL,
# VT, FF ...), NEL, and the Unicode line and paragraph separators that str.splitlines() and
# some MIME libraries treat as line ends.
_CONTROLS = "[\x00-\x1f\x7f\x85\u2028\u2029]"
_LINE_BREAKERS = re.compile("\r\n|" + _CONTROLS)
_FILENAME_BAD = re.compile(_CONTROLS)
_STRUCTURED_MAX = 998                     # longest non-ASCII value given to the stdlib's header parser
_CHUNK = re.compile(r"[ \t]*[^ \t]+")   # a word with the whitespace before it (header folding)
# RFC 6838 section 4.2 restricted-name, for type and subtype.
_CHARSET_PARAM = re.compile(r"""charset\s*=\s*"?([A-Za-z0-9_.:+-]{1,40})"?""", re.IGNORECASE)


class _Pairs(list[tuple[str, Any]]):
    """A JSON object read as its (key, value) pairs, duplicates kept."""


@dataclass(frozen=True)
class _Attachment:
    filename: str
    content_type: str       # "type/subtype", lower-case, or with a charset parameter for text/*
    data: bytes
    content_id: str | None  # without angle brackets


# ----------------------------------------------------------------------------- Mailgun

def mime_from_mailgun(form: Form) -> bytes:
    """The message a Mailgun route `forward()` post (parsed variant, not `body-mime`) describes.

    Headers come from `message-headers`; the top-level `from` and `subject` fields only fill
    a gap. Mailgun encodes every field as UTF-8.
    """
    raw_headers = _json_field(form.raw("message-headers"), "message-headers", default=[])
    if not isinstance(raw_headers, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in raw_headers):
        raise ComposeError("field 'message-headers' must be a JSON list of [name, value] pairs")
    headers = [(name, value) for name, value in raw_headers]
    headers += _fallbacks(headers, {"From": _field_text(form, "from"),
                                    "Subject": _field_text(form, "subject")})

    # body-plain is always posted, even for HTML-only mail (then Mailgun derived it from the
    # HTML), so an empty one means "no text part" rather than "an empty text part".
    text = form.text("body-plain") or None
    html = form.text("body-html") or None

    # Read as pairs: Mailgun has been seen repeating a key (several "" content-ids, recorded
    # in django-anymail's tests), and a dict would keep only the last file of each.
    cid_pairs = _json_field(form.raw("content-id-map"), "content-id-map", default=_Pairs(),
                            object_pairs_hook=_Pairs)
    if not isinstance(cid_pairs, _Pairs) or not all(
            isinstance(cid, str) and isinstance(field, str) for cid, field in cid_pairs):
        raise ComposeError("field 'content-id-map' must be a JSON object of content-id to field name")
    cids: dict[str, str] = {}
    for cid, field_name in cid_pairs:
        cids.setdefault(field_name, cid)

    attachments = []
    for index in range(1, _count(form, "attachment-count") + 1):
        name = f"attachment-{index}"
        part = _upload(form, name)
        attachments.append(_attachment(part.filename, part.content_type, part.data, cids.get(name)))
    return _compose("Mailgun", headers, text, html, attachments,
                    missing_from="neither a From header in 'message-headers' nor a 'from' field")


# ---------------------------------------------------------------------------- SendGrid

def mime_from_sendgrid(form: Form) -> bytes:
    """The message a SendGrid Inbound Parse post (default, parsed variant) describes.

    SendGrid posts each text field in the charset of the original part and names it in
    `charsets`; we decode with that charset, then UTF-8, CP-1252 and Latin-1 (the chain
    `gateway.inbound.mime.decode_bytes` applies to SMTP mail too, so both doors read alike).
    """
    charsets = _json_field(form.raw("charsets"), "charsets", default={})
    if not isinstance(charsets, dict):
        raise ComposeError("field 'charsets' must be a JSON object of field name to charset")

    def decoded(name: str) -> str | None:
        value = form.raw(name)
        if value is None:
            return None
        charset = charsets.get(name)
        return decode_bytes(value, charset if isinstance(charset, str) else None)

    headers = list(_header_block(decoded("headers") or ""))
    headers += _fallbacks(headers, {"From": decoded("from"), "To": decoded("to"),
                                    "Cc": decoded("cc"), "Subject": decoded("subject")})
    text = decoded("text")
    html = decoded("html")

    info_text = decoded("attachment-info")
    info = _json_field(info_text.encode("utf-8") if info_text is not None else None,
                       "attachment-info", default={})
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise ComposeError("field 'attachment-info' must be a JSON object of attachment name to object")
    cids = _sendgrid_content_ids(decoded("content-ids"))

    count = _count(form, "attachments") if form.raw("attachments") is not None else len(info)
    attachments = []
    for index in range(1, count + 1):
        name = f"attachment{index}"
        part = _upload(form, name)
        meta = info.get(name, {})
        filename = _first_str(meta.get("filename"), meta.get("name")) or part.filename
        ctype = _first_str(meta.get("type")) or part.content_type
        cid = _first_str(meta.get("content-id")) or cids.get(name)
        attachments.append(_attachment(filename, ctype, part.data, cid))
    return _compose("SendGrid", headers, text, html, attachments,
                    missing_from="neither a From line in 'headers' nor a 'from' field")


def _header_block(block: str) -> Iterator[tuple[str, str]]:
    """SendGrid's `headers`: raw header lines (one per line, continuation lines allowed).

    Line breaks here are the block's structure; anything that is not "name: value" is
    skipped, and a blank line ends the block.
    """
    name: str | None = None
    value = ""
    for line in re.split(r"\r\n|\n|\r", block):
        if line[:1] in (" ", "\t") and name is not None:
            value += line
            continue
        if name is not None:
            yield name, value
            name = None
        if not line.strip():
            break
        head, colon, rest = line.partition(":")
        if colon and _FIELD_NAME.fullmatch(head.rstrip(" \t")):
            name, value = head.rstrip(" \t"), rest
    if name is not None:
        yield name, value


def _sendgrid_content_ids(text: str | None) -> dict[str, str]:
    """`content-ids` ({"<cid>": "attachment1"}): only a fallback for `attachment-info`'s
    content-id. Its documentation calls it a count, so a value we cannot read is ignored
    rather than refusing the mail over a redundant field."""
    try:
        data = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {field: cid for cid, field in data.items() if isinstance(field, str) and isinstance(cid, str)}


# ---------------------------------------------------------------------------- Postmark

def mime_from_postmark(payload: dict[str, Any]) -> bytes:
    """The message a Postmark inbound JSON post describes (used when `RawEmail` is absent).

    `Headers` is the raw header data; the top-level address, subject and date fields fill
    what it lacks (Postmark moves those headers there).
    """
    if not isinstance(payload, dict):
        raise ComposeError("Postmark payload must be a JSON object")
    entries = payload.get("Headers") or []
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Name"), str) and isinstance(e.get("Value", ""), str)
            for e in entries):
        raise ComposeError("Postmark 'Headers' must be a list of {\"Name\", \"Value\"} objects")
    headers = [(e["Name"], e.get("Value", "")) for e in entries]
    headers[:0] = _fallbacks(headers, {
        "From": _postmark_from(payload),
        "To": _postmark_addresses(payload, "ToFull", "To"),
        "Cc": _postmark_addresses(payload, "CcFull", "Cc"),
        "Reply-To": _optional_str(payload, "ReplyTo"),
        "Subject": _optional_str(payload, "Subject"),
        "Date": _optional_str(payload, "Date"),
    })
    # Postmark always sends both keys; "" means the mail had no such part.
    text = _optional_str(payload, "TextBody") or None
    html = _optional_str(payload, "HtmlBody") or None

    items = payload.get("Attachments") or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ComposeError("Postmark 'Attachments' must be a list of objects")
    attachments = []
    for number, item in enumerate(items, start=1):
        content = item.get("Content")
        if not isinstance(content, str):
            raise ComposeError(f"Postmark attachment {number} has no base64 'Content'")
        try:
            data = base64.b64decode(re.sub(r"\s+", "", content), validate=True)
        except (binascii.Error, ValueError):
            raise ComposeError(f"Postmark attachment {number}: 'Content' is not valid base64") from None
        for key in ("Name", "ContentType", "ContentID"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise ComposeError(f"Postmark attachment {number}: '{key}' must be a string")
        attachments.append(_attachment(item.get("Name") or "", item.get("ContentType") or "",
                                       data, item.get("ContentID") or None))
    return _compose("Postmark", headers, text, html, attachments,
                    missing_from="neither 'FromFull', 'From' nor a From entry in 'Headers'")


def _optional_str(payload: dict[str, Any], key: str) -> str | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, str):
        raise ComposeError(f"Postmark '{key}' must be a string")
    return value


def _postmark_from(payload: dict[str, Any]) -> str | None:
    full = payload.get("FromFull")
    if isinstance(full, dict) and isinstance(full.get("Email"), str) and full["Email"].strip():
        name = full.get("Name")
        return _format_address(name if isinstance(name, str) else "", full["Email"])
    sender = _optional_str(payload, "From")
    if not sender or not sender.strip():
        return None
    if "<" in sender:  # the older payloads' '"Name" <address>' form
        return sender
    return _format_address(_optional_str(payload, "FromName") or "", sender)


def _postmark_addresses(payload: dict[str, Any], full_key: str, text_key: str) -> str | None:
    entries = payload.get(full_key)
    if isinstance(entries, list):
        formatted = [_format_address(e["Name"] if isinstance(e.get("Name"), str) else "", e["Email"])
                     for e in entries if isinstance(e, dict) and isinstance(e.get("Email"), str)
                     and e["Email"].strip()]
        if formatted:
            return ", ".join(formatted)
    return _optional_str(payload, text_key) or None


def _format_address(name: str, address: str) -> str:
    name, address = _clean_value(name), _clean_value(address)
    try:
        # Quotes a display name with specials; an ASCII-only address is required here.
        return formataddr((name, address), charset="utf-8")
    except UnicodeEncodeError:  # an internationalised address (RFC 6532): encoded below
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{quoted}" <{address}>' if name else address


# ------------------------------------------------------------------------ shared parts

def _json_field(raw: bytes | None, field: str, default: Any, **kwargs: Any) -> Any:
    if raw is None or not raw.strip():
        return default
    try:
        return json.loads(raw, **kwargs)
    except (ValueError, TypeError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ComposeError(f"field '{field}' is not valid JSON") from None


def _field_text(form: Form, name: str) -> str | None:
    return form.text(name) if form.raw(name) is not None else None


def _count(form: Form, field: str) -> int:
    text = form.text(field).strip() or "0"
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise ComposeError(f"field '{field}' must be a number of attachments")
    return int(text)


def _upload(form: Form, name: str) -> FilePart:
    """The file posted under `name`; a part posted without a filename lands in the form's
    plain fields, so it is looked for there too before the payload is refused."""
    part = form.file(name)
    if part is not None:
        return part
    value = form.raw(name)
    if value is not None:
        return FilePart(filename="", content_type="application/octet-stream", data=value)
    raise ComposeError(f"attachment field '{name}' is announced but missing")


def _first_str(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value.strip():
            return value
    return ""


def _fallbacks(headers: list[tuple[str, str]], fields: dict[str, str | None]) -> list[tuple[str, str]]:
    """Parsed fields for the headers the raw header data lacks (or has empty)."""
    present = {name.strip().lower() for name, value in headers if _clean_value(value)}
    return [(name, value) for name, value in fields.items()
            if value is not None and _clean_value(value) and name.lower() not in present]


def _attachment(filename: str, content_type: str, data: bytes, content_id: str | None) -> _Attachment:
    # Control characters are dropped, not replaced: gateway.inbound.mime drops them from filenames
    # too, so the name reads the same as in the original.
    name = _FILENAME_BAD.sub("", _unicode(filename)).strip()
    cid = "".join(_LINE_BREAKERS.sub("", _unicode(content_id or "")).split()).strip("<>") or None
    return _Attachment(filename=name, content_type=_media_type(content_type), data=data, content_id=cid)


def _media_type(value: str) -> str:
    main, params = plain_media_type(value), (value or "").partition(";")[2]
    # A multipart type cannot be an opaque attachment (its body is not one blob).
    if main.startswith("multipart/"):
        return "application/octet-stream"
    charset = _CHARSET_PARAM.search(params) if main.startswith("text/") else None
    return f"{main}; charset={charset.group(1)}" if charset else main


def _unicode(value: str) -> str:
    """JSON can carry lone surrogates ("\\ud800"), which no codec writes; make them U+FFFD."""
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _clean_value(value: str) -> str:
    """A header value that cannot start a new header: folding undone (RFC 5322 section
    2.2.3), then every remaining line break or control character becomes a space."""
    return _LINE_BREAKERS.sub(" ", _FOLDING.sub("", _unicode(value))).strip()


def _carried(headers: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    for name, value in headers:
        if not _FIELD_NAME.fullmatch(name) or name.lower() in _BODY_HEADERS:
            continue
        yield name, _clean_value(value)


def _header_line(name: str, value: str) -> bytes:
    """One header field, CRLF-terminated.

    We write header lines ourselves instead of assigning them on an EmailMessage: the
    stdlib's header registry re-parses every value a program sets and serialises its own
    reading of it. It re-encodes RFC 2047 words (an ISO-8859-1 word comes out as UTF-8,
    adjacent words merged), and it cuts a Message-ID it cannot parse ("<a b@x>" is written
    as "<a"), which would break dedupe against the SMTP copy. ASCII values are therefore
    written as given (only folded at their own whitespace, which unfolding undoes); non-ASCII
    values are encoded by the stdlib (RFC 2047, display names only for address headers).
    """
    if value.isascii():
        return _fold(name, value).encode("ascii")
    if name.lower() in _ID_HEADERS:
        return _fold(name, value).encode("utf-8")
    folded = ""
    # The stdlib's structured-header parser and folder take about a millisecond per non-ASCII
    # character (9 s for a 10,000-character To); no real field is longer than a line
    # (RFC 5322 section 2.1.1: 998), so longer ones go straight to the encoded words below.
    if len(value) <= _STRUCTURED_MAX:
        try:
            folded = _POLICY.header_factory(name, value).fold(policy=_POLICY)
        except Exception:  # the structured-header parser gave up on this value
            folded = ""
    if not (folded.isascii() and folded.endswith("\r\n")
            and all(line[:1] in (" ", "\t") for line in folded.split("\r\n")[1:-1])):
        # Last resort: the whole value as encoded words (unstructured, always valid).
        folded = f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n") + "\r\n"
    return folded.encode("ascii")


def _fold(name: str, value: str) -> str:
    """Fold at the value's own whitespace to keep lines near 78 characters (RFC 5322
    section 2.2.3); a longer token stays whole rather than being changed."""
    line = f"{name}:"
    lines: list[str] = []
    # Trailing whitespace never forms a chunk; stripped first, because each position of a long
    # trailing run would otherwise scan the whole run before failing (quadratic).
    for index, chunk in enumerate(_CHUNK.findall(value.rstrip(" \t"))):
        piece = " " + chunk if index == 0 else chunk
        if index and len(line) + len(piece) > _FOLD_AT:
            lines.append(line)
            line = piece  # begins with the whitespace that makes it a continuation line
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _compose(provider: str, headers: list[tuple[str, str]], text: str | None, html: str | None,
             attachments: list[_Attachment], missing_from: str) -> bytes:
    carried = list(_carried(headers))
    if not any(name.lower() == "from" and value for name, value in carried):
        raise ComposeError(f"the {provider} payload names no sender: {missing_from}")
    head = b"".join(_header_line(name, value) for name, value in carried)
    # MIMEPart rather than EmailMessage: the latter also stamps MIME-Version on every subpart.
    return head + b"MIME-Version: 1.0\r\n" + _body(text, html, attachments).as_bytes(policy=_POLICY)


def _body(text: str | None, html: str | None, attachments: list[_Attachment]) -> MIMEPart:
    """The MIME body, built by the stdlib: it chooses boundaries, transfer encodings and
    RFC 2231 filename parameters."""
    body = MIMEPart(policy=_POLICY)
    if text is not None or html is None:
        body.set_content(_unicode(text or ""), subtype="plain", charset="utf-8")
        if html is not None:
            body.add_alternative(_unicode(html), subtype="html", charset="utf-8")
    else:
        body.set_content(_unicode(html), subtype="html", charset="utf-8")
    for item in attachments:
        maintype, _, rest = item.content_type.partition("/")
        subtype, _, charset = rest.partition("; charset=")
        body.add_attachment(item.data, maintype=maintype, subtype=subtype,
                            filename=item.filename or None,
                            disposition="inline" if item.content_id else "attachment",
                            cid=f"<{item.content_id}>" if item.content_id else None,
                            params={"charset": charset} if charset else None)
    return body
