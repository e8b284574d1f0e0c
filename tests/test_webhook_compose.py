"""Rebuilding raw MIME from the providers' parsed-field webhooks (webhooks/compose.py).

Each test writes an original message the way a mail client does (tests.mail.make_mail), turns
it into the payload a provider posts for that message, as the provider documents it, rebuilds
MIME from the payload and checks that `gateway.inbound.mime.parse` reads the rebuilt message the way it
reads the original: same text, subject, ids, sender and attachments.

The payload builders (`mailgun_fields`, `sendgrid_fields`, `postmark_payload`) are plain
module-level functions so the HTTP tests (tests/providers.py) post the very same payloads.
"""
from __future__ import annotations

import base64
import email
import email.policy
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any

import pytest

from gateway.inbound.automatic import classify
from gateway.inbound.mime import ParsedMessage, html_to_text, parse
from tests.mail import make_mail, new_id
from webhooks.compose import ComposeError, mime_from_mailgun, mime_from_postmark, mime_from_sendgrid
from webhooks.forms import FilePart, Form

STUDIO = "inkwell@mail.test"
GUEST = "guest@example.org"

# --------------------------------------------------------------------- the original mail

SUBJECT = "Anfrage: Tattoo-Termin für Größe M"
BODY = ("Hallo Studio,\n\nich hätte gern einen Termin für ein Tattoo am Unterarm (ca. 12 × 8 cm).\n"
        "Können Sie mir sagen, ob das im Dezember möglich ist?\n\nGrüße aus Köln\nLena")
HTML = ("<html><body><p>Hallo Studio,</p><p>ich hätte gern einen Termin für ein Tattoo "
        "am <b>Unterarm</b>.</p><p>Grüße aus Köln<br>Lena</p></body></html>")
# JPEG markers around every byte value, CR and LF included: nothing may be normalised.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + bytes(range(256)) * 40 + b"\r\n\n\r\x00\xff\xd9"
SKETCH = "Entwurf Drache – Größe M.pdf"


def german_mail(**kwargs: Any) -> bytes:
    """A guest's reply in an existing thread, German, with a Cc and a Reply-To."""
    parent, root = new_id(), new_id()
    options: dict[str, Any] = dict(
        subject=SUBJECT, body=BODY, to=f"Inkwell Studio <{STUDIO}>", in_reply_to=parent,
        references=[root, parent],
        headers={"Cc": "Jörg Weiß <joerg@example.org>", "Reply-To": "lena.mueller@example.net"})
    options.update(kwargs)
    return make_mail(**options)


def with_html(raw: bytes, html: str = HTML,
              inline: tuple[tuple[str, str, bytes, str], ...] = ()) -> bytes:
    """The same mail as text and HTML (multipart/alternative), the way mail clients send it,
    with `inline` images (filename, type, data, content-id) in a multipart/related."""
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    assert isinstance(msg, EmailMessage)
    plain = msg.get_body(("plain",))
    assert plain is not None
    plain.add_alternative(html, subtype="html")
    html_part = msg.get_body(("html",))
    assert html_part is not None
    for filename, ctype, data, cid in inline:
        maintype, subtype = ctype.split("/")
        html_part.add_related(data, maintype, subtype, cid=f"<{cid}>", filename=filename,
                              disposition="inline")
    return msg.as_bytes(policy=email.policy.SMTP)


def html_only(raw: bytes, html: str = HTML) -> bytes:
    """The same mail with an HTML body and no text part."""
    msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
    assert isinstance(msg, EmailMessage)
    msg.set_content(html, subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


# -------------------------------------------------------------------- reading the original

@dataclass
class _Original:
    headers: list[tuple[str, str]]          # top level, as on the wire (unfolded)
    text: str | None = None
    html: str | None = None
    attachments: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def decoded(self, name: str) -> str | None:
        """A header as a provider's parsed field carries it: RFC 2047 decoded, Unicode."""
        value = self.header(name)
        return None if value is None else str(make_header(decode_header(value)))


def _read(raw: bytes) -> _Original:
    """What a provider extracts: the top-level headers, the first text and HTML bodies, and
    every other leaf part as an attachment (inline images included)."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = _Original(headers=[(k, re.sub(r"\r?\n(?=[ \t])", "", str(v))) for k, v in msg.items()])
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        is_body = ctype in ("text/plain", "text/html") and not filename \
            and part.get_content_disposition() != "attachment"
        # Providers post bodies as text with "\n" line ends, not the wire's CRLF.
        if is_body and ctype == "text/plain" and found.text is None:
            found.text = payload.decode(part.get_content_charset() or "utf-8").replace("\r\n", "\n")
        elif is_body and ctype == "text/html" and found.html is None:
            found.html = payload.decode(part.get_content_charset() or "utf-8").replace("\r\n", "\n")
        else:
            cid = part.get("Content-ID")
            found.attachments.append((filename or "", ctype, payload, str(cid).strip().strip("<>") if cid else None))
    return found


# ----------------------------------------------------------------- the providers' payloads

def mailgun_fields(raw: bytes, *, recipient: str = STUDIO, sender: str = GUEST,
                   decoded_headers: bool = True) -> Form:
    """The fields a Mailgun route `forward()` posts for `raw` (parsed variant, unsigned).

    Per Mailgun's "Receiving Messages via HTTP through a forward() action": everything is
    UTF-8; `message-headers` is a JSON list of [name, value] in the original order (values
    decoded to Unicode, our reading of "encode it into UTF-8"; `decoded_headers=False` posts
    them as on the wire instead); `body-plain` is always
    present, derived from the HTML for HTML-only mail; files `attachment-1`.. with
    `attachment-count`, and `content-id-map` {"<cid>": "attachment-N"} for inline parts.
    tests/providers.py adds `timestamp`, `token` and `signature` when it signs.
    """
    mail = _read(raw)
    headers = [[name, str(make_header(decode_header(value))) if decoded_headers else value]
               for name, value in mail.headers]
    fields: dict[str, str] = {
        "recipient": recipient, "sender": sender,
        "from": mail.decoded("From") or "", "subject": mail.decoded("Subject") or "",
        "message-headers": json.dumps(headers),
        "body-plain": mail.text if mail.text is not None else html_to_text(mail.html or ""),
    }
    fields["stripped-text"] = fields["body-plain"]
    if mail.html is not None:
        fields["body-html"] = fields["stripped-html"] = mail.html
    files: dict[str, list[FilePart]] = {}
    content_ids: dict[str, str] = {}
    for index, (filename, ctype, data, cid) in enumerate(mail.attachments, start=1):
        files[f"attachment-{index}"] = [FilePart(filename, ctype, data)]
        if cid:
            content_ids[f"<{cid}>"] = f"attachment-{index}"
    if files:
        fields["attachment-count"] = str(len(files))
    if content_ids:
        fields["content-id-map"] = json.dumps(content_ids)
    return Form(fields={k: [v.encode("utf-8")] for k, v in fields.items()}, files=files)


def sendgrid_fields(raw: bytes, charset: str = "iso-8859-1", *, recipient: str = STUDIO,
                    sender: str = GUEST) -> Form:
    """The fields SendGrid Inbound Parse posts for `raw` (default, parsed variant).

    Per SendGrid's "Default Parameters" and "Character Sets and Header Decoding": `headers` is
    the raw header block (UTF-8, one header per line); `from`, `to`, `cc` are decoded UTF-8;
    `subject`, `text` and `html` are posted in the charset the original used for them, which
    `charset` stands for here (every character must exist in it), and `charsets` says so; `text`/`html` only when
    the mail had them; files `attachment1`.. with `attachments` (the count), `attachment-info`
    and `content-ids` for inline parts; `envelope` is the SMTP envelope.
    """
    mail = _read(raw)
    fields: dict[str, bytes] = {
        "headers": "\n".join(f"{name}: {value}" for name, value in mail.headers).encode("utf-8") + b"\n",
        "envelope": json.dumps({"to": [recipient], "from": sender}).encode(),
        "dkim": b"{@example.org : pass}", "SPF": b"pass", "sender_ip": b"192.0.2.25",
        "spam_score": b"0.1",
    }
    charsets: dict[str, str] = {}
    for name in ("from", "to", "cc"):
        value = mail.decoded(name)
        if value is not None:
            fields[name] = value.encode("utf-8")
            charsets[name] = "UTF-8"
    for name, value in (("subject", mail.decoded("Subject")), ("text", mail.text), ("html", mail.html)):
        if value is not None:
            fields[name] = value.encode(charset)
            charsets[name] = charset
    fields["charsets"] = json.dumps(charsets).encode()
    fields["attachments"] = str(len(mail.attachments)).encode()
    files: dict[str, list[FilePart]] = {}
    info: dict[str, dict[str, str]] = {}
    content_ids: dict[str, str] = {}
    for index, (filename, ctype, data, cid) in enumerate(mail.attachments, start=1):
        key = f"attachment{index}"
        files[key] = [FilePart(filename, ctype, data)]
        info[key] = {"filename": filename, "name": filename, "type": ctype}
        if cid:
            info[key]["content-id"] = cid
            content_ids[cid] = key
    if info:
        fields["attachment-info"] = json.dumps(info).encode()
    if content_ids:
        fields["content-ids"] = json.dumps(content_ids).encode()
    return Form(fields={k: [v] for k, v in fields.items()}, files=files)


# Postmark moves these headers to top-level fields and leaves them out of "Headers".
_POSTMARK_TOP_LEVEL = {"from", "to", "cc", "subject", "date", "reply-to"}


def postmark_payload(raw: bytes, *, recipient: str = STUDIO) -> dict[str, Any]:
    """The JSON Postmark's inbound webhook posts for `raw` ("Include raw email" off).

    Per Postmark's "Inbound webhook" and "Parse an email": From/To/Cc/Subject/Date/ReplyTo
    are top-level (with the `*Full` address objects), `Headers` keeps the rest of the
    original headers (Message-ID, In-Reply-To, References, ...) plus Postmark's spam
    headers, `MessageID` is Postmark's own id, and `Attachments` carry base64 `Content` with
    `ContentID` "" unless the part is inline.
    """
    mail = _read(raw)

    def people(name: str) -> list[dict[str, str]]:
        value = mail.decoded(name)
        return [{"Email": addr, "Name": display, "MailboxHash": ""}
                for display, addr in getaddresses([value])] if value else []

    sender = people("From")
    headers = [{"Name": name, "Value": value} for name, value in mail.headers
               if name.lower() not in _POSTMARK_TOP_LEVEL]
    headers += [{"Name": "X-Spam-Status", "Value": "No"}, {"Name": "X-Spam-Score", "Value": "-0.1"},
                {"Name": "X-Spam-Tests", "Value": "DKIM_SIGNED,DKIM_VALID,SPF_PASS"}]
    return {
        "FromName": sender[0]["Name"] if sender else "",
        "MessageStream": "inbound",
        "From": sender[0]["Email"] if sender else "",
        "FromFull": sender[0] if sender else {},
        "To": mail.decoded("To") or "", "ToFull": people("To"),
        "Cc": mail.decoded("Cc") or "", "CcFull": people("Cc"),
        "Bcc": "", "BccFull": [],
        "OriginalRecipient": recipient,
        "Subject": mail.decoded("Subject") or "",
        "MessageID": str(uuid.uuid4()),
        "ReplyTo": mail.decoded("Reply-To") or "",
        "MailboxHash": "",
        "Date": mail.header("Date") or "",
        "TextBody": mail.text or "",
        "HtmlBody": mail.html or "",
        "StrippedTextReply": "",
        "Tag": "",
        "Headers": headers,
        "Attachments": [{"Name": filename, "Content": base64.b64encode(data).decode("ascii"),
                         "ContentType": ctype, "ContentLength": len(data), "ContentID": cid or ""}
                        for filename, ctype, data, cid in mail.attachments],
    }


PROVIDERS: dict[str, Callable[[bytes], bytes]] = {
    "mailgun": lambda raw: mime_from_mailgun(mailgun_fields(raw)),
    "sendgrid": lambda raw: mime_from_sendgrid(sendgrid_fields(raw)),
    "postmark": lambda raw: mime_from_postmark(postmark_payload(raw)),
}
each_provider = pytest.mark.parametrize("provider", sorted(PROVIDERS))


# ------------------------------------------------------------------------------ checks

def reading(msg: ParsedMessage) -> dict[str, Any]:
    return {
        "text": msg.text, "subject": msg.subject, "message_id": msg.message_id,
        "in_reply_to": msg.in_reply_to, "references": msg.references, "from_": msg.from_,
        "to": msg.to, "cc": msg.cc, "reply_to": msg.reply_to, "date": msg.date,
        "attachments": [(a.filename, a.content_type, a.data, a.content_id) for a in msg.attachments],
    }


def assert_reads_like(original: bytes, rebuilt: bytes) -> ParsedMessage:
    """gateway.inbound.mime.parse sees the same mail in both, and the rebuilt one is well formed."""
    want, got = parse(original), parse(rebuilt)
    assert got.parser == "flanker" and got.defects == []
    assert reading(got) == reading(want)
    assert_well_formed(rebuilt)
    return got


def assert_well_formed(rebuilt: bytes) -> Message:
    assert re.search(rb"(?<!\r)\n", rebuilt) is None, "every line ends in CRLF"
    assert max(len(line) for line in rebuilt.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(rebuilt, policy=email.policy.default)
    assert [p.defects for p in msg.walk()] == [[] for _ in msg.walk()]
    assert msg.get_all("MIME-Version") == ["1.0"]
    assert len(msg.get_all("Content-Type") or []) == 1
    return msg


def leaf_types(msg: Message) -> list[str]:
    return [part.get_content_type() for part in msg.walk()]


# ------------------------------------------------------------------------------- tests

@each_provider
def test_plain_text_mail_becomes_one_text_part(provider: str) -> None:
    original = german_mail()
    rebuilt = PROVIDERS[provider](original)
    got = assert_reads_like(original, rebuilt)
    assert "hätte gern einen Termin" in got.text and got.in_reply_to and len(got.references) == 2
    assert leaf_types(assert_well_formed(rebuilt)) == ["text/plain"]


@each_provider
def test_text_and_html_become_multipart_alternative(provider: str) -> None:
    original = with_html(german_mail())
    rebuilt = PROVIDERS[provider](original)
    got = assert_reads_like(original, rebuilt)
    assert got.html is not None and got.html == parse(original).html
    assert leaf_types(assert_well_formed(rebuilt)) == ["multipart/alternative", "text/plain", "text/html"]


@pytest.mark.parametrize("provider", ["postmark", "sendgrid"])
def test_html_only_mail_becomes_one_html_part(provider: str) -> None:
    # (Mailgun always posts a text version, written from the HTML when the mail had none.)
    original = html_only(german_mail())
    rebuilt = PROVIDERS[provider](original)
    assert_reads_like(original, rebuilt)
    assert leaf_types(assert_well_formed(rebuilt)) == ["text/html"]


@each_provider
def test_attachments_keep_names_types_and_bytes(provider: str) -> None:
    original = german_mail(attachments=[("tattoo-vorlage.jpg", "image/jpeg", JPEG),
                                        (SKETCH, "application/pdf", b"%PDF-1.7\n\x00\xff\xfe binary\r\n"),
                                        ("maße.txt", "text/plain", "Unterarm 12 × 8 cm\n".encode())])
    rebuilt = PROVIDERS[provider](original)
    got = assert_reads_like(original, rebuilt)
    assert [a.filename for a in got.attachments] == ["tattoo-vorlage.jpg", SKETCH, "maße.txt"]
    assert got.attachments[0].data == JPEG
    msg = assert_well_formed(rebuilt)
    assert leaf_types(msg) == ["multipart/mixed", "text/plain", "image/jpeg", "application/pdf", "text/plain"]
    # The non-ASCII filename is an RFC 2231 parameter, not raw 8-bit.
    assert b"filename*=utf-8''Entwurf%20Drache%20%E2%80%93%20Gr%C3%B6%C3%9Fe%20M.pdf" in rebuilt


@each_provider
def test_inline_image_keeps_its_content_id(provider: str) -> None:
    html = HTML.replace("</body>", '<img src="cid:drache.123@mail.example.org"></body>')
    original = with_html(german_mail(attachments=[(SKETCH, "application/pdf", b"%PDF")]), html,
                         inline=(("drache.jpg", "image/jpeg", JPEG, "drache.123@mail.example.org"),))
    rebuilt = PROVIDERS[provider](original)
    got = assert_reads_like(original, rebuilt)
    image = got.attachments[0]
    assert (image.content_id, image.inline, image.data) == ("drache.123@mail.example.org", True, JPEG)
    parts = {p.get_content_type(): p for p in assert_well_formed(rebuilt).walk()}
    assert parts["image/jpeg"].get_content_disposition() == "inline"
    assert parts["image/jpeg"]["Content-ID"] == "<drache.123@mail.example.org>"
    assert parts["application/pdf"].get_content_disposition() == "attachment"


@pytest.mark.parametrize(("charset", "body", "subject"), [
    ("iso-8859-1", BODY, SUBJECT),
    ("windows-1252", "„Drache“ am Unterarm – Kostenvoranschlag über 120 € ok?\nGrüße, Lena",
     "Angebot „Drache“ – 120 €"),
])
def test_sendgrid_decodes_fields_with_their_declared_charset(charset: str, body: str, subject: str) -> None:
    original = with_html(german_mail(body=body, subject=subject), f"<p>{body}</p>")
    form = sendgrid_fields(original, charset)
    assert form.raw("text") == (body + "\n").encode(charset)   # as SendGrid posts it
    assert form.raw("subject") == subject.encode(charset)
    assert json.loads(form.text("charsets"))["text"] == charset
    rebuilt = mime_from_sendgrid(form)
    got = assert_reads_like(original, rebuilt)
    assert got.text == body and got.html == parse(original).html

    # The raw `headers` block wins where it has the header; without it the `subject` field
    # is used, decoded with its charset too.
    block = form.text("headers")
    form.fields["headers"] = [re.sub(r"(?m)^Subject: .*\n", "", block).encode("utf-8")]
    assert parse(mime_from_sendgrid(form)).subject == subject


def test_sendgrid_unknown_or_wrong_charset_falls_back_without_failing() -> None:
    original = german_mail()
    form = sendgrid_fields(original, "utf-8")
    form.fields["charsets"] = [json.dumps({"text": "x-no-such-charset", "subject": "utf-8"}).encode()]
    form.fields["subject"] = ["Grüße".encode("latin-1")]   # not UTF-8 at all
    form.fields["headers"] = [re.sub(rb"(?m)^Subject: .*\n", b"", form.raw("headers") or b"")]
    got = parse(mime_from_sendgrid(form))
    assert got.text == BODY                 # unknown name: read as UTF-8
    assert got.subject == "Grüße"           # undecodable as declared: CP-1252 / Latin-1


INJECTIONS = ["\r\n", "\n", "\r", "\x00", "\x85", "\u2028", "\u2029"]


def _injected(provider: str, raw: bytes, brk: str) -> bytes:
    """The payload for `raw` with "<break>Bcc: x@evil" smuggled into header values and names."""
    evil = f"Termin{brk}Bcc: x@evil"
    if provider == "mailgun":
        form = mailgun_fields(raw)
        headers = [[k, evil if k == "Subject" else v]
                   for k, v in json.loads(form.text("message-headers"))]
        headers += [[f"X-Note{brk}Bcc", "x@evil"], ["X-Note", f"a{brk}Bcc: y@evil"]]
        form.fields["message-headers"] = [json.dumps(headers).encode()]
        return mime_from_mailgun(form)
    if provider == "sendgrid":
        form = sendgrid_fields(raw, "utf-8")
        block = re.sub(r"(?m)^Subject: .*\n", "", form.text("headers"))
        if brk not in ("\r\n", "\n", "\r"):   # a line break in the block is a new header line
            block += f"X-Note: a{brk}Bcc: y@evil\n"
        form.fields["headers"] = [block.encode("utf-8")]
        form.fields["subject"] = [evil.encode("utf-8")]
        form.fields["from"] = [f"Lena <{GUEST}>{brk}Bcc: z@evil".encode("utf-8")]
        return mime_from_sendgrid(form)
    payload = postmark_payload(raw)
    payload["Subject"] = evil
    payload["FromFull"]["Name"] = f"Lena{brk}Bcc: z@evil"
    payload["Headers"] += [{"Name": f"X-Note{brk}Bcc", "Value": "x@evil"},
                           {"Name": "X-Note", "Value": f"a{brk}Bcc: y@evil"}]
    return mime_from_postmark(payload)


@each_provider
@pytest.mark.parametrize("brk", INJECTIONS, ids=[repr(b) for b in INJECTIONS])
def test_line_breaks_in_header_values_or_names_never_start_a_header(provider: str, brk: str) -> None:
    rebuilt = _injected(provider, german_mail(), brk)
    msg = assert_well_formed(rebuilt)
    assert "Bcc" not in msg and parse(rebuilt).header("Bcc") is None
    head = rebuilt.split(b"\r\n\r\n", 1)[0]
    assert re.search(rb"(?mi)^bcc\s*:", head) is None
    for char in ("\x00", "\x85", "\u2028", "\u2029"):
        assert char.encode("utf-8") not in head
    got = parse(rebuilt)
    assert got.subject == "Termin Bcc: x@evil" and got.from_ is not None and got.from_.email == GUEST
    if provider != "sendgrid" or brk not in ("\r\n", "\n", "\r"):
        assert got.header("X-Note") == "a Bcc: y@evil"   # the value stays, on one line


def _without_from(provider: str) -> Callable[[], bytes]:
    raw = german_mail()
    if provider == "mailgun":
        form = mailgun_fields(raw)
        headers = [h for h in json.loads(form.text("message-headers")) if h[0] != "From"]
        form.fields["message-headers"] = [json.dumps(headers).encode()]
        del form.fields["from"]
        return lambda: mime_from_mailgun(form)
    if provider == "sendgrid":
        form = sendgrid_fields(raw)
        form.fields["headers"] = [re.sub(rb"(?m)^From: .*\n", b"", form.raw("headers") or b"")]
        del form.fields["from"]
        return lambda: mime_from_sendgrid(form)
    payload = postmark_payload(raw)
    payload.update(From="", FromName="", FromFull={"Email": "", "Name": "", "MailboxHash": ""})
    return lambda: mime_from_postmark(payload)


@each_provider
def test_payload_without_a_sender_is_refused(provider: str) -> None:
    compose = _without_from(provider)
    with pytest.raises(ComposeError, match="no sender"):
        compose()


MARK = "SECRET-PAYLOAD-7f3a"


def _mailgun(**fields: bytes | None) -> Callable[[], bytes]:
    form = mailgun_fields(german_mail(attachments=[("a.jpg", "image/jpeg", JPEG)]))
    for name, value in fields.items():
        if value is None:
            form.files.pop(name, None)
        else:
            form.fields[name] = [value]
    return lambda: mime_from_mailgun(form)


def _sendgrid(**fields: bytes | None) -> Callable[[], bytes]:
    form = sendgrid_fields(german_mail(attachments=[("a.jpg", "image/jpeg", JPEG)]))
    for name, value in fields.items():
        if value is None:
            form.files.pop(name, None)
        else:
            form.fields[name] = [value]
    return lambda: mime_from_sendgrid(form)


def _postmark(**changes: Any) -> Callable[[], bytes]:
    payload = postmark_payload(german_mail(attachments=[("a.jpg", "image/jpeg", JPEG)]))
    payload.update(changes)
    return lambda: mime_from_postmark(payload)


MALFORMED: dict[str, tuple[Callable[[], Callable[[], bytes]], str]] = {
    "mailgun message-headers not JSON": (
        lambda: _mailgun(**{"message-headers": f'[["From", "{MARK}'.encode()}), "'message-headers'"),
    "mailgun message-headers not pairs": (
        lambda: _mailgun(**{"message-headers": json.dumps({"From": MARK}).encode()}), "'message-headers'"),
    "mailgun message-headers nested too deep": (
        lambda: _mailgun(**{"message-headers": b"[" * 100_000}), "'message-headers'"),
    "mailgun content-id-map not JSON": (
        lambda: _mailgun(**{"content-id-map": f'{{"<{MARK}>": '.encode()}), "'content-id-map'"),
    "mailgun attachment-count not a number": (
        lambda: _mailgun(**{"attachment-count": MARK.encode()}), "'attachment-count'"),
    "mailgun announced attachment missing": (
        lambda: _mailgun(**{"attachment-count": b"2"}), "'attachment-2'"),
    "sendgrid charsets not JSON": (
        lambda: _sendgrid(charsets=f'{{"text": "{MARK}'.encode()), "'charsets'"),
    "sendgrid attachment-info not JSON": (
        lambda: _sendgrid(**{"attachment-info": f'{{"attachment1": {{"filename": "{MARK}'.encode()}),
        "'attachment-info'"),
    "sendgrid announced attachment missing": (
        lambda: _sendgrid(attachment1=None), "'attachment1'"),
    "postmark Headers not a list": (lambda: _postmark(Headers=MARK), "'Headers'"),
    "postmark header value not a string": (
        lambda: _postmark(Headers=[{"Name": MARK, "Value": 7}]), "'Headers'"),
    "postmark Attachments not a list": (lambda: _postmark(Attachments={MARK: 1}), "'Attachments'"),
    "postmark attachment not base64": (
        lambda: _postmark(Attachments=[{"Name": "a.jpg", "Content": MARK + "***",
                                        "ContentType": "image/jpeg"}]), "base64"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_payload_is_refused_with_a_message_naming_the_field(case: str) -> None:
    make, expected = MALFORMED[case]
    compose = make()
    with pytest.raises(ComposeError) as caught:
        compose()
    assert expected in str(caught.value)
    assert MARK not in str(caught.value)   # field names only, never payload content


@pytest.mark.parametrize("message_id", [
    "<CAEPk3R+4Zr=x_Y-z@mail.gmail.com>",
    "<20261120100000.GA1234@[192.0.2.1]>",
    "<a b@example.org>",   # broken, but dedupe compares bytes, so they must survive
])
def test_postmark_keeps_the_message_id_from_headers_byte_for_byte(message_id: str) -> None:
    # Written into the bytes directly: the stdlib's own header parser would cut "<a b@...>".
    original = german_mail(message_id="<placeholder@example.org>").replace(
        b"<placeholder@example.org>", message_id.encode())
    payload = postmark_payload(original)
    assert {"Name": "Message-ID", "Value": message_id} in payload["Headers"]
    rebuilt = mime_from_postmark(payload)
    assert re.search(rb"(?m)^Message-ID: " + re.escape(message_id.encode()) + rb"\r$", rebuilt)
    assert payload["MessageID"].encode() not in rebuilt   # Postmark's own id is not the mail's
    assert parse(rebuilt).message_id == parse(original).message_id


@each_provider
def test_no_message_id_is_invented(provider: str) -> None:
    original = german_mail(message_id="")
    rebuilt = PROVIDERS[provider](original)
    assert parse(rebuilt).message_id is None and b"message-id" not in rebuilt.lower()


@each_provider
def test_automatic_mail_markers_survive(provider: str) -> None:
    markers = {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes", "Precedence": "auto_reply",
               "List-Id": "Tattoo News <news.example.org>", "Return-Path": f"<{GUEST}>"}
    original = german_mail(subject="Abwesenheitsnotiz: Tattoo Anfrage", headers=markers)
    rebuilt = PROVIDERS[provider](original)
    got = assert_reads_like(original, rebuilt)
    for name, value in markers.items():
        assert got.header(name) == value
    assert classify(got, GUEST) == classify(parse(original), GUEST)
    assert classify(got, GUEST).kind == "auto-reply"


@each_provider
def test_body_headers_of_the_original_are_not_copied(provider: str) -> None:
    original = with_html(german_mail())
    boundary = email.message_from_bytes(original).get_boundary()
    assert boundary and ("Content-Type", f'multipart/alternative; boundary="{boundary}"') in _read(original).headers
    rebuilt = PROVIDERS[provider](original)   # every payload carries that Content-Type header
    assert boundary.encode() not in rebuilt
    head = rebuilt.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"\ncontent-type:") == 1 and head.count(b"mime-version:") == 1
    assert b"content-transfer-encoding" not in head


def test_encoded_words_in_raw_headers_are_kept_as_they_are() -> None:
    original = german_mail(subject="Grüße =?x?= & mehr")
    wire = _read(original).header("Subject")
    assert wire is not None and wire.startswith("=?utf-8?")
    for rebuilt in (mime_from_mailgun(mailgun_fields(original, decoded_headers=False)),
                    mime_from_sendgrid(sendgrid_fields(original))):
        assert f"\r\nSubject: {wire}\r\n".encode() in rebuilt
        assert parse(rebuilt).subject == "Grüße =?x?= & mehr"


def test_decoded_non_ascii_header_values_are_rfc2047_encoded() -> None:
    original = german_mail()
    rebuilt = mime_from_mailgun(mailgun_fields(original))   # Mailgun posts UTF-8 values
    head = rebuilt.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert parse(rebuilt).cc[0].name == "Jörg Weiß" and parse(rebuilt).subject == SUBJECT


def test_missing_text_and_html_gives_an_empty_text_part() -> None:
    payload = postmark_payload(german_mail())
    payload.update(TextBody="", HtmlBody="")
    rebuilt = mime_from_postmark(payload)
    assert leaf_types(assert_well_formed(rebuilt)) == ["text/plain"]
    assert parse(rebuilt).text == ""


def test_long_lines_are_transfer_encoded_under_the_line_limit() -> None:
    body = "Sehr lange Zeile ohne Umbruch: " + "äöü " * 800
    original = with_html(german_mail(body=body), "<p>" + "x" * 3000 + "</p>")
    rebuilt = mime_from_postmark(postmark_payload(original))
    assert max(len(line) for line in rebuilt.split(b"\r\n")) <= 78
    assert parse(rebuilt).text == body.rstrip()
