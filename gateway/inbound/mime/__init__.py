"""MIME parsing: raw bytes in, one decoded ``ParsedMessage`` out. Only ``tree`` imports flanker.

CONTRACT (other modules rely on it; keep the names):
    parse(raw: bytes) -> ParsedMessage   never raises for any input bytes.

How the work is split, and why:

* flanker decides the MIME *structure* (which boundary closes which part). It is the
  product's primary parser; it is also strict, so on any flanker exception we fall back
  to the stdlib ``email`` parser (policy ``compat32``: it records defects instead of
  raising, and it does not run the modern header-object parser, which is slower and
  raises on malformed headers). If even that fails, we return what the top header
  block says (``parser="headers-only"``).
* Header text, parameters (RFC 2231), transfer encodings and charsets are decoded by the
  shared helpers in ``charsets`` for all three paths. flanker's own decoders guess charsets
  with chardet and mangle RFC 2231 values in ISO-8859-1 ("M\ufffdller.pdf"); ours follow one
  documented chain (declared charset, UTF-8, CP-1252, Latin-1), so a message reads the
  same whichever parser built the tree.
* Every limit in ``limits`` is enforced while walking, so hostile input costs bounded time
  and memory, and every limit hit is written to ``defects``.

The modules, in the order a mail passes through them:

* ``parser``    ``parse``: precheck, top headers, flanker / stdlib / headers-only, NUL removal.
* ``limits``    the MAX_* caps, the byte-count ``precheck`` and ``Limits``, one parse's budget.
* ``fields``    splitting a header block from its body; Message-IDs, addresses, dates; the
                top-level fields of ``ParsedMessage``.
* ``tree``      the flanker import and the two part trees (flanker, stdlib), both turned into
                one neutral ``Node`` tree.
* ``body``      walking that tree: body text, sanitised HTML, attachments, DSN status.
* ``html_text`` readable text from HTML-only mail.
* ``charsets``  charset labels and the decoding chain, RFC 2047 encoded words, RFC 2231
                parameters, base64 and quoted-printable.
* ``parsed``    the result types: ``ParsedMessage``, ``ParsedAttachment``, ``Address``.

Attachment names and media types are ``gateway.mail.files`` (shared with outbound mail).
"""
from __future__ import annotations

from gateway.inbound.mime.charsets import decode_bytes, decode_header_value
from gateway.inbound.mime.fields import parse_addresses, parse_date, parse_message_ids, split_header_block
from gateway.inbound.mime.html_text import html_to_text
from gateway.inbound.mime.limits import (
    MAX_ADDRESSES,
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_DEPTH,
    MAX_HEADER_LINES_SCANNED,
    MAX_HEADER_VALUE_CHARS,
    MAX_HEADERS,
    MAX_HTML_CHARS,
    MAX_PARTS,
    MAX_REFERENCES,
    MAX_TEXT_CHARS,
)
from gateway.inbound.mime.parsed import Address, ParsedAttachment, ParsedMessage
from gateway.inbound.mime.parser import parse

__all__ = [
    "MAX_ADDRESSES", "MAX_ATTACHMENTS", "MAX_ATTACHMENT_BYTES", "MAX_DEPTH", "MAX_HEADERS",
    "MAX_HEADER_LINES_SCANNED", "MAX_HEADER_VALUE_CHARS", "MAX_HTML_CHARS", "MAX_PARTS",
    "MAX_REFERENCES", "MAX_TEXT_CHARS",
    "Address", "ParsedAttachment", "ParsedMessage",
    "decode_bytes", "decode_header_value", "html_to_text", "parse", "parse_addresses",
    "parse_date", "parse_message_ids", "split_header_block",
]
