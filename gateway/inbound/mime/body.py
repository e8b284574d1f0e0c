"""Walking the part tree: the body text, the sanitised HTML, attachments and DSN status.

text/plain is preferred, else the HTML as text; every other leaf becomes an attachment
within the count and size caps; a multipart/report bounce gives the failed recipients and
the Message-ID of the mail that bounced.
"""
from __future__ import annotations

from collections.abc import Iterator

import nh3

from gateway.inbound.mime.charsets import decode_bytes, decode_header_value, decode_transfer, param_text
from gateway.inbound.mime.fields import parse_message_ids, split_header_block
from gateway.inbound.mime.html_text import html_to_text
from gateway.inbound.mime.limits import MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, MAX_HTML_CHARS, MAX_TEXT_CHARS
from gateway.inbound.mime.parsed import ParsedAttachment, ParsedMessage
from gateway.inbound.mime.tree import Node
from gateway.mail.files import sanitise_filename

_HTML_DROP_WITH_CONTENT = {"script", "style", "head", "title", "template", "noscript"}


def _walk(root: Node) -> Iterator[tuple[Node, Node | None, bool]]:
    """Yield (node, parent, inside multipart/report) in document order, iteratively."""
    stack: list[tuple[Node, Node | None, bool]] = [(root, None, False)]
    while stack:
        node, parent, in_report = stack.pop()
        yield node, parent, in_report
        child_report = in_report or node.content_type == "multipart/report"
        for child in reversed(node.children):
            stack.append((child, node, child_report))


def fill_body(result: ParsedMessage, root: Node) -> None:
    """Choose text and HTML, collect attachments and DSN data from the tree."""
    plain: list[tuple[str, Node | None]] = []
    html_src: str | None = None
    for node, parent, in_report in _walk(root):
        if node.children or node.content_type.startswith("multipart/"):
            continue
        ctype = node.content_type
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            _fill_dsn_status(result, node)
            continue
        if in_report and ctype in ("text/rfc822-headers", "message/rfc822", "message/global",
                                   "message/global-headers"):
            block = split_header_block(node.body, max_lines=10_000)
            for name, view in block.headers:
                if name.lower() == "message-id":
                    for mid in parse_message_ids(view)[:1]:
                        if mid not in result.dsn_original_message_ids:
                            result.dsn_original_message_ids.append(mid)
                    break
            if ctype in ("text/rfc822-headers", "message/global-headers"):
                continue
        params = node.params
        disposition = (params.get_content_disposition() or "").lower()
        raw_name = params.get_param("filename", header="content-disposition")
        if raw_name is None:
            raw_name = params.get_param("name")
        filename = param_text(raw_name) if raw_name is not None else ""
        cte = str(params.get("content-transfer-encoding", "") or "")
        cid_view = params.get("content-id")
        content_id = "".join(decode_header_value(str(cid_view)).split()).strip("<>") or None \
            if cid_view else None
        in_related = parent is not None and parent.content_type == "multipart/related"
        is_body_text = ctype in ("text/plain", "text/html") and disposition != "attachment" \
            and not filename
        if is_body_text:
            text = decode_bytes(_content(node, cte), params.get_content_charset())
            if ctype == "text/plain":
                plain.append((text, parent))
            elif html_src is None:
                html_src = text
            continue
        _add_attachment(result, node, ctype, cte, filename, disposition, content_id, in_related)

    if plain:
        first_text, first_parent = plain[0]
        # Apple Mail sends "text, inline image, text" as siblings in multipart/mixed; the
        # guest's words are all of them, not just the part before the picture.
        texts = [first_text]
        if first_parent is not None and first_parent.content_type == "multipart/mixed":
            texts += [t for t, p in plain[1:] if p is first_parent]
        result.text = "\n".join(texts)
    elif html_src is not None:
        result.text = html_to_text(html_src[:MAX_HTML_CHARS])
    if html_src is not None:
        if len(html_src) > MAX_HTML_CHARS:
            result.defects.append(f"HTML longer than {MAX_HTML_CHARS} chars; truncated")
            html_src = html_src[:MAX_HTML_CHARS]
        # nh3 defaults (ammonia): an allow-list of tags and attributes, no on* handlers,
        # only http/https/mailto/... URL schemes. Besides script and style we drop the
        # content of head/title too: a title would otherwise show up as body text.
        result.html = nh3.clean(html_src, clean_content_tags=_HTML_DROP_WITH_CONTENT)
    if len(result.text) > MAX_TEXT_CHARS:
        result.defects.append(f"text longer than {MAX_TEXT_CHARS} chars; truncated")
        result.text = result.text[:MAX_TEXT_CHARS]
    # The CRLF before a boundary belongs to the boundary (RFC 2046 section 5.1.1); we
    # also drop other trailing blank lines, which no reader wants to see.
    result.text = result.text.replace("\r\n", "\n").replace("\r", "\n").rstrip()


def _content(node: Node, cte: str) -> bytes:
    """A leaf's content with the transfer encoding undone (once: see Node.transfer_decoded)."""
    return node.body if node.transfer_decoded else decode_transfer(node.body, cte)


def _add_attachment(result: ParsedMessage, node: Node, ctype: str, cte: str, filename: str,
                    disposition: str, content_id: str | None, in_related: bool) -> None:
    if len(result.attachments) >= MAX_ATTACHMENTS:
        if not any(d.startswith("more than") and "attachments" in d for d in result.defects):
            result.defects.append(f"more than {MAX_ATTACHMENTS} attachments; the rest dropped")
        return
    # Estimate before decoding: base64 is 4 bytes for 3, so a 40 MB part is not decoded.
    estimate = len(node.body) * 3 // 4 \
        if cte.strip().lower() == "base64" and not node.transfer_decoded else len(node.body)
    data = b"" if estimate > MAX_ATTACHMENT_BYTES * 1.1 else _content(node, cte)
    index = len(result.attachments) + 1
    name = sanitise_filename(filename, ctype, index)
    if estimate > MAX_ATTACHMENT_BYTES * 1.1 or len(data) > MAX_ATTACHMENT_BYTES:
        result.defects.append(
            f"attachment {name!r} larger than {MAX_ATTACHMENT_BYTES} bytes; dropped")
        return
    inline = disposition == "inline" or (disposition != "attachment" and in_related
                                         and content_id is not None)
    result.attachments.append(ParsedAttachment(
        filename=name, content_type=ctype, data=data, inline=inline, content_id=content_id))


def _fill_dsn_status(result: ParsedMessage, node: Node) -> None:
    """RFC 3464 section 2.3: one block per recipient after the per-message block.

    A recipient counts as failed when its Action is "failed" or missing; "delayed",
    "delivered", "relayed" and "expanded" are not failures (section 2.3.3).
    """
    for block in node.dsn_blocks[1:] if len(node.dsn_blocks) > 1 else node.dsn_blocks:
        fields = {name.lower(): decode_header_value(view) for name, view in block}
        action = fields.get("action", "").strip().lower()
        if action not in ("", "failed"):
            continue
        for key in ("final-recipient", "original-recipient"):
            value = fields.get(key)
            if not value:
                continue
            # "rfc822; guest@example.org" (address-type ; address, section 2.3.2)
            addr = value.split(";", 1)[-1].strip().strip("<>").strip()
            if addr and addr not in result.dsn_failed_recipients:
                result.dsn_failed_recipients.append(addr)
            break
